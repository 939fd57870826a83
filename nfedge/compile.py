"""Build stage: the quantized base model (reading the flat weight image) and the NeuralFuse front, compiled
with TVM for a target and packed into a self-checking bundle directory.

    bundle = build_for_target(BuildConfig(target="cortex-m55"), base_model, image, generator, "build/m55")

Pipeline: ImageWeightedModel(x, image) and NeuralFuseFront(x) -> torch.export -> Relax
(from_exported_program) -> DecomposeOpsForInference, LegalizeOps, FuseOps, FuseTIR (+ an optional
"inline" schedule that folds the fused element-wise epilogues into their producer loops) ->
  bare-metal (Cortex-M) and linux (Cortex-A) targets: every fused PrimFunc built with tvm.tirx.build for
    the target's LLVM triple into one object; nfedge generates model.c (static arena planned here,
    constants as C arrays, the operators called in order through the tvm-ffi safe-call ABI) and links
    it with firmware_harness/ (startup, glue runtime, evaluation main) into firmware.elf / runner.
    The weight image is NOT linked in: the base model reads it at the descriptor's fixed image address,
    where the emulator's loader places it, so one firmware runs against every faulty image.
  host: tvm.compile + export_library (one .so per graph) run by the Relax VM; with BuildConfig.tuning_db
    (a database from nfedge.tune) the fused PrimFuncs get their MetaSchedule-tuned schedules and the
    code is compiled for the database's target (this CPU's -mcpu, its core count).

Bundle layout (written atomically):
  manifest.json   format/version, config, target descriptor, io shapes, memory map, sizes, versions,
                  sha256 of every file below (checked by load_bundle before anything runs)
  firmware.elf | runner | base.so (+ generator.so)   what the harness runs
  operators.o, model.c, model.h, memory.ld, link.map  compiled artifacts (glue targets)
  image/          the clean weight image (weights.bin + manifest.json)
  relax/          the lowered Relax programs as text (for inspection)
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nfedge.config import StageConfig, require
from nfedge.errors import NfedgeError
from nfedge.export import ImageWeightedModel, NeuralFuseFront, image_tensor
from nfedge.fileio import atomic_dir, atomic_write_json, sha256_file
from nfedge.memory import WeightImage, write_image
from nfedge.progress import QUIET, Progress
from nfedge.quant import check_bits
from nfedge.targets import TargetDescriptor, load_target

__all__ = ["BuildConfig", "Bundle", "build_for_target", "load_bundle", "lower_relax", "relax_graphs", "BUNDLE_FORMAT",
           "BUNDLE_VERSION"]

BUNDLE_FORMAT = "nfedge-bundle"
BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
FIRMWARE_PKG = "nfedge._data.firmware_harness"
ALIGN = 16  # arena / constant alignment (bytes)
SCHEDULES = ("none", "inline")


# ----------------------------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class BuildConfig(StageConfig):
    """What to build. `bits` (optional) must equal the image's bits: a guard against mixing files."""

    target: str = "arm-cortex"
    bits: int | None = None
    input_shape: tuple[int, int, int] = (1, 32, 32)  # C, H, W of one sample
    opt_level: int = 3  # TVM PassContext opt_level
    schedule: str = "inline"  # "inline": fold element-wise epilogues into producers; "none": as fused
    workspace_bytes: int = 0  # operator scratch pool; 0 = the bound computed from the operators
    timeout_s: float = 600.0  # per toolchain command
    tuning_db: str | None = None  # MetaSchedule database directory written by `nfedge tune` (host target only)

    def validate(self) -> None:
        require(isinstance(self.target, str) and self.target != "", "target must be a non-empty name or path")
        if self.bits is not None:
            check_bits(self.bits)
        require(len(self.input_shape) == 3 and all(isinstance(v, int) and v > 0 for v in self.input_shape),
                f"input_shape must be three positive integers (C, H, W), got {self.input_shape!r}")
        require(self.opt_level in (0, 1, 2, 3), f"opt_level must be 0..3, got {self.opt_level!r}")
        require(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        require(self.workspace_bytes >= 0, "workspace_bytes must be >= 0")
        require(self.timeout_s > 0, "timeout_s must be > 0")
        require(self.tuning_db is None or (isinstance(self.tuning_db, str) and self.tuning_db != ""),
                "tuning_db must be a database directory or None")


# ----------------------------------------------------------------------------------------------- bundle


@dataclasses.dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]
    target: TargetDescriptor

    @property
    def kind(self) -> str:
        return self.manifest["target"]["kind"]

    @property
    def has_generator(self) -> bool:
        return bool(self.manifest["io"]["has_generator"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["io"]["input_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.manifest["io"]["num_classes"])

    @property
    def image_bytes(self) -> int:
        return int(self.manifest["io"]["image_bytes"])

    def file(self, key: str) -> Path:
        return self.path / self.manifest["entry"][key]


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read a bundle's manifest and (by default) check every file's sha256 against it."""
    d = Path(path)
    mpath = d / MANIFEST
    if not mpath.is_file():
        raise NfedgeError(f"{d} is not a build bundle (no {MANIFEST}); run `nfedge build` first")
    try:
        m = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise NfedgeError(f"{mpath}: not valid JSON ({e})") from None
    if m.get("format") != BUNDLE_FORMAT:
        raise NfedgeError(f"{mpath}: format is {m.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    if m.get("version") != BUNDLE_VERSION:
        raise NfedgeError(f"{mpath}: bundle version {m.get('version')!r} not supported (this nfedge reads {BUNDLE_VERSION})")
    if verify:
        for rel, digest in sorted(m.get("files", {}).items()):
            f = d / rel
            if not f.is_file():
                raise NfedgeError(f"bundle {d} is incomplete: {rel} is missing (rebuild it)")
            got = sha256_file(f)
            if got != digest:
                raise NfedgeError(f"bundle {d} is corrupt: {rel} has sha256 {got[:12]}..., manifest says "
                                  f"{digest[:12]}... (rebuild it)")
    src = m["target"].get("source")
    try:
        target = load_target(src if src and Path(src).is_file() else m["target"]["name"])
    except NfedgeError:
        target = load_target(m["target"]["name"])
    return Bundle(path=d, manifest=m, target=target)


# ------------------------------------------------------------------------------------ torch -> Relax


def _export_relax(module: nn.Module, args: tuple[torch.Tensor, ...]):
    import warnings

    from tvm.relax.frontend.torch import from_exported_program

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ep = torch.export.export(module.eval(), args)
        except Exception as e:  # noqa: BLE001
            raise NfedgeError(f"torch.export of {type(module).__name__} failed: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from e
        try:
            return from_exported_program(ep, unwrap_unit_return_tuple=True)
        except Exception as e:  # noqa: BLE001
            raise NfedgeError(f"TVM could not import {type(module).__name__} (from_exported_program): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def lower_relax(mod, target, schedule: str = "inline"):
    """Relax -> fused Relax + PrimFuncs (call_tir form): the glue targets' lowering."""
    import tvm
    from tvm import relax

    seq = tvm.transform.Sequential([
        relax.transform.DecomposeOpsForInference(),
        # BatchNorm decomposes through a tuple; without canonicalising, ReLU is not fused into the conv
        relax.transform.CanonicalizeBindings(),
        relax.transform.DeadCodeElimination(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ])
    with target:
        mod = seq(mod)
    if schedule == "inline":
        mod = apply_inline_schedule(mod)
    return mod


def apply_inline_schedule(mod):
    """A minimal CPU schedule for unscheduled fused PrimFuncs: inline every injective intermediate
    (padding, BatchNorm arithmetic, casts) and compute the element-wise epilogue of a reduction (conv,
    matmul, pooling) right after each output element's reduction, so the fused operator keeps one
    scalar instead of full-size intermediate tensors. Blocks that refuse a transformation stay as they
    are (still correct, only slower). PrimFuncs already scheduled (by a tuning database) are left alone."""
    import tvm
    from tvm import s_tir

    new_funcs = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or (func.attrs and func.attrs.get("tirx.is_scheduled", False)):
            continue
        try:
            sch = s_tir.Schedule(func)
            _inline_all(sch)
            new_funcs[gv] = sch.mod["main"]
        except Exception:  # noqa: BLE001 - keep the unscheduled (correct) function
            continue
    for gv, f in new_funcs.items():
        mod[gv] = f
    return mod


def _inline_all(sch) -> None:
    def blocks():
        root = sch.get_sblock("root")
        return sch.get_child_blocks(root)

    def is_reduction(b) -> bool:
        return any(int(iv.iter_type) != 0 for iv in sch.get(b).iter_vars)

    changed = True
    while changed:  # 1. inline injective intermediates, except into a reduction (padding stays a
        changed = False  # buffer: inlined, every multiply-accumulate would pay the bounds check)
        for b in blocks():
            if any(is_reduction(c) for c in sch.get_consumers(b)):
                continue
            try:
                sch.compute_inline(b)
                changed = True
                break
            except Exception:  # noqa: BLE001
                continue
    changed = True
    while changed:  # 2. element-wise consumers into their producers (spatial producers)
        changed = False
        for b in blocks():
            try:
                sch.reverse_compute_inline(b)
                changed = True
                break
            except Exception:  # noqa: BLE001
                continue
    # 3. an epilogue after a reduction: compute it per output element, right after the reduction
    bl = blocks()
    for i, b in enumerate(bl[:-1]):
        loops = sch.get_loops(b)
        kinds = [int(iv.iter_type) for iv in sch.get(b).iter_vars]
        n_spatial = 0
        for k in kinds:
            if k != 0:  # IterVar.DataPar == 0, CommReduce == 2
                break
            n_spatial += 1
        if n_spatial == len(kinds) or n_spatial == 0 or n_spatial > len(loops):
            continue
        # reverse_compute_at only regenerates the consumer region that depends on the producer: a
        # consumer over a larger domain (padding after pooling) would silently lose its border
        prod_w, cons_w = sch.get(b).writes, sch.get(bl[i + 1]).writes
        if len(prod_w) != 1 or len(cons_w) != 1 or any(int(iv.iter_type) != 0 for iv in sch.get(bl[i + 1]).iter_vars):
            continue
        if [int(d) for d in prod_w[0].buffer.shape] != [int(d) for d in cons_w[0].buffer.shape]:
            continue
        if not any(sch.get(p).same_as(sch.get(b)) for p in sch.get_producers(bl[i + 1])):
            continue
        try:
            sch.reverse_compute_at(bl[i + 1], loops[n_spatial - 1], preserve_unit_loops=True)
        except Exception:  # noqa: BLE001
            continue


# ------------------------------------------------------------------------------ program planning (glue)


@dataclasses.dataclass
class _Tensor:
    key: int
    shape: tuple[int, ...]
    dtype: str
    kind: str  # input | output | const | arena
    name: str = ""
    offset: int = -1  # arena offset
    const: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclasses.dataclass
class _Program:
    name: str  # base | generator
    prefix: str  # C symbol prefix
    inputs: list[_Tensor]
    output: _Tensor
    calls: list[tuple[str, list[int]]]  # (PrimFunc name, tensor keys: inputs..., output)
    tensors: dict[int, _Tensor]
    arena_bytes: int
    workspace_bound: int
    prim_funcs: dict[str, Any]  # name -> PrimFunc


def _shape_of(ty) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in ty.shape.values)
    except Exception:  # noqa: BLE001
        raise NfedgeError(f"only static shapes can be compiled for a bare-metal target (got {ty})") from None


def _plan_program(mod, name: str, prefix: str) -> _Program:
    import tvm
    from tvm import relax

    func = mod["main"]
    call_tir = tvm.ir.Op.get("relax.call_tir")
    tensors: dict[int, _Tensor] = {}
    by_var: dict[Any, int] = {}
    counter = iter(range(1 << 30))

    def new(shape, dtype, kind, nm="", const=None) -> int:
        k = next(counter)
        tensors[k] = _Tensor(k, tuple(shape), str(dtype), kind, nm, const=const)
        return k

    inputs = []
    for p in func.params:
        k = new(_shape_of(p.ty), p.ty.dtype, "input", p.name)
        by_var[p] = k
        inputs.append(tensors[k])
    const_keys: dict[Any, int] = {}
    producers: dict[int, tuple[str, list[int]]] = {}
    body = func.body
    for block in body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Var):
                by_var[b.var] = by_var[v]
                continue
            if not (isinstance(v, relax.Call) and v.op.same_as(call_tir)):
                what = v.op.name if isinstance(v, relax.Call) and hasattr(v.op, "name") else type(v).__name__
                raise NfedgeError(f"{name}: operation {what} is not supported by the bare-metal code generator")
            gv, args = v.args[0], v.args[1]
            keys = []
            for a in args.fields:
                if isinstance(a, relax.Var):
                    keys.append(by_var[a])
                elif isinstance(a, tvm.ir.GenericConst):
                    if a not in const_keys:
                        arr = np.ascontiguousarray(a.value.numpy())
                        const_keys[a] = new(arr.shape, arr.dtype, "const", const=arr)
                    keys.append(const_keys[a])
                else:
                    raise NfedgeError(f"{name}: operator argument of type {type(a).__name__} is not supported")
            out_ty = b.var.ty
            if not hasattr(out_ty, "dtype"):
                raise NfedgeError(f"{name}: operator {gv.name_hint} returns a tuple; not supported on bare metal")
            ok = new(_shape_of(out_ty), out_ty.dtype, "arena")
            by_var[b.var] = ok
            producers[ok] = (gv.name_hint, keys + [ok])
    ret = body.body
    if not isinstance(ret, relax.Var) or by_var[ret] not in producers:
        raise NfedgeError(f"{name}: the graph must end in an operator producing one tensor")
    out_key = by_var[ret]
    tensors[out_key].kind = "output"

    # schedule: depth-first from the output, so each weight is decoded right before its first use
    order: list[int] = []
    seen: set[int] = set()

    def visit(k: int) -> None:
        if k in seen or k not in producers:
            return
        seen.add(k)
        for a in producers[k][1][:-1]:
            visit(a)
        order.append(k)

    visit(out_key)
    calls = [producers[k] for k in order]

    # arena: first fit over liveness intervals (an operator's inputs and output never share bytes)
    last_use: dict[int, int] = {}
    for step, (_, keys) in enumerate(calls):
        for a in keys[:-1]:
            last_use[a] = step
    live: list[tuple[int, int, int]] = []  # (offset, size, last step)
    arena = 0
    for step, (_, keys) in enumerate(calls):
        out = tensors[keys[-1]]
        if out.kind != "arena":
            continue
        live = [iv for iv in live if iv[2] >= step]
        size = -(-out.nbytes // ALIGN) * ALIGN
        off = 0
        for o, s, _ in sorted(live):
            if off + size <= o:
                break
            off = max(off, o + s)
        out.offset = off
        live.append((off, size, last_use.get(out.key, step)))
        arena = max(arena, off + size)

    prims = {}
    ws = 0
    for fname in dict.fromkeys(c[0] for c in calls):
        f = mod[fname]
        prims[fname] = f
        ws = max(ws, _alloc_bound(f))
    return _Program(name=name, prefix=prefix, inputs=inputs, output=tensors[out_key], calls=calls,
                    tensors=tensors, arena_bytes=arena, workspace_bound=ws, prim_funcs=prims)


def _alloc_bound(prim) -> int:
    """Upper bound of a PrimFunc's scratch memory: all its root-level buffers alive at once (TVM puts
    large ones in the workspace, small ones on the stack; the firmware checks the pool at run time)."""
    total = 0
    block = getattr(prim.body, "block", None)
    for buf in getattr(block, "alloc_buffers", []) or []:
        try:
            n = int(np.prod([int(d) for d in buf.shape], dtype=np.int64))
            nbytes = n * np.dtype(str(buf.dtype)).itemsize
        except (TypeError, ValueError):
            continue
        total += 32 + -(-nbytes // ALIGN) * ALIGN
    return total


# ------------------------------------------------------------------------------------- C generation


def _dl_dtype(dtype: str) -> tuple[int, int]:
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return 1, 8
    code = {"i": 0, "u": 1, "f": 2}.get(dt.kind)
    if code is None:
        raise NfedgeError(f"dtype {dtype} is not supported by the bare-metal code generator")
    return code, dt.itemsize * 8


def _c_type(dtype: str) -> str:
    return {"float32": "float", "float64": "double", "int8": "int8_t", "uint8": "uint8_t", "int16": "int16_t",
            "uint16": "uint16_t", "int32": "int32_t", "uint32": "uint32_t", "int64": "int64_t",
            "uint64": "uint64_t", "bool": "uint8_t"}[str(np.dtype(dtype))]


def _c_literal(v, dtype: str) -> str:
    if np.dtype(dtype).kind == "f":
        f = float(v)
        if np.isnan(f):
            return "NAN"
        if np.isinf(f):
            return "INFINITY" if f > 0 else "-INFINITY"
        return f.hex() + ("f" if np.dtype(dtype) == np.float32 else "")
    return str(int(v))


def _symbol(prefix: str, fname: str) -> str:
    return f"{prefix}{fname}"


def _generate_c(programs: list[_Program], image_bytes: int, input_shape, num_classes: int, arena_bytes: int,
                workspace_bytes: int) -> tuple[str, str]:
    has_gen = any(p.name == "generator" for p in programs)
    h = [
        "/* Generated by nfedge.compile: do not edit. */",
        "#ifndef NFEDGE_MODEL_H_", "#define NFEDGE_MODEL_H_", "#include <stdint.h>",
        f"#define NFEDGE_IN_C {input_shape[0]}", f"#define NFEDGE_IN_H {input_shape[1]}",
        f"#define NFEDGE_IN_W {input_shape[2]}", f"#define NFEDGE_NUM_CLASSES {num_classes}",
        f"#define NFEDGE_HAS_GENERATOR {int(has_gen)}", f"#define NFEDGE_IMAGE_BYTES {image_bytes}u",
        f"#define NFEDGE_ARENA_BYTES {arena_bytes}u", f"#define NFEDGE_WORKSPACE_BYTES {workspace_bytes}u",
        "void nfedge_model_init(void);",
        "int nfedge_base_run(const float *x, const int8_t *image, float *logits);",
    ]
    if has_gen:
        h.append("int nfedge_generator_run(const float *x, float *fx);")
    h += ["#endif", ""]
    c = ["/* Generated by nfedge.compile: do not edit. Operators come from operators.o (tvm.tirx.build). */",
         "#include <math.h>", "#include <stdint.h>", '#include "model.h"', '#include "nfedge_rt.h"', "",
         f"static uint8_t nfedge_arena[{max(arena_bytes, ALIGN)}] __attribute__((aligned({ALIGN})));",
         f"static uint8_t nfedge_workspace[{max(workspace_bytes, ALIGN)}] __attribute__((aligned({ALIGN})));",
         "", "void nfedge_model_init(void) { nfedge_workspace_init(nfedge_workspace, sizeof(nfedge_workspace)); }",
         ""]
    for p in programs:
        for fname in p.prim_funcs:
            c.append(f"extern int __tvm_ffi_{_symbol(p.prefix, fname)}(void *, const TVMFFIAny *, int32_t, TVMFFIAny *);")
        c.append("")
        shapes: dict[tuple[int, ...], str] = {}
        for t in p.tensors.values():
            if t.shape not in shapes:
                shapes[t.shape] = f"{p.prefix}shape{len(shapes)}"
                dims = ", ".join(str(d) for d in t.shape) or "1"
                c.append(f"static const int64_t {shapes[t.shape]}[{max(len(t.shape), 1)}] = {{{dims}}};")
        for t in p.tensors.values():
            if t.kind == "const":
                vals = t.const.reshape(-1)
                body = ", ".join(_c_literal(v, t.dtype) for v in vals)
                c.append(f"static const {_c_type(t.dtype)} {p.prefix}const{t.key}[{max(vals.size, 1)}] "
                         f"__attribute__((aligned({ALIGN}))) = {{{body}}};")
        c.append("")
        if p.name == "base":
            c.append("int nfedge_base_run(const float *x, const int8_t *image, float *logits) {")
            ptr = {p.inputs[0].key: "(void *)x", p.inputs[1].key: "(void *)image", p.output.key: "(void *)logits"}
        else:
            c.append("int nfedge_generator_run(const float *x, float *fx) {")
            ptr = {p.inputs[0].key: "(void *)x", p.output.key: "(void *)fx"}
        for fname, keys in p.calls:
            n = len(keys)
            c.append(f"  {{ /* {fname} */")
            c.append(f"    DLTensor a[{n}];")
            c.append(f"    DLTensor *t[{n}] = {{{', '.join(f'&a[{i}]' for i in range(n))}}};")
            for i, k in enumerate(keys):
                t = p.tensors[k]
                if k in ptr:
                    data = ptr[k]
                elif t.kind == "const":
                    data = f"(void *){p.prefix}const{t.key}"
                elif t.kind == "arena":
                    data = f"(void *)(nfedge_arena + {t.offset})"
                else:
                    raise NfedgeError(f"{p.name}: tensor {t.name or t.key} has no storage")
                code, bits = _dl_dtype(t.dtype)
                c.append(f"    nfedge_tensor(&a[{i}], {data}, {len(t.shape)}, {shapes[t.shape]}, {code}, {bits});")
            c.append(f"    if (nfedge_call(__tvm_ffi_{_symbol(p.prefix, fname)}, t, {n}) != 0) return 1;")
            c.append("  }")
        c += ["  return 0;", "}", ""]
    return "\n".join(h), "\n".join(c)


def _memory_ld(t: TargetDescriptor) -> str:
    lines = [f"/* Generated by nfedge.compile from {t.source}: do not edit. */", "MEMORY", "{"]
    if t.boot is not None:
        lines.append(f"  BOOT (rx)  : ORIGIN = 0x{t.boot.origin:08x}, LENGTH = 0x{t.boot.length:x}  /* {t.boot.name} */")
    lines += [
        f"  CODE (rx)  : ORIGIN = 0x{t.code.origin:08x}, LENGTH = 0x{t.code.length:x}  /* {t.code.name} */",
        f"  RAM  (rwx) : ORIGIN = 0x{t.ram.origin:08x}, LENGTH = 0x{t.ram.length:x}  /* {t.ram.name} */",
        "}",
    ]
    if t.boot is None:
        lines.append('REGION_ALIAS("BOOT", CODE);')
    lines += [
        f"/* weight image: {t.image.name} at 0x{t.image.origin:08x} (0x{t.image.length:x} bytes), not linked */",
        f"__nfedge_image_origin__ = 0x{t.image.origin:08x};",
        f"__stack_size__ = 0x{t.stack_bytes:x};",
        f"__heap_size__ = 0x{t.heap_bytes:x};",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- toolchain


def _which(prog: str, target: TargetDescriptor, role: str) -> str:
    p = shutil.which(prog)
    if p is None:
        raise NfedgeError(f"{role} {prog!r} for target {target.name} was not found on PATH "
                          f"(descriptor {target.source}); install the target's toolchain or fix the descriptor")
    return p


def _run(cmd: list[str], what: str, cwd: Path, timeout: float, log: list[str]) -> str:
    log.append("$ " + " ".join(cmd))
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise NfedgeError(f"{what} timed out after {timeout:.0f} s: {' '.join(cmd[:3])} ...") from None
    except OSError as e:
        raise NfedgeError(f"{what} could not run {cmd[0]!r}: {e}") from None
    log.append(r.stdout + r.stderr)
    if r.returncode != 0:
        out = (r.stderr or r.stdout).strip()
        m = re.search(r"region [`'](\w+)' overflowed by (\d+) bytes", out)
        if m:
            raise NfedgeError(f"the model does not fit the target: {what} says region {m.group(1)} overflows "
                              f"by {int(m.group(2))} bytes")
        first = next((ln for ln in out.splitlines() if "error" in ln.lower()), out.splitlines()[-1] if out else "")
        raise NfedgeError(f"{what} failed (exit {r.returncode}): {first.strip()[:300]}")
    return r.stdout


def _section_sizes(size_tool: str, elf: Path, cwd: Path, timeout: float, log: list[str]) -> dict[str, int]:
    out = _run([size_tool, "-A", str(elf)], "size", cwd, timeout, log)
    sizes = {}
    for ln in out.splitlines():
        parts = ln.split()
        if len(parts) >= 3 and parts[0].startswith(".") and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    return sizes


def _firmware_dir() -> Path:
    d = importlib.resources.files(FIRMWARE_PKG)
    p = Path(str(d))
    if not (p / "nfedge_rt.c").is_file():
        raise NfedgeError(f"firmware harness sources not found in {p} (broken installation?)")
    return p


def _tvm_ffi_include() -> str:
    import tvm_ffi.libinfo

    return str(tvm_ffi.libinfo.find_include_path())


# -------------------------------------------------------------------------------------------- build


def check_build_inputs(cfg: BuildConfig, base_model: nn.Module, image: WeightImage, generator) -> int:
    if not isinstance(image, WeightImage):
        raise NfedgeError("building or tuning needs a WeightImage (nfedge.memory.build_image / read_image)")
    if cfg.bits is not None and cfg.bits != image.manifest.bits:
        raise NfedgeError(f"build config asks for {cfg.bits}-bit weights but the image holds {image.manifest.bits}-bit codes")
    base_model = base_model.eval()
    with torch.no_grad():
        x = torch.zeros((1, *cfg.input_shape))
        try:
            y = ImageWeightedModel(base_model, image.manifest)(x, image_tensor(image))
        except NfedgeError:
            raise
        except Exception as e:  # noqa: BLE001
            raise NfedgeError(f"the base model does not run on input shape {tuple(cfg.input_shape)}: {e}") from None
        if y.dim() != 2 or y.shape[0] != 1:
            raise NfedgeError(f"the base model must return [N, classes] logits, got shape {tuple(y.shape)}")
        if generator is not None:
            fx = NeuralFuseFront(generator)(x)
            if tuple(fx.shape) != tuple(x.shape):
                raise NfedgeError(f"the generator maps {tuple(x.shape)} to {tuple(fx.shape)}; it must keep the input shape")
    return int(y.shape[1])


def relax_graphs(input_shape: tuple[int, int, int], base_model: nn.Module, image: WeightImage,
                 generator: nn.Module | None, batch: int = 1) -> dict[str, Any]:
    """The Relax programs a bundle compiles: "base" (x, image) -> logits and, with a generator,
    "generator" x -> F(x) = clip(x + G(x), -1, 1); x is [batch, C, H, W] float32."""
    x = torch.zeros((batch, *input_shape), dtype=torch.float32)
    mods = {"base": _export_relax(ImageWeightedModel(base_model, image.manifest), (x, image_tensor(image)))}
    if generator is not None:
        mods["generator"] = _export_relax(NeuralFuseFront(generator), (x,))
    return mods


def build_for_target(cfg: BuildConfig, base_model: nn.Module, image: WeightImage, generator: nn.Module | None,
                     out_dir: str | Path, progress: Progress = QUIET) -> Bundle:
    """Compile base model (+ generator) for cfg.target and write the bundle directory atomically."""
    t_start = time.perf_counter()
    target = load_target(cfg.target)
    num_classes = check_build_inputs(cfg, base_model, image, generator)
    image_bytes = int(image.manifest.total_bytes)
    if target.is_bare_metal and image_bytes > target.image.length:
        raise NfedgeError(f"the model does not fit target {target.name}: the weight image is {image_bytes} bytes but "
                          f"its image region {target.image.name} holds {target.image.length} bytes")
    if target.kind in ("bare-metal", "linux"):
        _which(target.toolchain.cc, target, "compiler")
        _which(target.toolchain.size, target, "size tool")
    else:
        _which(target.toolchain.cc, target, "compiler")

    tuning = None
    if cfg.tuning_db is not None:
        from nfedge.tune import load_tuning_db

        if target.kind != "host":
            raise NfedgeError(f"a tuning database applies to the host target only, not to {target.name} ({target.kind})")
        tuning = load_tuning_db(cfg.tuning_db, target)

    progress.info(f"build: importing the base model{' and generator' if generator is not None else ''} into TVM Relax")
    relax_mods = relax_graphs(cfg.input_shape, base_model, image, generator)
    tvm_target = target.tvm_target()

    out_dir = Path(out_dir)
    log: list[str] = []
    with atomic_dir(out_dir) as tmp:
        (tmp / "relax").mkdir()
        if target.kind == "host":
            entry, sizes, extra = _build_host(cfg, target, tvm_target, relax_mods, tmp, log, progress, tuning)
        else:
            entry, sizes, extra = _build_glue(cfg, target, tvm_target, relax_mods, tmp, image_bytes, input_shape=cfg.input_shape,
                                              num_classes=num_classes, log=log, progress=progress)
        write_image(image, tmp / "image")
        (tmp / "build.log").write_text("\n".join(log) + "\n")
        files = {}
        for f in sorted(tmp.rglob("*")):
            if f.is_file() and f.name != MANIFEST:
                files[str(f.relative_to(tmp))] = sha256_file(f)
        manifest = {
            "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
            "config": cfg.to_dict(),
            "target": target.to_dict(),
            "entry": entry,
            "io": {"input_shape": list(cfg.input_shape), "input_dtype": "float32", "num_classes": num_classes,
                   "has_generator": generator is not None, "image_bytes": image_bytes,
                   "image_bits": image.manifest.bits, "image_sha256": image.manifest.image_sha256,
                   "image_address": target.image.origin if target.is_bare_metal else None,
                   "outputs": ["logits_base[K]"] + (["logits_neuralfuse[K]"] if generator is not None else [])},
            "memory_map": {k: v for k, v in target.to_dict()["memory"].items()},
            "sizes": sizes | {"weights_bytes": image_bytes},
            **extra,
            "build_seconds": round(time.perf_counter() - t_start, 3),
            "versions": _versions(target),
            "files": files,
        }
        atomic_write_json(tmp / MANIFEST, manifest)
    progress.info(f"build: compiled and linked in {manifest['build_seconds']:.1f} s")
    return load_bundle(out_dir)


def _versions(target: TargetDescriptor) -> dict[str, str]:
    import tvm

    import nfedge

    v = {"nfedge": nfedge.__version__, "tvm": getattr(tvm, "__version__", "?"), "torch": torch.__version__,
         "python": platform.python_version()}
    try:
        r = subprocess.run([target.toolchain.cc, "--version"], capture_output=True, text=True, timeout=30)
        v["cc"] = r.stdout.splitlines()[0] if r.stdout else "?"
    except (OSError, subprocess.TimeoutExpired):
        v["cc"] = "?"
    return v


def _build_glue(cfg, target, tvm_target, relax_mods, tmp: Path, image_bytes: int, input_shape, num_classes: int,
                log: list[str], progress: Progress):
    import tvm

    programs = []
    prim_funcs = {}
    for name, mod in relax_mods.items():
        progress.info(f"build: lowering {name} (legalize, fuse{', inline' if cfg.schedule == 'inline' else ''})")
        lowered = lower_relax(mod, tvm_target, cfg.schedule)
        (tmp / "relax" / f"{name}.py").write_text(lowered.script(show_meta=False))
        prefix = "nfb_" if name == "base" else "nfg_"
        prog = _plan_program(lowered, name, prefix)
        programs.append(prog)
        for fname, f in prog.prim_funcs.items():
            sym = _symbol(prefix, fname)
            prim_funcs[sym] = f.with_attr("global_symbol", sym)
    arena = max(p.arena_bytes for p in programs)
    workspace = cfg.workspace_bytes or max(p.workspace_bound for p in programs)

    progress.info(f"build: compiling {len(prim_funcs)} operators for {target.name} (tvm.tirx.build)")
    t0 = time.perf_counter()
    with tvm.transform.PassContext(opt_level=cfg.opt_level, config={"tirx.disable_assert": True}):
        try:
            rt = tvm.tirx.build(tvm.IRModule({tvm.ir.GlobalVar(s): f for s, f in prim_funcs.items()}), target=tvm_target)
        except Exception as e:  # noqa: BLE001
            raise NfedgeError(f"TVM failed to build the operators for {target.name}: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from e
    rt.write_to_file(str(tmp / "operators.o"))
    tvm_seconds = time.perf_counter() - t0

    model_h, model_c = _generate_c(programs, image_bytes, input_shape, num_classes, arena, workspace)
    (tmp / "model.h").write_text(model_h)
    (tmp / "model.c").write_text(model_c)
    fw = _firmware_dir()
    tc = target.toolchain
    cc = _which(tc.cc, target, "compiler")
    common = [*tc.cflags, "-std=gnu11", "-Wall", "-I", str(tmp), "-I", str(fw), "-I", _tvm_ffi_include()]
    if target.is_bare_metal:
        (tmp / "memory.ld").write_text(_memory_ld(target))
        out = tmp / "firmware.elf"
        srcs = [fw / "startup_cm.c", fw / "nfedge_rt.c", fw / "main.c", tmp / "model.c"]
        cmd = [cc, *common, f"-DNFEDGE_IMAGE_ADDR=0x{target.image.origin:08x}u", *map(str, srcs),
               str(tmp / "operators.o"), *tc.ldflags, "-T", str(fw / "cortex_m.ld"), "-L", str(tmp),
               f"-Wl,-Map={tmp / 'link.map'}", "-lm", "-o", str(out)]
        entry = {"run": "firmware.elf"}
    else:
        out = tmp / "runner"
        srcs = [fw / "timer_linux.c", fw / "nfedge_rt.c", fw / "main.c", tmp / "model.c"]
        cmd = [cc, *common, *map(str, srcs), str(tmp / "operators.o"), *tc.ldflags,
               f"-Wl,-Map={tmp / 'link.map'}", "-lm", "-o", str(out)]
        entry = {"run": "runner"}
    progress.info(f"build: linking {out.name} with {tc.cc}")
    t0 = time.perf_counter()
    _run(cmd, f"linking {out.name} ({tc.cc})", tmp, cfg.timeout_s, log)
    link_seconds = time.perf_counter() - t0
    secs = _section_sizes(_which(tc.size, target, "size tool"), out, tmp, cfg.timeout_s, log)
    sizes = _glue_sizes(secs, tmp / "operators.o", arena, workspace, target)
    sizes["arena_bytes_by_graph"] = {p.name: p.arena_bytes for p in programs}
    sizes["workspace_bound_by_graph"] = {p.name: p.workspace_bound for p in programs}
    if target.is_bare_metal:
        if sizes["code_bytes"] > target.code.length:
            raise NfedgeError(f"the model does not fit target {target.name}: code needs {sizes['code_bytes']} bytes, "
                              f"region {target.code.name} holds {target.code.length}")
        if sizes["ram_bytes"] > target.ram.length:
            raise NfedgeError(f"the model does not fit target {target.name}: RAM needs {sizes['ram_bytes']} bytes "
                              f"(arena {arena}, workspace {workspace}), region {target.ram.name} holds {target.ram.length}")
    extra = {"operators": {p.name: [c[0] for c in p.calls] for p in programs},
             "timings": {"tvm_build_seconds": round(tvm_seconds, 3), "link_seconds": round(link_seconds, 3)}}
    return entry, sizes, extra


def _glue_sizes(secs: dict[str, int], obj: Path, arena: int, workspace: int, target: TargetDescriptor) -> dict[str, Any]:
    code_sections = (".isr_vector", ".text", ".rodata", ".ARM.exidx", ".ARM.extab", ".init_array", ".fini_array",
                     ".preinit_array", ".eh_frame", ".gcc_except_table")
    code = sum(v for k, v in secs.items() if k in code_sections or k.startswith(".text") or k.startswith(".rodata"))
    data = secs.get(".data", 0) + secs.get(".got", 0) + secs.get(".got.plt", 0)
    bss = secs.get(".bss", 0)
    ram = data + bss + secs.get(".heap", 0) + secs.get(".stack", 0) + secs.get(".tbss", 0) + secs.get(".tdata", 0)
    return {"code_bytes": code + data, "data_bytes": data, "bss_bytes": bss, "ram_bytes": ram,
            "operators_object_bytes": obj.stat().st_size, "arena_bytes": arena, "workspace_bytes": workspace,
            "stack_bytes": secs.get(".stack", 0), "heap_bytes": secs.get(".heap", 0), "sections": secs}


def _build_host(cfg, target, tvm_target, relax_mods, tmp: Path, log: list[str], progress: Progress, tuning=None):
    """tuning: a nfedge.tune.TuningDatabase; its schedules (and its target: this CPU, its core count) are used."""
    import tvm
    from tvm import relax

    entry = {}
    sizes: dict[str, Any] = {}
    tuned: dict[str, list[str]] = {}
    t0 = time.perf_counter()
    cc = _which(target.toolchain.cc, target, "compiler")
    if tuning is not None:
        tvm_target = tuning.tvm_target()
    for name, mod in relax_mods.items():
        progress.info(f"build: tvm.compile {name} for {target.name}{' with tuned schedules' if tuning else ''}")
        with tvm.transform.PassContext(opt_level=cfg.opt_level):
            try:
                seq = tvm.transform.Sequential([relax.transform.DecomposeOpsForInference()])
                mod2 = seq(mod)
                if tuning is not None:
                    mod2, tuned[name] = tuning.apply(mod2, cfg.schedule)
                elif cfg.schedule == "inline":
                    mod2 = lower_relax(mod2, tvm_target, "inline")
                ex = tvm.compile(mod2, target=tvm_target)
            except NfedgeError:
                raise
            except Exception as e:  # noqa: BLE001
                raise NfedgeError(f"tvm.compile of {name} for {target.name} failed: {type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}") from e
        (tmp / "relax" / f"{name}.py").write_text(mod2.script(show_meta=False))
        lib = tmp / f"{name}.so"
        try:
            ex.export_library(str(lib), cc=cc)
        except Exception as e:  # noqa: BLE001
            raise NfedgeError(f"export_library of {name} with {target.toolchain.cc} failed: {e}") from e
        entry[name] = lib.name
        sizes[f"{name}_library_bytes"] = lib.stat().st_size
    entry["run"] = entry["base"]
    extra: dict[str, Any] = {"timings": {"tvm_build_seconds": round(time.perf_counter() - t0, 3)}}
    if tuning is not None:
        extra["tuning"] = {"db": str(tuning.path.resolve()), "db_sha256": tuning.sha256,
                           "tvm_target": tuning.target_dict, "tuned_operators": tuned}
    return entry, sizes, extra
