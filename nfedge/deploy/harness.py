"""Drive a build bundle on its target: emulated Cortex-M (qemu-system-arm), Cortex-A (qemu-user) or the host.

    res = run_on_target("build/m55", faulty_image, x, timeout_s=120)
    logits_base, logits_nf, instructions = res          # unpacks like a 3-tuple
    res.instructions_base, res.instructions_generator  # per-sample int64 arrays (None without a counter)

Bare-metal: one QEMU process per call, `-icount shift=0` (1 instruction = 1 ns of virtual time, so the
SysTick counts are exactly repeatable), the firmware from the bundle, the weight image placed at the
descriptor's image address by `-device loader` (one firmware, any image), inputs and outputs as files
through semihosting, the exit code from exit(). Ticks are converted to instructions with the
descriptor's factor; `estimated_seconds_*` divide by the descriptor's clock (an estimate: 1 IPC).
A hang (timeout), a CPU fault or a non-zero exit raises NfedgeError with a one-line reason.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from nfedge.deploy.bundle import Bundle, load_bundle
from nfedge.errors import NfedgeError
from nfedge.progress import QUIET, Progress
from nfedge.sram.image import WeightImage, read_image

__all__ = ["TargetResult", "run_on_target", "emulator_command"]

# exit codes of firmware_harness/nfedge_rt.h
_EXIT_REASONS = {
    2: "file I/O through semihosting failed",
    3: "a compiled operator returned an error",
    4: "the operator workspace pool was exhausted (build-time bound too small)",
    250: "the CPU faulted (HardFault/MemManage/BusFault/UsageFault) or took an unexpected interrupt",
}


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
    return np.ascontiguousarray(x, dtype=np.float32)


def emulator_command(bundle: Bundle, image_path: Path) -> list[str]:
    """The emulator command line for a bundle (bare-metal: the image goes to its fixed address)."""
    t = bundle.target
    if t.emulator is None:
        raise NfedgeError(f"target {t.name} has no emulator")
    cmd = list(t.emulator.command)
    if t.is_bare_metal:
        cmd += ["-M", t.emulator.machine]
        if t.emulator.cpu:
            cmd += ["-cpu", t.emulator.cpu]
        cmd += list(t.emulator.args)
        cmd += ["-kernel", str(bundle.file("run").resolve()),
                "-device", f"loader,file={image_path},addr=0x{t.image.origin:08x}"]
    else:
        if t.emulator.cpu:
            cmd += ["-cpu", t.emulator.cpu]
        cmd += list(t.emulator.args) + [str(bundle.file("run").resolve())]
    return cmd


def _run_process(cmd: list[str], cwd: Path, timeout_s: float, what: str) -> tuple[int, str, str]:
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    except FileNotFoundError:
        raise NfedgeError(f"{what}: {cmd[0]!r} was not found on PATH (install it or fix the target descriptor)") from None
    except OSError as e:
        raise NfedgeError(f"{what}: cannot start {cmd[0]!r}: {e}") from None
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise NfedgeError(f"{what}: no result within {timeout_s:g} s (the emulated program hung, or the "
                          "timeout is too short for this many samples); the emulator was killed") from None
    return proc.returncode, out, err


def _explain_exit(rc: int, out: str, err: str, what: str) -> NfedgeError:
    lines = [ln for ln in (out + "\n" + err).splitlines() if ln.strip()]
    detail = next((ln for ln in lines if ln.startswith("nfedge-error:") or ln.startswith("nfedge:")), None)
    detail = detail or next((ln for ln in lines if "fatal" in ln.lower() or "error" in ln.lower()), None)
    detail = detail or (lines[-1] if lines else "no output")
    if rc < 0:
        reason = f"was killed by signal {-rc}"
    elif rc in _EXIT_REASONS:
        reason = f"exited with code {rc}: {_EXIT_REASONS[rc]}"
    elif rc == 134 or "lockup" in (out + err).lower():
        reason = f"aborted (exit {rc}): the CPU locked up (a fault inside a fault handler or bad vector table)"
    else:
        reason = f"exited with code {rc}"
    return NfedgeError(f"{what} {reason} ({detail.strip()[:200]})")


def run_on_target(bundle_dir: str | Path | Bundle, image, inputs, timeout_s: float = 300.0,
                  progress: Progress = QUIET, verify: bool = True) -> TargetResult:
    """Run base (and generator) on `inputs` [N, C, H, W] float32 against `image` on the bundle's target."""
    bundle = bundle_dir if isinstance(bundle_dir, Bundle) else load_bundle(bundle_dir, verify=verify)
    if timeout_s <= 0:
        raise NfedgeError(f"timeout_s must be > 0, got {timeout_s}")
    x = _inputs(inputs, bundle)
    data = _image_bytes(image, bundle.image_bytes)
    t = bundle.target
    n, k = x.shape[0], bundle.num_classes
    what = f"target {t.name} ({bundle.path})"
    with tempfile.TemporaryDirectory(prefix="nfedge-run-") as d:
        d = Path(d)
        x.tofile(d / "input.bin")
        (d / "image.bin").write_bytes(data)
        progress.info(f"run: {n} sample(s) on {t.name}")
        t0 = time.perf_counter()
        if bundle.kind == "host":
            cmd = [sys.executable, "-m", "nfedge.deploy.harness", "--host-run", str(bundle.path.resolve()), str(d)]
        else:
            cmd = emulator_command(bundle, d / "image.bin")
        rc, out, err = _run_process(cmd, d, timeout_s, what)
        wall = time.perf_counter() - t0
        if rc != 0:
            raise _explain_exit(rc, out, err, what)
        m = re.search(r"nfedge-done samples=(\d+)", out)
        if not m or int(m.group(1)) != n:
            raise NfedgeError(f"{what} finished without processing all {n} samples "
                              f"(output: {(out.strip().splitlines() or ['none'])[-1][:200]})")
        per = 2 * k if bundle.has_generator else k
        logits = _read_exact(d / "logits.bin", np.float32, n * per, what).reshape(n, per)
        ticks = _read_exact(d / "ticks.bin", np.uint64, n * 3, what).reshape(n, 3).astype(np.int64)
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

    ws = re.search(r"workspace_peak=(\d+)", out)

    return TargetResult(
        logits_base=logits[:, :k].copy(), logits_nf=logits[:, k:].copy() if has_gen else None,
        instructions_base=None if instr is None else instr[:, 0].copy(),
        instructions_generator=None if instr is None or not has_gen else instr[:, 1].copy(),
        instructions_base_nf=None if instr is None or not has_gen else instr[:, 2].copy(),
        ticks=ticks, timer=t.timer, estimated_seconds_base=est(0), estimated_seconds_generator=est(1),
        wall_seconds=wall, workspace_peak_bytes=int(ws.group(1)) if ws and bundle.kind != "host" else None,
        target=t.name, stdout=out)


def _read_exact(path: Path, dtype, count: int, what: str) -> np.ndarray:
    if not path.is_file():
        raise NfedgeError(f"{what} wrote no {path.name}")
    arr = np.fromfile(path, dtype=dtype)
    if arr.size != count:
        raise NfedgeError(f"{what} wrote {arr.size} values to {path.name}, expected {count}")
    return arr


# ------------------------------------------------------------------ host target: the Relax VM runner


def _host_run(bundle_dir: str, work: str) -> int:
    """Subprocess entry for host bundles: the same file protocol as the firmware's main.c."""
    import tvm
    from tvm import relax

    bundle = load_bundle(bundle_dir, verify=False)
    d = Path(work)
    c, h, w = bundle.input_shape
    k = bundle.num_classes
    image = np.fromfile(d / "image.bin", dtype=np.int8)
    x_all = np.fromfile(d / "input.bin", dtype=np.float32).reshape(-1, c, h, w)
    dev = tvm.cpu()
    vms = {name: relax.VirtualMachine(tvm.runtime.load_module(str(bundle.path / bundle.manifest["entry"][name])), dev)
           for name in ("base", "generator") if name in bundle.manifest["entry"]}
    image_t = tvm.runtime.tensor(image, dev)  # copies into an aligned buffer

    def run(vm, *args):
        t0 = time.perf_counter_ns()
        out = vm["main"](*args)
        out = out[0] if isinstance(out, (list, tuple)) or type(out).__name__ == "Array" else out
        arr = out.numpy()
        return arr, time.perf_counter_ns() - t0

    logits, ticks = [], []
    for i in range(x_all.shape[0]):
        xi = tvm.runtime.tensor(np.ascontiguousarray(x_all[i:i + 1]), dev)
        lb, tb = run(vms["base"], xi, image_t)
        row, trow = [lb.reshape(k)], [tb, 0, 0]
        if "generator" in vms:
            fx, tg = run(vms["generator"], xi)
            ln, tn = run(vms["base"], tvm.runtime.tensor(np.ascontiguousarray(fx), dev), image_t)
            row.append(ln.reshape(k))
            trow[1:] = [tg, tn]
        logits.append(np.concatenate(row))
        ticks.append(trow)
    np.asarray(logits, dtype=np.float32).tofile(d / "logits.bin")
    np.asarray(ticks, dtype=np.uint64).tofile(d / "ticks.bin")
    print(f"nfedge-done samples={x_all.shape[0]} workspace_peak=0", flush=True)
    return 0


if __name__ == "__main__":  # python -m nfedge.deploy.harness --host-run BUNDLE WORKDIR
    if len(sys.argv) == 4 and sys.argv[1] == "--host-run":
        try:
            sys.exit(_host_run(sys.argv[2], sys.argv[3]))
        except NfedgeError as e:
            print(f"nfedge-error: {e}", flush=True)
            sys.exit(2)
    print("usage: python -m nfedge.deploy.harness --host-run BUNDLE WORKDIR", file=sys.stderr)
    sys.exit(64)
