"""Bare-metal and Cortex-A code generation: the fused Relax graph laid out as its operator calls in order over a
static arena (layout_graph; the arena offsets by assign_arena_offsets, which knows nothing of TVM) and written out
as C (model.c / model.h) that calls the TVM-built operators through the tvm-ffi safe-call ABI, plus the linker
memory map of a bare-metal target.

Words: a "layout" here is not an operating point ("plan", nfedge.analysis.plan) and not an integer "Program"
(nfedge.integer.program); it is one graph's calls, tensors and arena offsets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from nfedge.deploy.targets import TargetDescriptor
from nfedge.errors import NfedgeError

__all__ = ["ALIGN", "ArenaTensor", "GraphLayout", "Lifetime", "arena_lifetimes", "assign_arena_offsets", "layout_graph",
           "generate_c", "memory_ld", "c_symbol"]

ALIGN = 16  # arena / constant alignment (bytes)


@dataclasses.dataclass
class ArenaTensor:
    """One tensor of a laid-out graph and where its bytes live: a run argument (input/output), a constant array
    in model.c, or `offset` bytes into the static arena."""
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
class GraphLayout:
    """One graph (base model or generator) ready for C: its operator calls in execution order over a static
    arena of `arena_bytes`, every tensor's storage, and the PrimFuncs the calls name."""
    name: str  # base | generator
    prefix: str  # C symbol prefix
    inputs: list[ArenaTensor]
    output: ArenaTensor
    calls: list[tuple[str, list[int]]]  # (PrimFunc name, tensor keys: inputs..., output)
    tensors: dict[int, ArenaTensor]
    arena_bytes: int
    workspace_bound: int
    prim_funcs: dict[str, Any]  # name -> PrimFunc


class Lifetime(NamedTuple):
    """An arena buffer for assign_arena_offsets: its size and the steps (call indices) it is live over, both ends
    included: written at `first`, last read at `last` (== first when nothing reads it)."""
    nbytes: int
    first: int
    last: int


def assign_arena_offsets(buffers: Sequence[Lifetime]) -> tuple[list[int], int]:
    """(offset of each buffer, arena bytes): first fit over liveness intervals, buffers taken by their first step
    (ties in the given order). Two buffers whose [first, last] intervals meet never share a byte: an operator's
    inputs are still live at the step that writes its output, so it never overwrites what it reads. Sizes are
    rounded up to ALIGN, so every offset and the arena size are multiples of ALIGN."""
    for b in buffers:
        if b.nbytes < 0 or b.last < b.first:
            raise ValueError(f"invalid arena buffer {b}: needs nbytes >= 0 and last >= first")
    offsets = [-1] * len(buffers)
    live: list[tuple[int, int, int]] = []  # (offset, rounded size, last step)
    arena = 0
    for i in sorted(range(len(buffers)), key=lambda i: (buffers[i].first, i)):
        step = buffers[i].first
        live = [iv for iv in live if iv[2] >= step]  # those last read before this step free their bytes
        size = -(-buffers[i].nbytes // ALIGN) * ALIGN
        off = 0
        for o, s, _ in sorted(live):  # the lowest gap between live buffers that holds this one
            if off + size <= o:
                break
            off = max(off, o + s)
        offsets[i] = off
        live.append((off, size, buffers[i].last))
        arena = max(arena, off + size)
    return offsets, arena


def _shape_of(ty) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in ty.shape.values)
    except Exception:  # noqa: BLE001
        raise NfedgeError(f"only static shapes can be compiled for a bare-metal target (got {ty})") from None


def _walk_graph(mod, name: str) -> tuple[dict[int, ArenaTensor], list[ArenaTensor],
                                         dict[int, tuple[str, list[int]]], int]:
    """(tensors by key, the inputs, {output key: (PrimFunc name, keys: inputs..., output)}, the graph's output key)
    of a lowered Relax module whose main is a flat sequence of call_tir bindings (anything else is refused)."""
    import tvm
    from tvm import relax

    func = mod["main"]
    call_tir = tvm.ir.Op.get("relax.call_tir")
    tensors: dict[int, ArenaTensor] = {}
    by_var: dict[Any, int] = {}
    counter = iter(range(1 << 30))

    def new(shape, dtype, kind, nm="", const=None) -> int:
        k = next(counter)
        tensors[k] = ArenaTensor(k, tuple(shape), str(dtype), kind, nm, const=const)
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
    return tensors, inputs, producers, out_key


def _order_calls(producers: dict[int, tuple[str, list[int]]], out_key: int) -> list[tuple[str, list[int]]]:
    """The calls the output needs, depth-first from it, so each weight is decoded right before its first use
    (and an operator nothing reads is dropped)."""
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
    return [producers[k] for k in order]


def arena_lifetimes(calls: list[tuple[str, list[int]]], tensors: dict[int, ArenaTensor]) -> list[tuple[int, Lifetime]]:
    """(key, lifetime) of every arena tensor, in call order: written by its call, live up to its last reader."""
    last_use: dict[int, int] = {}
    for step, (_, keys) in enumerate(calls):
        for a in keys[:-1]:
            last_use[a] = step
    return [(keys[-1], Lifetime(tensors[keys[-1]].nbytes, step, last_use.get(keys[-1], step)))
            for step, (_, keys) in enumerate(calls) if tensors[keys[-1]].kind == "arena"]


def layout_graph(mod, name: str, prefix: str) -> GraphLayout:
    """A lowered Relax module as a GraphLayout: walked into calls and tensors, the calls ordered, and the arena
    tensors given offsets; `prefix` names its symbols in C (two graphs share one firmware)."""
    tensors, inputs, producers, out_key = _walk_graph(mod, name)
    calls = _order_calls(producers, out_key)
    lifetimes = arena_lifetimes(calls, tensors)
    offsets, arena = assign_arena_offsets([life for _, life in lifetimes])
    for (key, _), off in zip(lifetimes, offsets):
        tensors[key].offset = off

    prims = {}
    ws = 0
    for fname in dict.fromkeys(c[0] for c in calls):
        f = mod[fname]
        prims[fname] = f
        ws = max(ws, _alloc_bound(f))
    return GraphLayout(name=name, prefix=prefix, inputs=inputs, output=tensors[out_key], calls=calls,
                       tensors=tensors, arena_bytes=arena, workspace_bound=ws, prim_funcs=prims)


def _alloc_bound(prim) -> int:
    """Upper bound of a PrimFunc's scratch memory: its buffers as TVM will allocate them (compacted to the
    region each loop nest uses: an im2col row, not the whole layer) all alive at once, plus each one's pool
    header and alignment. TVM puts large ones in the workspace, small ones on the stack; the firmware checks
    the pool at run time."""
    import tvm
    from tvm import s_tir

    block = getattr(prim.body, "block", None)
    count = len(getattr(block, "alloc_buffers", []) or [])
    if not count:
        return 0
    compact = tvm.transform.Sequential([
        s_tir.transform.LowerInitBlock(), s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
        s_tir.transform.ConvertBlocksToOpaque(), s_tir.transform.CompactBufferAllocation(),
        s_tir.transform.LowerOpaqueBlock()])(tvm.IRModule({"main": prim}))
    sizes = s_tir.analysis.calculate_allocated_bytes(compact["main"])["main"]
    return int(sum(int(v) for v in sizes.values())) + count * (32 + ALIGN)


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


def c_symbol(prefix: str, fname: str) -> str:
    return f"{prefix}{fname}"


def generate_c(layouts: list[GraphLayout], image_bytes: int, input_shape, num_classes: int, arena_bytes: int,
                workspace_bytes: int) -> tuple[str, str]:
    has_gen = any(p.name == "generator" for p in layouts)
    base = next(p for p in layouts if p.name == "base")
    # weight-only mode: float32 samples and logits; integer mode: int8 samples (and F(x)), int32 logits
    in_t, out_t = _c_type(base.inputs[0].dtype), _c_type(base.output.dtype)
    h = [
        "/* Generated by nfedge.deploy.compile.codegen: do not edit. */",
        "#ifndef NFEDGE_MODEL_H_", "#define NFEDGE_MODEL_H_", "#include <stdint.h>",
        f"#define NFEDGE_IN_C {input_shape[0]}", f"#define NFEDGE_IN_H {input_shape[1]}",
        f"#define NFEDGE_IN_W {input_shape[2]}", f"#define NFEDGE_NUM_CLASSES {num_classes}",
        f"#define NFEDGE_HAS_GENERATOR {int(has_gen)}", f"#define NFEDGE_IMAGE_BYTES {image_bytes}u",
        f"#define NFEDGE_ARENA_BYTES {arena_bytes}u", f"#define NFEDGE_WORKSPACE_BYTES {workspace_bytes}u",
        f"#define NFEDGE_INTEGER {int(in_t != 'float')}", f"typedef {in_t} nfedge_input_t;",
        f"typedef {out_t} nfedge_logit_t;",
        "#ifdef NFEDGE_LIBRARY",
        "#include <stddef.h>",
        "void nfedge_model_bind(uint8_t *arena, uint8_t *workspace, size_t workspace_bytes);",
        "#else",
        "void nfedge_model_init(void);",
        "#endif",
        "int nfedge_base_run(const nfedge_input_t *x, const int8_t *image, nfedge_logit_t *logits);",
    ]
    if has_gen:
        h.append("int nfedge_generator_run(const nfedge_input_t *x, nfedge_input_t *fx);")
    h += ["#endif", ""]
    c = ["/* Generated by nfedge.deploy.compile.codegen: do not edit. Operators come from operators.o (tvm.tirx.build). */",
         "#include <math.h>", "#include <stdint.h>", '#include "model.h"', '#include "nfedge_rt.h"', "",
         # The library build (nfedge export, NFEDGE_LIBRARY) takes the arena and workspace from its caller
         # (nfedge_api.c's nfedge_init); the harness's firmware keeps its static buffers.
         "#ifdef NFEDGE_LIBRARY",
         "static uint8_t *nfedge_arena;",
         "void nfedge_model_bind(uint8_t *arena, uint8_t *workspace, size_t workspace_bytes) {",
         "  nfedge_arena = arena;", "  nfedge_workspace_init(workspace, workspace_bytes);", "}",
         "#else",
         f"static uint8_t nfedge_arena[{max(arena_bytes, ALIGN)}] __attribute__((aligned({ALIGN})));",
         f"static uint8_t nfedge_workspace[{max(workspace_bytes, ALIGN)}] __attribute__((aligned({ALIGN})));",
         "", "void nfedge_model_init(void) { nfedge_workspace_init(nfedge_workspace, sizeof(nfedge_workspace)); }",
         "#endif", ""]
    for p in layouts:
        for fname in p.prim_funcs:
            c.append(f"extern int __tvm_ffi_{c_symbol(p.prefix, fname)}(void *, const TVMFFIAny *, int32_t, TVMFFIAny *);")
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
            c.append("int nfedge_base_run(const nfedge_input_t *x, const int8_t *image, nfedge_logit_t *logits) {")
            ptr = {p.inputs[0].key: "(void *)x", p.inputs[1].key: "(void *)image", p.output.key: "(void *)logits"}
        else:
            c.append("int nfedge_generator_run(const nfedge_input_t *x, nfedge_input_t *fx) {")
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
            c.append(f"    if (nfedge_call(__tvm_ffi_{c_symbol(p.prefix, fname)}, t, {n}) != 0) return 1;")
            c.append("  }")
        c += ["  return 0;", "}", ""]
    return "\n".join(h), "\n".join(c)


def memory_ld(t: TargetDescriptor) -> str:
    lines = [f"/* Generated by nfedge.deploy.compile.codegen from {t.source}: do not edit. */", "MEMORY", "{"]
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
