"""torch -> Relax -> fused PrimFuncs: the lowering every target shares.

ImageWeightedModel(x, image) and NeuralFuseFront(x) -> torch.export -> Relax (from_exported_program) ->
DecomposeOpsForInference, LegalizeOps, FuseOps, FuseTIR (+ an optional "inline" schedule that folds the
fused element-wise epilogues into their producer loops).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from nfedge.deploy.compile.export import ImageWeightedModel, NeuralFuseFront, image_tensor
from nfedge.deploy.compile.int8_schedule import schedule_int8_kernels
from nfedge.errors import NfedgeError
from nfedge.sram.image import WeightImage

__all__ = ["SCHEDULES", "relax_graphs", "lower_relax", "apply_inline_schedule", "inline_primfunc",
           "ScheduleWarning"]

SCHEDULES = ("none", "inline")


def relax_graphs(input_shape: tuple[int, int, int], base_model: nn.Module, image: WeightImage,
                 generator: nn.Module | None, batch: int = 1) -> dict[str, Any]:
    """The Relax modules a bundle compiles: "base" (x, image) -> logits and, with a generator,
    "generator" x -> F(x) = clip(x + G(x), -1, 1); x is [batch, C, H, W] float32."""
    x = torch.zeros((batch, *input_shape), dtype=torch.float32)
    mods = {"base": _export_relax(ImageWeightedModel(base_model, image.manifest), (x, image_tensor(image)))}
    if generator is not None:
        mods["generator"] = _export_relax(NeuralFuseFront(generator), (x,))
    return mods


def _export_relax(module: nn.Module, args: tuple[torch.Tensor, ...]):
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
    mod = schedule_int8_kernels(mod, target)  # integer mode's conv kernels, for the target's ISA
    if schedule == "inline":
        mod = apply_inline_schedule(mod)
    return mod


class ScheduleWarning(UserWarning):
    """The inline schedule failed for one PrimFunc, which is then built unscheduled (correct, slower).

    A user sees it on stderr (Python shows UserWarnings by default); the test suite turns it into an
    error (pyproject.toml's filterwarnings matches the message prefix), so a schedule that stops working
    fails the tests instead of silently costing speed (GitHub issue #11)."""


def apply_inline_schedule(mod):
    """A minimal CPU schedule for unscheduled fused PrimFuncs: inline every injective intermediate
    (BatchNorm arithmetic, casts, reshapes) and compute the element-wise epilogue of a reduction (conv,
    matmul, mean) right after each output element's reduction, so the fused operator keeps one scalar
    instead of full-size intermediate tensors. Padding before a reduction stays a buffer (see
    `inline_primfunc`). PrimFuncs already scheduled (by a tuning database) are left alone.

    A PrimFunc whose schedule fails as a whole (TVM refuses it outright) keeps its unscheduled form and
    gets a ScheduleWarning naming it; an error of this code itself (AttributeError, TypeError, ...)
    propagates."""
    import tvm

    new_funcs = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or (func.attrs and func.attrs.get("tirx.is_scheduled", False)):
            continue
        try:
            scheduled, _ = inline_primfunc(func)
        except _schedule_failures() as e:
            warnings.warn(f"{_WARNING_PREFIX} for {gv.name_hint}: {type(e).__name__}: {_first_line(e)}; "
                          "it is built unscheduled (correct, slower)", ScheduleWarning, stacklevel=2)
            continue
        new_funcs[gv] = scheduled
    for gv, f in new_funcs.items():
        mod[gv] = f
    return mod


_WARNING_PREFIX = "inline schedule failed"  # pyproject.toml's filterwarnings matches this prefix: keep both


def inline_primfunc(func):
    """(scheduled PrimFunc, the transformations applied, e.g. ["compute_inline T_add", ...]).

    The list is what the schedule claims to have done: empty means the function came back unchanged
    (nothing it could fold, e.g. a single block). Raises TVM's ScheduleError or InternalError when TVM refuses the
    function as a whole; refusals of single steps (a block that cannot be inlined) are skipped."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    steps = _inline_all(sch)
    return sch.mod["main"], steps


def _schedule_failures() -> tuple[type[BaseException], ...]:
    """What TVM raises when it refuses a schedule: ScheduleError (a primitive's precondition does not
    hold) and InternalError (an internal check failed). Both are TVM's, never a bug of this module;
    TVM maps its other errors onto Python's builtins (AttributeError, IndexError, ...), which are not
    caught here so that a bug here is not mistaken for a refusal."""
    import tvm
    from tvm import s_tir

    return (s_tir.ScheduleError, tvm.error.InternalError)


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:200] if s else ""


def _inline_all(sch) -> list[str]:
    """The three passes of the inline schedule on `sch`, in order; returns the transformations it applied."""
    steps = _inline_injective(sch)
    steps += _inline_elementwise_consumers(sch)  # on what pass 1 left
    steps += _epilogues_after_reductions(sch)  # on what passes 1 and 2 left
    return steps


def _refused():
    """The one error a refused schedule step raises; anything else propagates."""
    from tvm import s_tir

    return s_tir.ScheduleError


def _blocks(sch) -> list:
    return sch.get_child_blocks(sch.get_sblock("root"))


def _name(sch, b) -> str:
    return sch.get(b).name_hint


def _is_reduction(sch, b) -> bool:
    return any(int(iv.iter_type) != 0 for iv in sch.get(b).iter_vars)  # IterVar.DataPar == 0


def _write_shape(sch, b) -> list[int] | None:
    w = sch.get(b).writes  # TensorRegion in TVM 0.27: .source is the Buffer (.buffer before)
    return [int(d) for d in w[0].source.shape] if len(w) == 1 else None


def _inline_injective(sch) -> list[str]:
    """1. Inline injective intermediates, except into a reduction (padding stays a buffer: inlined, every
    multiply-accumulate would pay the bounds check). One block at a time, the block list read afresh after each,
    until nothing more inlines (inlining changes the list)."""
    refused = _refused()
    steps: list[str] = []
    changed = True
    while changed:
        changed = False
        for b in _blocks(sch):
            if any(_is_reduction(sch, c) for c in sch.get_consumers(b)):
                continue
            n = _name(sch, b)
            try:
                sch.compute_inline(b)
            except refused:  # an output block, a reduction, a block read by several others
                continue
            steps.append(f"compute_inline {n}")
            changed = True
            break
    return steps


def _inline_elementwise_consumers(sch) -> list[str]:
    """2. Element-wise consumers into their producers (spatial producers), to a fixed point as in pass 1."""
    refused = _refused()
    steps: list[str] = []
    changed = True
    while changed:
        changed = False
        for b in _blocks(sch):
            n = _name(sch, b)
            try:
                sch.reverse_compute_inline(b)
            except refused:  # its producer is a reduction (pass 3), or it is not element-wise
                continue
            steps.append(f"reverse_compute_inline {n}")
            changed = True
            break
    return steps


def _epilogues_after_reductions(sch) -> list[str]:
    """3. An epilogue after a reduction: compute it per output element, right after the reduction (under the
    reduction's innermost spatial loop). One pass over the block list as it stands after passes 1 and 2."""
    refused = _refused()
    steps: list[str] = []
    bl = _blocks(sch)
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
        consumer = bl[i + 1]
        shape = _write_shape(sch, b)
        if _is_reduction(sch, consumer) or shape is None or shape != _write_shape(sch, consumer):
            continue
        if not any(sch.get(p).same_as(sch.get(b)) for p in sch.get_producers(consumer)):
            continue
        n = _name(sch, consumer)
        try:
            sch.reverse_compute_at(consumer, loops[n_spatial - 1], preserve_unit_loops=True)
        except refused:
            continue
        steps.append(f"reverse_compute_at {n} under {_name(sch, b)}")
    return steps
