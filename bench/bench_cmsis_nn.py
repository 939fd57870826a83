"""Benchmark: nfedge's integer kernels side by side with CMSIS-NN, layer by layer, on emulated Cortex-M55 and M4.

For each model (random weights seeded as bench/bench_target.py, 8-bit image, 1x32x32 input: one Fashion-MNIST test
image padded to 32x32; integer programs calibrated on 64 seeded Fashion-MNIST training images) this script
1. builds CMSIS-NN from `--cmsis-nn DIR` (default ../shared/third_party/CMSIS-NN next to the repository) with the
   target descriptor's gcc flags, -O2 raised to -O3, plus -DCMSIS_NN_USE_SINGLE_ROUNDING (TOSA's / nfedge's rounding),
   into a small firmware (bench/cmsis_nn/bench_main.c + nfedge's firmware_harness/startup_cm.c) that runs under the
   same QEMU machine and arguments as nfedge's firmware (the target descriptor's, through nfedge.deploy.run.emulators);
2. converts every layer of nfedge's integer program to the CMSIS-NN call a TFLM user would make (NCHW/OIHW ->
   NHWC/OHWI; nfedge's per-channel (sign, M, shift) -> CMSIS-NN's (sign * M, 31 - shift); zero points 0; a Keras
   'same' pad folded into the conv behind it; ds-cnn's crop folded into its average pool's window), feeds it the
   image's int8 codes and the integer reference's input to that layer, and compares CMSIS-NN's output integers with
   the reference's output of that layer (exact, or where CMSIS-NN cannot express the op: how many differ);
3. counts each CMSIS-NN call with SysTick under `-icount shift=0` (instructions = ticks x the descriptor's
   instructions_per_tick, as nfedge's harness counts), and builds + runs nfedge's own firmware for the same model
   (whole network: nfedge counts one inference between two SysTick reads; it has no per-layer counts);
4. prints per layer and per model: instructions, instructions/MAC, CMSIS-NN's scratch (its *_get_buffer_size),
   activation arenas (both graphs planned the same way: the peak of the live tensors' bytes), code bytes.

    .venv/bin/python bench/bench_cmsis_nn.py [--models cnn-s ConvT resnet8 ds-cnn mobilenet-v1-0.25]
        [--targets cortex-m55 cortex-m4] [--cmsis-nn DIR] [--json OUT.json] [--no-nfedge]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CMSIS_NN = REPO.parent / "shared" / "third_party" / "CMSIS-NN"
FIRMWARE_SRC = Path(__file__).resolve().parent / "cmsis_nn" / "bench_main.c"
TARGETS = ("cortex-m55", "cortex-m4")
MODELS = ("cnn-s", "ConvT", "resnet8", "ds-cnn", "mobilenet-v1-0.25")
GENERATORS = ("ConvT",)  # benchmarked as the front of cnn-s (one nfedge build holds both)
KINDS = {"conv": 0, "dw": 1, "fc": 2, "fc_pc": 3, "maxpool": 4, "avgpool": 5, "add": 6, "upsample": 7}
FUNCTIONS = {"conv": "arm_convolve_wrapper_s8", "dw": "arm_depthwise_conv_wrapper_s8", "fc": "arm_fully_connected_s8",
             "fc_pc": "arm_fully_connected_per_channel_s8", "maxpool": "arm_max_pool_s8", "avgpool": "arm_avgpool_s8",
             "add": "arm_elementwise_add_s8", "upsample": "plain C nearest resize (CMSIS-NN has none)"}
BLOB_MAGIC, BLOB_VERSION = 0x42434E4E, 1
LAYER_FIELDS = ("kind in_h in_w in_c out_h out_w out_c k_h k_w stride_h stride_w pad_h pad_w act_min act_max ch_mult "
                "factor a_mult a_shift b_mult b_shift left_shift o_mult o_shift in_off in2_off w_off bias_off mult_off "
                "shift_off lut_off pt_mult pt_shift in_bytes in2_bytes out_bytes").split()  # bench_main.c layer_t
ARRAYS = ("in", "in2", "w", "bias", "mult", "shift", "lut")
ARENA_BYTES, SCRATCH_BYTES = 256 * 1024, 64 * 1024  # the bench firmware's buffers (bench_main.c)
CALIB_IMAGES = 64
# library sources: the int8 kernels and what they call (no float, int4, int16, LSTM or SVDF code)
_SOURCE_DIRS = ("ConvolutionFunctions", "FullyConnectedFunctions", "PoolingFunctions", "BasicMathFunctions",
                "NNSupportFunctions", "TransposeFunctions", "ActivationFunctions")
_SKIP = re.compile(r"_f16|_f32|_flt|_s4|lstm|svdf")


class BenchError(Exception):
    """A one-line reason the bench cannot run."""


# ------------------------------------------------------------------------------------------------ the CMSIS-NN build


def toolchain(target: str) -> tuple[object, list[str]]:
    """(the nfedge target descriptor, gcc flags for the CMSIS-NN build: the descriptor's with -O3 and single rounding)."""
    from nfedge.deploy.targets import load_target

    t = load_target(target)
    if not t.is_bare_metal:
        raise BenchError(f"target {target} is not a bare-metal Cortex-M target")
    flags = [f for f in t.toolchain.cflags if not re.fullmatch(r"-O[0-3s]", f)]
    return t, [*flags, "-O3", "-DCMSIS_NN_USE_SINGLE_ROUNDING"]


def _run(cmd: list[str], cwd: Path, what: str) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stderr.strip() or r.stdout.strip()).splitlines()
        why = [ln for ln in tail if "error" in ln or "undefined" in ln] or tail
        raise BenchError(f"{what} failed: {why[0][-300:] if why else r.returncode}")
    return r.stdout


def build_library(cmsis_nn: Path, target: str, work: Path) -> Path:
    """libcmsisnn.a for `target`, compiled from the CMSIS-NN tree (one gcc process at a time)."""
    _, flags = toolchain(target)
    if not (cmsis_nn / "Include" / "arm_nnfunctions.h").is_file():
        raise BenchError(f"{cmsis_nn}: not a CMSIS-NN tree (no Include/arm_nnfunctions.h); pass --cmsis-nn DIR")
    srcs = sorted(p for d in _SOURCE_DIRS for p in (cmsis_nn / "Source" / d).glob("*.c") if not _SKIP.search(p.name))
    obj = work / f"cmsis-nn-{target}"
    obj.mkdir(parents=True, exist_ok=True)
    _run(["arm-none-eabi-gcc", *flags, "-ffunction-sections", "-fdata-sections", "-I", str(cmsis_nn / "Include"), "-c",
          *map(str, srcs)], obj, f"compiling CMSIS-NN for {target}")
    lib = work / f"libcmsisnn-{target}.a"
    lib.unlink(missing_ok=True)
    _run(["arm-none-eabi-ar", "rcs", str(lib), *sorted(str(p) for p in obj.glob("*.o"))], obj, "archiving CMSIS-NN")
    return lib


def link_firmware(cmsis_nn: Path, lib: Path, target: str, kinds: set[str], work: Path, tag: str) -> tuple[Path, int]:
    """(bench firmware ELF linked with only the CMSIS-NN functions for `kinds`, CMSIS-NN code bytes it holds)."""
    from nfedge.deploy.compile.codegen import memory_ld
    from nfedge.deploy.compile.toolchain import firmware_dir, tvm_ffi_include

    t, flags = toolchain(target)
    d = work / f"fw-{target}-{tag}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "memory.ld").write_text(memory_ld(t))
    fw = firmware_dir()
    mask = sum(1 << KINDS[k] for k in kinds)
    elf = d / "bench.elf"
    _run(["arm-none-eabi-gcc", *flags, "-ffunction-sections", "-fdata-sections", "-std=gnu11", "-Wall",
          "-I", str(cmsis_nn / "Include"), "-I", str(fw), "-I", tvm_ffi_include(),
          f"-DBENCH_KINDS={mask}", f"-DBENCH_BLOB_ADDR=0x{t.input.origin:08x}u", f"-DNFEDGE_UART_ADDR=0x{t.uart:08x}u",
          f"-DARENA_BYTES={ARENA_BYTES}", f"-DSCRATCH_BYTES={SCRATCH_BYTES}",
          str(FIRMWARE_SRC), str(fw / "startup_cm.c"), str(lib), *t.toolchain.ldflags, "-T", str(fw / "cortex_m.ld"),
          "-L", str(d), f"-Wl,-Map={d / 'link.map'}", "-lm", "-o", str(elf)], d, f"linking the bench firmware ({target})")
    return elf, library_code_bytes(d / "link.map", lib.name)


def library_code_bytes(map_file: Path, archive: str) -> int:
    """Bytes of .text/.rodata that the linker kept from `archive` (GNU ld map, after 'Linker script and memory map')."""
    text = map_file.read_text(errors="replace")
    text = text[text.find("Linker script and memory map"):]
    total, section = 0, None
    for line in text.splitlines():
        m = re.match(r"^ (\.(?:text|rodata)\S*)(?:\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(\S+))?\s*$", line)
        if m:
            section = m.group(1)
            if m.group(4):
                total += int(m.group(3), 16) if archive in m.group(4) else 0
                section = None
            continue
        m = re.match(r"^\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(\S+)\s*$", line)
        if section and m:
            total += int(m.group(2), 16) if archive in m.group(3) else 0
        section = None
    return total


# ------------------------------------------------------------------------------------------------ layers


@dataclasses.dataclass
class Layer:
    name: str  # nfedge program ops this CMSIS-NN call covers, joined with '+'
    kind: str  # a KINDS key
    fields: dict  # layer_t's integer fields (not the offsets)
    arrays: dict  # ARRAYS -> numpy arrays as the firmware reads them
    expected: np.ndarray  # what CMSIS-NN must write (int8, NHWC), from nfedge's reference
    macs: int
    note: str = ""  # why CMSIS-NN cannot be exact here ("" when it should be)


def _nhwc(t: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(t)[0].transpose(1, 2, 0)).astype(np.int8)


def _cmsis_quant(sign, mult, shift) -> tuple[np.ndarray, np.ndarray]:
    """nfedge's per-channel (sign, M, shift), f ~= sign * M * 2^-shift, as CMSIS-NN's (multiplier, shift): with
    single rounding CMSIS-NN computes round(v * m / 2^(31 - s)), half up, so m = sign * M and s = 31 - shift."""
    m = np.asarray(sign, dtype=np.int64) * np.asarray(mult, dtype=np.int64)
    s = 31 - np.asarray(shift, dtype=np.int64)
    return m.astype(np.int32), s.astype(np.int32)


def _tflite_multiplier(real: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier: real ~= m * 2^(e - 31), m in [2^30, 2^31) (CMSIS-NN's multiplier and shift)."""
    if real == 0:
        return 0, 0
    mant, e = math.frexp(real)
    m = round(mant * 2**31)
    if m == 2**31:
        m, e = m // 2, e + 1
    return int(m), int(e)


def _base(**kw) -> dict:
    f = dict.fromkeys([*LAYER_FIELDS[:24], "pt_mult", "pt_shift"], 0)
    f.update(stride_h=1, stride_w=1, k_h=1, k_w=1, act_min=-128, act_max=127, ch_mult=1, factor=1)
    f.update(kw)
    return f


def _dims(t: np.ndarray) -> dict:
    _, c, h, w = t.shape
    return {"h": h, "w": w, "c": c}


def cmsis_layers(prog, codes: dict, tensors: dict) -> tuple[list[Layer], list[str]]:
    """The CMSIS-NN calls for `prog`'s ops (with `codes` and the reference's `tensors`), and notes on folded ops."""
    from nfedge.integer.program import crop_size, pad_amounts

    consumers: dict[str, list] = {}
    for op in prog.ops:
        for i in op.inputs:
            consumers.setdefault(i, []).append(op)
    folded_pad: dict[str, tuple[object, list[int]]] = {}  # conv output -> (pad op, [l, r, t, b])
    folded_crop: dict[str, tuple[object, tuple[int, int]]] = {}  # avgpool output -> (crop op, (rows, cols))
    flat_src: dict[str, str] = {}
    layers, notes = [], []
    for op in prog.ops:
        out = tensors[op.output]
        if op.kind == "pad":
            users = consumers.get(op.output, [])
            if len(users) == 1 and users[0].kind == "conv" and not users[0].attrs.get("padding"):
                folded_pad[users[0].output] = (op, pad_amounts(op, tuple(tensors[op.inputs[0]].shape)))
                continue
            raise BenchError(f"{op.output}: a pad that feeds no conv has no CMSIS-NN function")
        if op.kind == "crop":
            users = consumers.get(op.output, [])
            if len(users) == 1 and users[0].kind == "avgpool" and "kernel" not in users[0].attrs:
                folded_crop[users[0].output] = (op, crop_size(op, [tuple(tensors[i].shape) for i in op.inputs]))
                continue
            raise BenchError(f"{op.output}: a crop that feeds no global average pool has no CMSIS-NN function")
        if op.kind == "flatten":
            flat_src[op.output] = op.inputs[0]
            continue
        p = op.params
        if op.kind == "conv":
            pad_op, pads = folded_pad.get(op.output, (None, None))
            x = tensors[pad_op.inputs[0]] if pad_op else tensors[op.inputs[0]]
            w = np.asarray(codes[prog.weight_key(op)], dtype=np.int64)
            groups = op.attrs.get("groups", 1)
            if op.attrs.get("transposed"):
                raise BenchError(f"{op.module}: transposed convs are not in this bench")
            s, pd = op.attrs["stride"], op.attrs["padding"]
            pad_w, pad_h = (pads[0], pads[2]) if pads else (pd, pd)
            m, sh = _cmsis_quant(p["sign"], p["mult"], p["shift"])
            if int(sh.min()) < -31 or int(sh.max()) > 30:
                raise BenchError(f"{op.module}: a rescale shift outside CMSIS-NN's range")
            cin, cout = x.shape[1], w.shape[0]
            if groups == 1:
                kind, wc = "conv", np.ascontiguousarray(w.transpose(0, 2, 3, 1))
            elif groups == cin and w.shape[1] == 1:
                kind, wc = "dw", np.ascontiguousarray(w[:, 0].transpose(1, 2, 0))
            else:
                raise BenchError(f"{op.module}: grouped conv with {groups} groups has no CMSIS-NN function")
            arrays = {"in": _nhwc(x), "w": wc.astype(np.int8), "bias": np.asarray(p["bias_q"], np.int64).astype(np.int32),
                      "mult": m, "shift": sh}
            if "lut" in p:
                arrays["lut"] = np.asarray(p["lut"], np.int64).astype(np.int8)
            if int(p["lo"]) < -128 or int(p["hi"]) > 127:
                raise BenchError(f"{op.module}: a conv with int32 output")
            f = _base(kind=KINDS[kind], in_h=x.shape[2], in_w=x.shape[3], in_c=cin, out_h=out.shape[2],
                      out_w=out.shape[3], out_c=cout, k_h=w.shape[2], k_w=w.shape[3], stride_h=s, stride_w=s,
                      pad_h=pad_h, pad_w=pad_w, act_min=int(p["lo"]), act_max=int(p["hi"]), ch_mult=cout // cin)
            macs = out.shape[2] * out.shape[3] * cout * w.shape[1] * w.shape[2] * w.shape[3]
            name = f"{pad_op.output}+{op.module}" if pad_op else op.module
            notes += [f"{pad_op.output} folded into {op.module}'s padding (top/left {pad_h}/{pad_w})"] if pad_op else []
            layers.append(Layer(name, kind, f, arrays, _nhwc(out), macs))
        elif op.kind == "linear":
            src = flat_src.get(op.inputs[0])
            w = np.asarray(codes[prog.weight_key(op)], dtype=np.int64)
            if src is not None:  # NCHW flatten -> NHWC order: permute the weights' columns the same way
                _, c, h, ww = tensors[src].shape
                x = _nhwc(tensors[src]).reshape(-1)
                w = w.reshape(w.shape[0], c, h, ww).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
            else:
                x = np.asarray(tensors[op.inputs[0]]).reshape(-1).astype(np.int8)
            m, sh = _cmsis_quant(p["sign"], p["mult"], p["shift"])
            per_tensor = len(set(zip(m.tolist(), sh.tolist()))) == 1
            kind = "fc" if per_tensor else "fc_pc"
            lo, hi = int(p["lo"]), int(p["hi"])
            note = ""
            if lo < -128 or hi > 127:
                note = ("int32 logits: CMSIS-NN's fully connected writes int8 only; same MACs and rescale, output "
                        "compared with the reference saturated to int8")
                lo, hi = max(lo, -128), min(hi, 127)
            expected = np.clip(np.asarray(out).reshape(-1), lo, hi).astype(np.int8)
            f = _base(kind=KINDS[kind], in_h=1, in_w=1, in_c=x.size, out_h=1, out_w=1, out_c=w.shape[0],
                      act_min=lo, act_max=hi, pt_mult=int(m[0]), pt_shift=int(sh[0]))
            arrays = {"in": x, "w": np.ascontiguousarray(w).astype(np.int8),
                      "bias": np.asarray(p["bias_q"], np.int64).astype(np.int32), "mult": m, "shift": sh}
            layers.append(Layer(op.module, kind, f, arrays, expected, int(w.size), note))
        elif op.kind == "maxpool":
            x = tensors[op.inputs[0]]
            k, s, pd = op.attrs["kernel"], op.attrs.get("stride", op.attrs["kernel"]), op.attrs.get("padding", 0)
            f = _base(kind=KINDS["maxpool"], in_h=x.shape[2], in_w=x.shape[3], in_c=x.shape[1], out_h=out.shape[2],
                      out_w=out.shape[3], out_c=out.shape[1], k_h=k, k_w=k, stride_h=s, stride_w=s, pad_h=pd, pad_w=pd)
            layers.append(Layer(op.output, "maxpool", f, {"in": _nhwc(x)}, _nhwc(out), 0))
        elif op.kind == "avgpool":
            crop_op, rc = folded_crop.get(op.output, (None, None))
            x = tensors[crop_op.inputs[0]] if crop_op else tensors[op.inputs[0]]
            if "kernel" in op.attrs:
                kh = kw = op.attrs["kernel"]
                sh_, sw_ = op.attrs["stride"], op.attrs["stride"]
            else:
                kh, kw = rc if crop_op else (x.shape[2], x.shape[3])
                sh_, sw_ = kh, kw
            f = _base(kind=KINDS["avgpool"], in_h=x.shape[2], in_w=x.shape[3], in_c=x.shape[1], out_h=out.shape[2],
                      out_w=out.shape[3], out_c=out.shape[1], k_h=kh, k_w=kw, stride_h=sh_, stride_w=sw_)
            s_in, s_out = prog.scales[op.inputs[0]], prog.scales[op.output]
            note = ("" if abs(s_in / s_out - 1) < 1e-12 else
                    f"CMSIS-NN's average pool keeps the scale (TFLite AVERAGE_POOL_2D); nfedge's rescales it by "
                    f"s_in/s_out = {s_in / s_out:.3g}, which CMSIS-NN cannot express (TFLM runs MEAN as reference C)")
            name = f"{crop_op.output}+{op.output}" if crop_op else op.output
            notes += [f"{crop_op.output} folded into {op.output}'s window ({kh}x{kw} at the top left)"] if crop_op else []
            layers.append(Layer(name, "avgpool", f, {"in": _nhwc(x)}, _nhwc(out), 0, note))
        elif op.kind == "add":
            a, b = tensors[op.inputs[0]], tensors[op.inputs[1]]
            s_a, s_b = prog.scales[op.inputs[0]], prog.scales[op.inputs[1]]
            s_y = p.get("pre_scale", prog.scales[op.output])
            left = 20  # TFLite's int8 ADD: inputs << 20, each rescaled to 2 max(s_a, s_b), summed, rescaled to s_y
            twice = 2 * max(s_a, s_b)
            am, ash = _tflite_multiplier(s_a / twice)
            bm, bsh = _tflite_multiplier(s_b / twice)
            om, osh = _tflite_multiplier(twice / ((1 << left) * s_y))
            f = _base(kind=KINDS["add"], in_h=a.shape[2], in_w=a.shape[3], in_c=a.shape[1], out_h=out.shape[2],
                      out_w=out.shape[3], out_c=out.shape[1], act_min=int(p["lo"]), act_max=int(p["hi"]), a_mult=am,
                      a_shift=ash, b_mult=bm, b_shift=bsh, left_shift=left, o_mult=om, o_shift=osh)
            arrays = {"in": _nhwc(a), "in2": _nhwc(b)}
            if "lut" in p:
                arrays["lut"] = np.asarray(p["lut"], np.int64).astype(np.int8)
            differ = tflite_add_differences(f, p)
            note = ("TFLite ADD arithmetic (inputs << 20, each rescaled and rounded, the sum rescaled and rounded "
                    "again), not nfedge's one shared shift (a*Ma + b*Mb rounded once): the two differ for some scales; "
                    f"with this layer's, {differ:,} of all 65,536 int8 pairs (a, b) differ")
            layers.append(Layer(op.output, "add", f, arrays, _nhwc(out), 0, note))
        elif op.kind == "upsample":
            x = tensors[op.inputs[0]]
            f = _base(kind=KINDS["upsample"], in_h=x.shape[2], in_w=x.shape[3], in_c=x.shape[1], out_h=out.shape[2],
                      out_w=out.shape[3], out_c=out.shape[1], factor=op.attrs["factor"])
            layers.append(Layer(op.output, "upsample", f, {"in": _nhwc(x)}, _nhwc(out), 0))
        else:
            raise BenchError(f"{op.output}: a {op.kind} op has no CMSIS-NN function in this bench")
    return layers, notes


def _requantize(v: np.ndarray, m: int, shift: int) -> np.ndarray:
    """CMSIS-NN's arm_nn_requantize with CMSIS_NN_USE_SINGLE_ROUNDING, in int64."""
    total = 31 - shift
    return ((v * m >> (total - 1)) + 1) >> 1


def tflite_add_differences(f: dict, p: dict) -> int:
    """How many of the 65,536 int8 pairs (a, b) arm_elementwise_add_s8 with these parameters maps to another output
    than nfedge's add (the host model of both; the target's outputs are checked separately)."""
    from nfedge.integer.scheme import add_rescaled

    a, b = (v.reshape(-1) for v in np.meshgrid(np.arange(-128, 128, dtype=np.int64), np.arange(-128, 128, dtype=np.int64)))
    ya = _requantize(a << f["left_shift"], f["a_mult"], f["a_shift"])
    yb = _requantize(b << f["left_shift"], f["b_mult"], f["b_shift"])
    y = np.clip(_requantize(ya + yb, f["o_mult"], f["o_shift"]), f["act_min"], f["act_max"])
    ref = add_rescaled(a, b, p["ma"], p["mb"], p["shift"], p["lo"], p["hi"])
    return int(np.count_nonzero(y != ref))


def pack_blob(layers: list[Layer]) -> bytes:
    """The blob bench_main.c reads: header, layer offsets, then each layer_t and its arrays (16-byte aligned)."""
    head = 20 + 4 * len(layers)
    buf = bytearray(head)
    offs = []

    def put(data: bytes) -> int:
        buf.extend(b"\0" * (-len(buf) % 16))
        at = len(buf)
        buf.extend(data)
        return at

    for L in layers:
        off = {f"{k}_off": 0 for k in ARRAYS}
        for k in ARRAYS:
            if k in L.arrays:
                off[f"{k}_off"] = put(np.ascontiguousarray(L.arrays[k]).tobytes())
        sizes = {"in_bytes": L.arrays["in"].nbytes, "in2_bytes": L.arrays["in2"].nbytes if "in2" in L.arrays else 0,
                 "out_bytes": L.expected.nbytes}
        vals = {**L.fields, **off, **sizes}
        offs.append(put(struct.pack(f"<{len(LAYER_FIELDS)}i", *(int(vals[k]) for k in LAYER_FIELDS))))
    struct.pack_into(f"<5I{len(layers)}I", buf, 0, BLOB_MAGIC, BLOB_VERSION, len(layers), ARENA_BYTES, SCRATCH_BYTES,
                     *offs)
    return bytes(buf)


@dataclasses.dataclass
class LayerResult:
    status: int
    ticks: int
    scratch: int
    output: np.ndarray


def run_firmware(target: str, elf: Path, blob: bytes, n: int, timeout_s: float = 300.0) -> list[LayerResult]:
    """Run the bench firmware on `blob` under the target's QEMU (nfedge's argv: no semihosting, the UART to a file)."""
    from nfedge.deploy.guest_io import REC_EXIT, REC_MESSAGE, parse_records
    from nfedge.deploy.run.emulators import qemu_system_argv, resolve_emulator, run_process

    t, _ = toolchain(target)
    if len(blob) > t.input.length:
        raise BenchError(f"the layers' data ({len(blob):,} B) do not fit {t.input.name} ({t.input.length:,} B)")
    qemu = resolve_emulator(t)
    with tempfile.TemporaryDirectory(prefix="nfedge-cmsis-nn-") as d:
        d = Path(d)
        (d / "image.bin").write_bytes(b"\0" * 16)
        (d / "blob.bin").write_bytes(blob)
        uart = d / "uart.bin"
        cmd = qemu_system_argv(qemu, t, elf, d / "image.bin", d / "blob.bin", uart)
        rc, _, err = run_process(cmd, d, d, time.monotonic() + timeout_s, timeout_s, f"CMSIS-NN bench on {target}",
                                 [uart], 64 << 20)
        raw = uart.read_bytes() if uart.is_file() else b""
    records, _ = parse_records(raw)
    if rc != 0:
        raise BenchError(f"QEMU for {target} exited with {rc}: {err.strip()[-200:]}")
    msgs = [r.payload.decode(errors="replace") for r in records if r.type == REC_MESSAGE]
    exits = [int.from_bytes(r.payload, "little") for r in records if r.type == REC_EXIT]
    if exits != [0]:
        raise BenchError(f"the bench firmware on {target} ended with {exits or 'no exit record'} {' '.join(msgs)[:200]}")
    out: dict[int, LayerResult] = {}
    chunks: dict[int, list[tuple[int, bytes]]] = {}
    for r in records:
        if r.type == b"L":
            i, st, used = struct.unpack_from("<3I", r.payload)
            (ticks,) = struct.unpack_from("<Q", r.payload, 12)
            out[i] = LayerResult(struct.unpack("<i", struct.pack("<I", st))[0], ticks, used, np.zeros(0, np.int8))
        elif r.type == b"O":
            i, off = struct.unpack_from("<2I", r.payload)
            chunks.setdefault(i, []).append((off, r.payload[8:]))
    if sorted(out) != list(range(n)):
        raise BenchError(f"the bench firmware on {target} reported {len(out)} of {n} layers")
    for i, res in out.items():
        res.output = np.frombuffer(b"".join(c for _, c in sorted(chunks.get(i, []))), dtype=np.int8)
    return [out[i] for i in range(n)]


# ------------------------------------------------------------------------------------------------ arenas


def arena_peak(steps: list[tuple[list[str], str]], nbytes: dict[str, int], alias: dict[str, str] | None = None) -> int:
    """Peak bytes of live activations over a sequence of (inputs, output) steps: a tensor lives from the step that
    writes it to the last step that reads it, inputs and output of a step together (no in-place reuse). The same
    plan for both graphs (a lower bound of any offset planner; nfedge's own planner's result is reported beside)."""
    alias = alias or {}
    root = lambda t: alias.get(t, t)  # noqa: E731 - a view (flatten) is its source's bytes
    last = {}
    for i, (ins, _) in enumerate(steps):
        for t in ins:
            last[root(t)] = i
    live: dict[str, int] = {}
    peak = 0
    for i, (ins, out) in enumerate(steps):
        for t in ins:
            live.setdefault(root(t), nbytes[root(t)])
        live[root(out)] = nbytes[root(out)]
        peak = max(peak, sum(live.values()))
        for t in list(live):
            if last.get(t, -1) <= i:
                del live[t]
    return peak


def graph_arenas(prog, tensors: dict, layers: list[Layer]) -> tuple[int, int]:
    """(nfedge's graph, CMSIS-NN's graph with pads and crops folded and flatten a view): peak live activation bytes."""
    nbytes = {k: int(np.asarray(v).size) * (4 if k == prog.output and prog.ops[-1].kind == "linear"
                                            and int(prog.ops[-1].params.get("hi", 0)) > 127 else 1)
              for k, v in tensors.items()}
    flat = {op.output: op.inputs[0] for op in prog.ops if op.kind == "flatten"}
    nf = arena_peak([(op.inputs, op.output) for op in prog.ops if op.kind != "flatten"], nbytes, flat)
    folded = {op.output: op.inputs[0] for op in prog.ops if op.kind in ("pad", "crop")}
    src = lambda t: folded.get(flat.get(t, t), flat.get(t, t))  # noqa: E731
    steps = [([src(i) for i in op.inputs], op.output) for op in prog.ops if op.kind not in ("pad", "crop", "flatten")]
    nb = dict(nbytes)
    nb[prog.output] = layers[-1].expected.nbytes if layers else nb.get(prog.output, 0)  # CMSIS-NN: int8 logits
    return nf, arena_peak(steps, nb)


# ------------------------------------------------------------------------------------------------ models


@dataclasses.dataclass
class ModelCase:
    name: str
    prog: object
    codes: dict
    x_q: np.ndarray
    macs: int


def make_cases(models: list[str], seed: int = 0):
    """The benchmarked integer programs (random weights, seeded) with their inputs, and what nfedge builds from them:
    [(base name, base model, image, programs, generator or None, [ModelCase...])]."""
    import torch

    from nfedge.analysis.dataflow import count_macs
    from nfedge.data.config import DataConfig
    from nfedge.data.datasets import calibration_images, load_dataset
    from nfedge.integer.calibrate import INPUT_SCALE, calibrate_programs
    from nfedge.integer.reference import image_codes
    from nfedge.integer.scheme import quantize_to_int8
    from nfedge.models import create_base_model, create_generator
    from nfedge.sram.image import build_image

    x_calib = calibration_images(DataConfig(), CALIB_IMAGES, seed=1)
    _, test, _ = load_dataset(DataConfig(test_limit=1, train_limit=1, seed=seed))
    x_q = quantize_to_int8(test.tensors[0][:1].numpy(), INPUT_SCALE)
    bases = [m for m in models if m not in GENERATORS]
    if any(m in GENERATORS for m in models) and "cnn-s" not in bases:
        bases.insert(0, "cnn-s")
    builds = []
    for name in bases:
        torch.manual_seed(seed)
        base = create_base_model(name, in_channels=1, num_classes=10).eval()
        gens = {}
        if name == "cnn-s":
            for g in GENERATORS:
                if g in models:
                    gens["generator"] = create_generator(g, in_channels=1).eval()
        image = build_image(base, 8)
        programs = calibrate_programs(base, image, gens, x_calib)
        cases = []
        if name in models:
            cases.append(ModelCase(name, programs["base"], image_codes(programs["base"], image), x_q,
                                   count_macs(base, (1, 32, 32))))
        if gens:
            g = next(iter(gens.values()))
            gname = next(m for m in GENERATORS if m in models)
            cases.append(ModelCase(gname, programs["generator"], programs["generator"].constants, x_q,
                                   count_macs(g, (1, 32, 32))))
        builds.append((name, base, image, programs, gens.get("generator"), cases))
    return builds, x_q


def nfedge_run(target: str, base, image, programs, gen, x_q, work: Path, profile: bool = True) -> dict:
    """Build nfedge's integer firmware for `target` and run one inference: {"base": {...}, "generator": {...}}, each
    with instructions, arena, workspace and code bytes, and whether the target's logits equal the reference."""
    from nfedge.deploy.compile.build import BuildConfig, build_for_target
    from nfedge.deploy.run.harness import run_on_target
    from nfedge.integer.reference import image_codes, run_integer

    from nfedge.deploy.run import harness

    d = work / f"nfedge-{target}-{time.monotonic_ns()}"
    b = build_for_target(BuildConfig(target=target, mode="integer"), base, image, gen, d, programs=programs)
    trace = d.parent / f"{d.name}-trace.log"
    plain = harness.qemu_system_argv
    if profile:  # bench/profile_target.py's trace: instructions per firmware symbol (does not change the counts)
        harness.qemu_system_argv = lambda *a, **k: plain(*a, **k) + ["-d", "in_asm,exec,nochain", "-D", str(trace)]
    try:
        r = run_on_target(b, image.codes.tobytes(), x_q)
    finally:
        harness.qemu_system_argv = plain
    per_op = {}
    if profile:
        import profile_target

        per, _ = profile_target.profile(trace, Path(b.path) / "firmware.elf")
        trace.unlink()
        runs = {"base": 2 if gen is not None else 1, "generator": 1}  # base(x) and base(F(x)) both run with a front
        for graph, prefix in (("base", "nfb_"), ("generator", "nfg_")):
            ops = []
            for fn in b.manifest.get("operators", {}).get(graph, []):
                sym = fn if fn.startswith(prefix) else prefix + fn
                if any(sym == o[0] for o in ops):
                    continue
                n = sum(v for k, v in per.items()
                        if k in (sym, f"{sym}_compute_", f"__tvm_ffi_{sym}") or k.startswith(f"{sym}_compute_"))
                calls = sum(1 for f in b.manifest["operators"][graph] if f == fn)
                ops.append((sym, calls, round(n / runs[graph])))
            per_op[graph] = ops
    sizes = b.manifest["sizes"]
    ref = run_integer(programs["base"], x_q, image_codes(programs["base"], image))
    code = nfedge_code_bytes(Path(b.path))
    out = {"base": {"instructions": int(r.instructions_base[0]), "arena": sizes["arena_bytes_by_graph"]["base"],
                    "workspace": sizes["workspace_bound_by_graph"]["base"], "code_bytes": code,
                    "firmware_code_bytes": sizes["code_bytes"],
                    "exact": bool(np.array_equal(np.asarray(r.logits_base).astype(np.int64), ref)),
                    "operators": per_op.get("base"), "front": gen is not None}}
    if gen is not None:
        out["generator"] = {"instructions": int(r.instructions_generator[0]),
                            "arena": sizes["arena_bytes_by_graph"].get("generator"),
                            "workspace": sizes["workspace_bound_by_graph"].get("generator"), "code_bytes": code,
                            "firmware_code_bytes": sizes["code_bytes"], "exact": None,
                            "operators": per_op.get("generator")}
    return out


def nfedge_code_bytes(bundle: Path) -> int | None:
    """.text/.rodata the linker kept from the TVM operators (operators.o) and the generated model.c, when the bundle
    keeps its link map; else None."""
    m = bundle / "link.map"
    if not m.is_file():
        return None
    return library_code_bytes(m, "operators.o") + library_code_bytes(m, "model.")


# ------------------------------------------------------------------------------------------------ report


def compare(layer: Layer, res: LayerResult) -> str:
    if res.status != 0:
        return f"CMSIS-NN returned {res.status}"
    expected = layer.expected.reshape(-1)
    if res.output.shape != expected.shape:
        return f"output size {res.output.size} != {expected.size}"
    diff = res.output.astype(np.int64) - expected.astype(np.int64)
    bad = int(np.count_nonzero(diff))
    if bad == 0:
        return "exact"
    return f"{bad}/{diff.size} differ (max |d| {int(np.abs(diff).max())})"


def _fmt(v, spec=","):
    return "—" if v is None else format(v, spec)


def bench(models: list[str], targets: list[str], cmsis_nn: Path, nfedge: bool, work: Path, log=print,
          profile: bool = True) -> dict:
    builds, _ = make_cases(models)
    results = {"models": {}, "cmsis_nn": str(cmsis_nn), "targets": {}}
    prepared = []
    from nfedge.integer.reference import run_integer

    for bname, base, image, programs, gen, cases in builds:
        for case in cases:
            tensors = run_integer(case.prog, case.x_q, case.codes, keep=True)
            layers, notes = cmsis_layers(case.prog, case.codes, tensors)
            nf_arena, cm_arena = graph_arenas(case.prog, tensors, layers)
            prepared.append((case, layers, notes, nf_arena, cm_arena))
    for target in targets:
        t, flags = toolchain(target)
        results["targets"][target] = {"cflags": flags, "machine": t.emulator.machine,
                                      "instructions_per_tick": t.instructions_per_tick}
        lib = build_library(cmsis_nn, target, work)
        nf = {}
        if nfedge:
            for bname, base, image, programs, gen, cases in builds:
                got = nfedge_run(target, base, image, programs, gen, cases[0].x_q, work, profile)
                for case in cases:
                    nf[case.name] = got["generator" if case.name in GENERATORS else "base"]
        ipt = t.instructions_per_tick
        for case, layers, notes, nf_arena, cm_arena in prepared:
            kinds = {L.kind for L in layers}
            elf, code = link_firmware(cmsis_nn, lib, target, kinds, work, case.name)
            runs = run_firmware(target, elf, pack_blob(layers), len(layers))
            rows = []
            for L, res in zip(layers, runs):
                rows.append({"layer": L.name, "kind": L.kind, "function": FUNCTIONS[L.kind], "macs": L.macs,
                             "ticks": res.ticks, "instructions": round(res.ticks * ipt), "scratch": res.scratch,
                             "io_bytes": sum(L.arrays[k].nbytes for k in ("in", "in2") if k in L.arrays)
                             + L.expected.nbytes,
                             "check": compare(L, res), "note": L.note})
            total = sum(r["instructions"] for r in rows)
            entry = results["models"].setdefault(case.name, {"macs": case.macs, "notes": notes,
                                                             "arena_nfedge_graph": nf_arena,
                                                             "arena_cmsis_graph": cm_arena, "targets": {}})
            entry["targets"][target] = {"layers": rows, "cmsis_instructions": total,
                                        "cmsis_scratch": max((r["scratch"] for r in rows), default=0),
                                        "cmsis_code_bytes": code, "nfedge": nf.get(case.name)}
            log(report_model(case.name, entry, target))
    return results


def report_model(name: str, e: dict, target: str) -> str:
    tr = e["targets"][target]
    macs = e["macs"]
    nfv = tr["nfedge"] or {}
    nf_ops = nfv.get("operators") or []
    lines = [f"\n### {name} on {target} ({macs:,} MACs)", "",
             "| layer | CMSIS-NN function | MACs | CMSIS-NN instr | instr/MAC | nfedge kernel instr | instr/MAC "
             "| scratch B | in+out B | output vs nfedge reference |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in tr["layers"]:
        ipm = f"{r['instructions'] / r['macs']:.3f}" if r["macs"] else "—"
        mod = r["layer"].split("+")[-1].replace(".", "_")
        nf = [n for sym, calls, n in nf_ops if r["kind"] in ("conv", "dw") and sym.endswith("_" + mod) and calls == 1]
        nf_i, nf_ipm = (f"{nf[0]:,}", f"{nf[0] / r['macs']:.3f}") if nf else ("—", "—")
        lines.append(f"| {r['layer']} | {r['function']} | {r['macs']:,} | {r['instructions']:,} | {ipm} | {nf_i} | "
                     f"{nf_ipm} | {r['scratch']:,} | {r['io_bytes']:,} | {r['check']}"
                     f"{' — ' + r['note'] if r['note'] else ''} |")
    ci, ni = tr["cmsis_instructions"], nfv.get("instructions")
    cm_ram = e["arena_cmsis_graph"] + tr["cmsis_scratch"]
    nf_ram = (nfv["arena"] + nfv["workspace"]) if nfv else None
    lines += ["", "| whole network | instructions | instr/MAC | arena B | scratch/workspace B | RAM B | code B |",
              "|---|---|---|---|---|---|---|",
              f"| CMSIS-NN | {ci:,} | {ci / macs:.3f} | {e['arena_cmsis_graph']:,} | {tr['cmsis_scratch']:,} | "
              f"{cm_ram:,} | {tr['cmsis_code_bytes']:,} |"]
    if nfv:
        lines.append(f"| nfedge | {ni:,} | {ni / macs:.3f} | {nfv['arena']:,} (same plan: {e['arena_nfedge_graph']:,}) | "
                     f"{nfv['workspace']:,} | {nf_ram:,} | {_fmt(nfv['code_bytes'])} |")
        lines.append(f"| nfedge / CMSIS-NN | {ni / ci:.2f}x | | | | {nf_ram / cm_ram:.2f}x | |")
        if nfv.get("exact") is not None:
            lines.append(f"\nnfedge firmware's logits equal its host reference: {nfv['exact']}")
    for n in e["notes"]:
        lines.append(f"- {n}")
    if nf_ops:
        glue = nfv["instructions"] - sum(n for _, _, n in nf_ops)
        lines += ["", "nfedge's operators (TVM functions in call order; instructions from bench/profile_target.py's QEMU "
                  "trace of the same run" + (", the base model's the mean of base(x) and base(F(x))"
                                             if nfv.get("front") else "") + "):", "",
                  "| nfedge function | calls | instructions |", "|---|---|---|"]
        lines += [f"| {sym} | {calls} | {n:,} |" for sym, calls, n in nf_ops]
        lines.append(f"| (runtime glue, timer reads) | | {glue:,} |")
    return "\n".join(lines)


def summary(results: dict) -> str:
    lines = ["\n## Summary", "",
             "| model | MACs | target | CMSIS-NN instr (instr/MAC) | nfedge instr (instr/MAC) | nfedge/CMSIS-NN | "
             "RAM CMSIS-NN / nfedge B | RAM ratio |", "|---|---|---|---|---|---|---|---|"]
    for name, e in results["models"].items():
        for target, tr in e["targets"].items():
            ci, nfv, macs = tr["cmsis_instructions"], tr["nfedge"], e["macs"]
            cm_ram = e["arena_cmsis_graph"] + tr["cmsis_scratch"]
            if nfv:
                nf_ram = nfv["arena"] + nfv["workspace"]
                lines.append(f"| {name} | {macs:,} | {target} | {ci:,} ({ci / macs:.3f}) | {nfv['instructions']:,} "
                             f"({nfv['instructions'] / macs:.3f}) | {nfv['instructions'] / ci:.2f}x | "
                             f"{cm_ram:,} / {nf_ram:,} | {nf_ram / cm_ram:.2f}x |")
            else:
                lines.append(f"| {name} | {macs:,} | {target} | {ci:,} ({ci / macs:.3f}) | — | — | {cm_ram:,} / — | — |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), help=f"of {', '.join(MODELS)}")
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), help=f"of {', '.join(TARGETS)}")
    ap.add_argument("--cmsis-nn", type=Path, default=DEFAULT_CMSIS_NN, help="the CMSIS-NN tree (Include/, Source/)")
    ap.add_argument("--json", type=Path, help="also write the results here (atomically)")
    ap.add_argument("--no-nfedge", action="store_true", help="CMSIS-NN only (skip nfedge's builds)")
    ap.add_argument("--no-profile", action="store_true",
                    help="nfedge whole-network counts only (skip the QEMU trace that splits them per operator)")
    a = ap.parse_args(argv)
    try:
        bad = [m for m in a.models if m not in MODELS] + [t for t in a.targets if t not in TARGETS]
        if bad:
            raise BenchError(f"unknown model or target {bad[0]!r} (models: {', '.join(MODELS)}; targets: "
                             f"{', '.join(TARGETS)})")
        if not (a.cmsis_nn / "Include" / "arm_nnfunctions.h").is_file():
            raise BenchError(f"--cmsis-nn {a.cmsis_nn}: not a CMSIS-NN tree (no Include/arm_nnfunctions.h)")
        print(f"# nfedge integer kernels vs CMSIS-NN ({a.cmsis_nn.resolve()}), 1x32x32 input, batch 1", flush=True)
        with tempfile.TemporaryDirectory(prefix="nfedge-bench-cmsis-nn-") as work:
            results = bench(a.models, a.targets, a.cmsis_nn.resolve(), not a.no_nfedge, Path(work),
                            log=lambda s: print(s, flush=True), profile=not a.no_profile)
        print(summary(results))
        if a.json:
            from nfedge.fileio import atomic_write_json

            atomic_write_json(a.json, results)
    except BenchError as e:
        print(f"bench_cmsis_nn: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - nfedge's own one-line errors (NfedgeError) and the like
        from nfedge.errors import NfedgeError

        if not isinstance(e, NfedgeError):
            raise
        print(f"bench_cmsis_nn: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
