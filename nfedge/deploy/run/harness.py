"""Drive a build bundle on its target: emulated Cortex-M (qemu-system-arm), Cortex-A (qemu-user) or the host.

    res = run_on_target("build/m55", faulty_image, x, timeout_s=120)
    logits_base, logits_nf, instructions = res          # unpacks like a 3-tuple
    res.instructions_base, res.instructions_generator  # per-sample int64 arrays (None without a counter)

What may run is decided by nfedge.deploy.run.emulators (known emulators only, checked arguments; a user's own
emulator with allow_emulator=PATH). Every run gets its own temp folder, and the guest reaches nothing else:

Bare metal: one QEMU process per pass, `-icount shift=0` (1 instruction = 1 ns of virtual time, so the
SysTick counts are exactly repeatable), no semihosting. The firmware (a verified copy), the weight image at
the descriptor's image address and the input block at its input address are placed by QEMU; the firmware
writes framed records (logits, ticks, status) to its UART, which QEMU captures into uart.bin; the exit
status is the last record (the firmware then resets, and -no-reboot ends QEMU). More samples than the
input region holds run in several passes. Ticks are converted to instructions with the descriptor's
factor; `estimated_seconds_*` divide by the descriptor's clock (an estimate: 1 IPC).
Linux (Cortex-A): the static runner under qemu-aarch64-static, confined (emulators.confined_argv) to a
folder holding only the emulator, the runner and its files (input.bin, image.bin -> logits.bin, ticks.bin).
Host: the bundle's .so files in a Python subprocess: that runs the bundle's native code unconfined, so it
needs trust_bundle_code=True (as does a Linux bundle on a machine that cannot confine it).
A hang (timeout), runaway output, a CPU fault or a non-zero status raises NfedgeError with a one-line reason.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from nfedge.deploy.bundle import Bundle, load_bundle
from nfedge.deploy.guest_io import (
    DONE_PAYLOAD_BYTES,
    EXIT_PAYLOAD_BYTES,
    EXIT_REASONS,
    INPUT_HEADER_BYTES,
    RECORD_FRAMING_BYTES,
    REC_DONE,
    REC_EXIT,
    REC_MESSAGE,
    REC_SAMPLE,
    TICKS_PER_SAMPLE,
    pack_inputs,
    parse_records,
    sample_payload_bytes,
    split_sample_payloads,
)
from nfedge.deploy.run.emulators import (
    checked_args,
    confined_argv,
    confinement,
    is_static_elf,
    qemu_system_argv,
    resolve_emulator,
    run_process,
    tree_bytes,
)
from nfedge.errors import NfedgeError
from nfedge.fileio import sha256_file
from nfedge.progress import QUIET, Progress
from nfedge.sram.image import WeightImage, read_image

__all__ = ["TargetResult", "run_on_target", "check_runnable"]

_OUTPUT_SLACK = 1 << 16  # bytes of messages allowed on top of the expected outputs before a run is killed


@dataclasses.dataclass(frozen=True)
class TargetResult:
    logits_base: np.ndarray  # [N, K] base model on x
    logits_nf: np.ndarray | None  # [N, K] base model on F(x) = clip(x + G(x), -1, 1); None without generator
    instructions_base: np.ndarray | None  # [N] instructions per inference of base(x); None: no counter
    instructions_generator: np.ndarray | None  # [N] instructions of the front F (G + add + clip)
    instructions_base_nf: np.ndarray | None  # [N] instructions of base(F(x))
    ticks: np.ndarray  # [N, 3] raw timer ticks (base, generator, base on F(x)); ns on linux/host
    timer: str  # systick | wall | none
    estimated_seconds_base: float | None  # systick: mean instructions / clock (1 IPC estimate); wall: measured
    estimated_seconds_generator: float | None
    wall_seconds: float  # emulator wall time for the whole call
    workspace_peak_bytes: int | None  # operator scratch high-water mark reported by the firmware
    target: str
    stdout: str

    def __iter__(self) -> Iterator[Any]:
        """(logits_base, logits_nf, {"base": ..., "generator": ..., "base_nf": ...})"""
        yield self.logits_base
        yield self.logits_nf
        yield {"base": self.instructions_base, "generator": self.instructions_generator,
               "base_nf": self.instructions_base_nf}


def _image_bytes(image, expected: int) -> bytes:
    if isinstance(image, WeightImage):
        data = image.codes.tobytes()
    elif isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif isinstance(image, np.ndarray):
        if image.dtype not in (np.int8, np.uint8):
            raise NfedgeError(f"a weight image array must be int8/uint8, got {image.dtype}")
        data = np.ascontiguousarray(image).tobytes()
    elif isinstance(image, (str, Path)):
        p = Path(image)
        if p.is_dir():
            data = read_image(p).codes.tobytes()
        elif p.is_file():
            data = p.read_bytes()
        else:
            raise NfedgeError(f"weight image {p} does not exist")
    else:
        try:  # torch tensors and the like
            data = np.asarray(image).astype(np.int8, copy=False).tobytes()
        except Exception:  # noqa: BLE001
            raise NfedgeError(f"cannot use a {type(image).__name__} as a weight image") from None
    if len(data) != expected:
        raise NfedgeError(f"the weight image has {len(data)} bytes but the bundle was built for {expected} "
                          "(an image of another model or precision?)")
    return data


def _inputs(inputs, bundle: Bundle) -> np.ndarray:
    x = np.asarray(inputs)
    shape = bundle.input_shape
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape):
        raise NfedgeError(f"inputs must have shape [N, {', '.join(map(str, shape))}], got {list(x.shape)}")
    if x.shape[0] == 0:
        raise NfedgeError("no inputs to run")
    if not np.all(np.isfinite(x)):
        raise NfedgeError("inputs contain NaN or infinity")
    if bundle.input_dtype == "int8":  # integer bundles take the host-quantized samples (docs/INTEGER.md)
        if not (np.all(x == np.round(x)) and x.min() >= -128 and x.max() <= 127):
            raise NfedgeError(f"bundle {bundle.path} was built in integer mode: its inputs are int8 samples "
                              "(quantize them with nfedge.integer.scheme.quantize_to_int8), not float images")
        return np.ascontiguousarray(x, dtype=np.int8)
    return np.ascontiguousarray(x, dtype=np.float32)


def _explain_exit(rc: int, out: str, err: str, what: str, reasons: dict[int, str] = EXIT_REASONS) -> NfedgeError:
    lines = [ln for ln in (out + "\n" + err).splitlines() if ln.strip()]
    detail = next((ln for ln in lines if ln.startswith("nfedge-error:") or ln.startswith("nfedge:")), None)
    detail = detail or next((ln for ln in lines if "fatal" in ln.lower() or "error" in ln.lower()), None)
    detail = detail or (lines[-1] if lines else "no output")
    if "lockup" in (out + err).lower():
        reason = f"aborted (exit {rc}): the CPU locked up (a fault inside a fault handler or bad vector table)"
    elif rc < 0:
        reason = f"was killed by signal {-rc}"
    elif rc in reasons:
        reason = f"exited with code {rc}: {reasons[rc]}"
    elif rc == 134:
        reason = f"aborted (exit {rc})"
    else:
        reason = f"exited with code {rc}"
    return NfedgeError(f"{what} {reason} ({detail.strip()[:200]})")


def _copy_verified(bundle: Bundle, key: str, dst: Path) -> Path:
    """A copy of an entry file in the run's folder, checked against the manifest's sha256 (what is checked is
    what runs, even if the bundle changes meanwhile)."""
    src = bundle.file(key)
    rel = bundle.manifest["entry"][key]
    shutil.copyfile(src, dst, follow_symlinks=False)
    if sha256_file(dst) != bundle.digest(rel):
        raise NfedgeError(f"bundle {bundle.path} is corrupt: {rel} does not match its sha256 in the manifest (rebuild it)")
    dst.chmod(0o755)
    return dst


def _outputs_per_sample(bundle: Bundle) -> int:
    return 2 * bundle.num_classes if bundle.has_generator else bundle.num_classes


@dataclasses.dataclass(frozen=True)
class _Launch:
    """How nfedge would start a bundle's code: which emulator, confined or not (decided before anything runs)."""

    emulator: str | None  # resolved emulator path (None: host, nfedge's own runner)
    unshare: str | None  # Linux: unshare's path when the guest runs confined, None: unconfined (trusted)


def _launch(bundle: Bundle, allow_emulator, trust: bool) -> _Launch:
    t = bundle.target
    what = f"target {t.name} ({bundle.path})"
    if t.kind == "host":
        if not trust:
            raise NfedgeError(f"{what}: a host bundle is native code (its .so files would run in a Python process on "
                              "this machine, unconfined); pass trust_bundle_code=True (`nfedge faultrun "
                              "--trust-bundle-code`) only for a bundle you built or trust")
        return _Launch(None, None)
    emu = resolve_emulator(t, allow_emulator)
    checked_args(t)
    if t.is_bare_metal:
        return _Launch(emu, None)
    unshare, why = confinement()
    if unshare is not None and not is_static_elf(emu):
        unshare, why = None, f"{emu} is not statically linked (install qemu-user-static)"
    if unshare is None and not trust:
        raise NfedgeError(f"{what}: cannot confine the Linux guest here ({why}), and user-mode QEMU gives it the host's "
                          "system calls; pass trust_bundle_code=True (`nfedge faultrun --trust-bundle-code`) to run it "
                          "unconfined, only for a bundle you built or trust")
    return _Launch(emu, unshare)


def check_runnable(bundle: Bundle, allow_emulator: str | Path | None = None, trust_bundle_code: bool = False) -> None:
    """Refuse, with a one-line NfedgeError and before anything runs, a bundle that nfedge would not run as asked:
    an unknown emulator (unless allow_emulator names it), a refused emulator argument, a host bundle without
    trust_bundle_code, a Linux bundle that cannot be confined here without trust_bundle_code."""
    _launch(bundle, allow_emulator, trust_bundle_code)


def _run_bare_metal(bundle: Bundle, launch: _Launch, data: bytes, x: np.ndarray, deadline: float, timeout_s: float,
                    what: str) -> tuple[np.ndarray, np.ndarray, str, int]:
    t = bundle.target
    qemu = launch.emulator
    per = _outputs_per_sample(bundle)
    record = RECORD_FRAMING_BYTES + sample_payload_bytes(per)
    cap = max(1, (t.input.length - INPUT_HEADER_BYTES) // x[0].nbytes)  # samples per pass
    logits, ticks, texts, peak = [], [], [], 0
    with tempfile.TemporaryDirectory(prefix="nfedge-run-") as d:
        d = Path(d)
        fw = _copy_verified(bundle, "run", d / "firmware.elf")
        (d / "image.bin").write_bytes(data)
        for start in range(0, x.shape[0], cap):
            chunk = x[start:start + cap]
            (d / "input.bin").write_bytes(pack_inputs(chunk))
            uart = d / "uart.bin"
            uart.unlink(missing_ok=True)
            cmd = qemu_system_argv(qemu, t, fw, d / "image.bin", d / "input.bin", uart)
            rc, out, err = run_process(cmd, d, d, deadline, timeout_s, what, [uart],
                                        _OUTPUT_SLACK + record * len(chunk))
            lg, tk, text, peak_c = _decode_uart(uart.read_bytes() if uart.is_file() else b"", rc, out, err,
                                                len(chunk), per, what, bundle.logit_dtype)
            logits.append(lg)
            ticks.append(tk)
            texts += text
            peak = max(peak, peak_c)
    stdout = "\n".join(texts + [f"nfedge-done samples={x.shape[0]} workspace_peak={peak}"]) + "\n"
    return np.concatenate(logits), np.concatenate(ticks), stdout, peak


def _decode_uart(raw: bytes, rc: int, out: str, err: str, n: int, per: int, what: str, logit_dtype: str = "float32"):
    records, junk = parse_records(raw)
    texts = [r.payload.decode("utf-8", "replace") for r in records if r.type == REC_MESSAGE]
    if rc != 0:  # QEMU itself failed (bad option, lockup) or was killed: its own exit code, not the firmware's
        raise _explain_exit(rc, "\n".join(texts) + "\n" + out, err, what.replace("target", "emulator for target", 1), {})
    exits = [r for r in records if r.type == REC_EXIT]
    if not exits or len(exits[-1].payload) != EXIT_PAYLOAD_BYTES:
        seen = texts[-1] if texts else (f"{len(raw)} bytes on its UART, none of them nfedge's records" if raw
                                        else "nothing on its UART")
        raise NfedgeError(f"{what} stopped without reporting a status (not nfedge firmware, or it reset early: {seen[:200]})")
    status = int.from_bytes(exits[-1].payload, "little")
    if status != 0:
        raise _explain_exit(status, "\n".join(texts), "", what)
    samples = [r for r in records if r.type == REC_SAMPLE]
    done = [r for r in records if r.type == REC_DONE]
    size = sample_payload_bytes(per)
    ok = (junk == 0 and len(samples) == n and all(len(r.payload) == size and int.from_bytes(r.payload[:4], "little") == i
                                                   for i, r in enumerate(samples))
          and len(done) == 1 and len(done[0].payload) == DONE_PAYLOAD_BYTES
          and int.from_bytes(done[0].payload[:4], "little") == n)
    if not ok:
        raise NfedgeError(f"{what} finished without processing all {n} samples ({len(samples)} sample records, "
                          f"{junk} bytes outside records on its UART)")
    logits, ticks = split_sample_payloads([r.payload for r in samples], per, logit_dtype)
    return logits, ticks, texts, int.from_bytes(done[0].payload[4:], "little")


def _read_exact(path: Path, dtype, count: int, what: str) -> np.ndarray:
    try:  # O_NOFOLLOW: the guest wrote this folder, a link in it must not make nfedge read a host file
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise NfedgeError(f"{what} wrote no {path.name}") from None
    except OSError as e:
        raise NfedgeError(f"{what}: cannot read {path.name} ({e.strerror}; not a plain file?)") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise NfedgeError(f"{what}: {path.name} is not a regular file")
        arr = np.frombuffer(f.read(count * np.dtype(dtype).itemsize + 1), dtype=np.uint8)
    if arr.size != count * np.dtype(dtype).itemsize:
        raise NfedgeError(f"{what} wrote {arr.size // np.dtype(dtype).itemsize} values to {path.name}, expected {count}")
    return arr.view(dtype)


def _run_with_files(bundle: Bundle, launch: _Launch, data: bytes, x: np.ndarray, deadline: float, timeout_s: float,
                    what: str) -> tuple[np.ndarray, np.ndarray, str, int | None]:
    """Linux and host targets: input.bin/image.bin in, logits.bin/ticks.bin and a done line out."""
    t = bundle.target
    n, per = x.shape[0], _outputs_per_sample(bundle)
    with tempfile.TemporaryDirectory(prefix="nfedge-run-") as d:
        d = Path(d)
        work = d / "root"  # the guest's whole world when confined
        work.mkdir()
        (work / "image.bin").write_bytes(data)
        x.tofile(work / "input.bin")
        if bundle.kind == "host":
            cmd = [sys.executable, "-m", "nfedge.deploy.run.host_runner", str(bundle.path), str(work)]
        else:
            _copy_verified(bundle, "run", work / "runner")
            if launch.unshare is not None:
                shutil.copyfile(launch.emulator, work / "emulator")  # a copy, not a link: the guest may write its root
                (work / "emulator").chmod(0o755)
                cmd = confined_argv(launch.unshare, work, t, "/emulator", "/runner")
            else:  # trusted and unconfinable: as before this change, in the run's folder
                cmd = [launch.emulator, *(["-cpu", t.emulator.cpu] if t.emulator.cpu else []), *checked_args(t),
                       str(work / "runner")]
        limit = tree_bytes([work]) + _OUTPUT_SLACK + n * (4 * per + 8 * TICKS_PER_SAMPLE)
        rc, out, err = run_process(cmd, work, d, deadline, timeout_s, what, [work], limit)
        if rc != 0:
            raise _explain_exit(rc, out, err, what)
        m = re.search(r"nfedge-done samples=(\d+)", out)
        if not m or int(m.group(1)) != n:
            raise NfedgeError(f"{what} finished without processing all {n} samples "
                              f"(output: {(out.strip().splitlines() or ['none'])[-1][:200]})")
        logits = _read_exact(work / "logits.bin", np.dtype(bundle.logit_dtype), n * per, what).reshape(n, per).copy()
        ticks = _read_exact(work / "ticks.bin", np.uint64, n * TICKS_PER_SAMPLE, what).reshape(n, TICKS_PER_SAMPLE).astype(np.int64)
    ws = re.search(r"workspace_peak=(\d+)", out)
    return logits, ticks, out, int(ws.group(1)) if ws and bundle.kind != "host" else None


def run_on_target(bundle_dir: str | Path | Bundle, image, inputs, timeout_s: float = 300.0,
                  progress: Progress = QUIET, verify: bool = True, allow_emulator: str | Path | None = None,
                  trust_bundle_code: bool = False) -> TargetResult:
    """Run base (and generator) on `inputs` [N, C, H, W] (float32, or int8 values for an integer bundle) against
    `image` on the bundle's target.

    allow_emulator: a program (path or name on PATH) the user trusts as the emulator when the bundle's
    descriptor names one nfedge does not know. trust_bundle_code: run native code from the bundle outside
    any confinement (host bundles always; Linux bundles where this machine cannot confine them)."""
    bundle = bundle_dir if isinstance(bundle_dir, Bundle) else load_bundle(bundle_dir, verify=verify)
    if timeout_s <= 0:
        raise NfedgeError(f"timeout_s must be > 0, got {timeout_s}")
    x = _inputs(inputs, bundle)
    data = _image_bytes(image, bundle.image_bytes)
    t = bundle.target
    k = bundle.num_classes
    what = f"target {t.name} ({bundle.path})"
    launch = _launch(bundle, allow_emulator, trust_bundle_code)  # refuse before anything is written or run
    progress.info(f"run: {x.shape[0]} sample(s) on {t.name}")
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout_s
    if t.is_bare_metal:
        logits, ticks, out, peak = _run_bare_metal(bundle, launch, data, x, deadline, timeout_s, what)
    else:
        logits, ticks, out, peak = _run_with_files(bundle, launch, data, x, deadline, timeout_s, what)
    wall = time.perf_counter() - t0
    ipt = t.instructions_per_tick
    instr = None if ipt is None else np.rint(ticks * ipt).astype(np.int64)
    has_gen = bundle.has_generator

    def est(col):
        if col > 0 and not has_gen:
            return None
        if t.timer == "wall":  # nanoseconds of a monotonic clock (host, qemu-user: emulated wall time)
            return float(ticks[:, col].mean() / 1e9)
        if instr is None or not t.clock_hz:
            return None
        return float(instr[:, col].mean() / t.clock_hz)

    return TargetResult(
        logits_base=logits[:, :k].copy(), logits_nf=logits[:, k:].copy() if has_gen else None,
        instructions_base=None if instr is None else instr[:, 0].copy(),
        instructions_generator=None if instr is None or not has_gen else instr[:, 1].copy(),
        instructions_base_nf=None if instr is None or not has_gen else instr[:, 2].copy(),
        ticks=ticks, timer=t.timer, estimated_seconds_base=est(0), estimated_seconds_generator=est(1),
        wall_seconds=wall, workspace_peak_bytes=peak, target=t.name, stdout=out)
