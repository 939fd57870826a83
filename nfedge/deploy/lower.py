"""torch -> Relax -> fused PrimFuncs: the lowering every target shares.

ImageWeightedModel(x, image) and NeuralFuseFront(x) -> torch.export -> Relax (from_exported_program) ->
DecomposeOpsForInference, LegalizeOps, FuseOps, FuseTIR (+ an optional "inline" schedule that folds the
fused element-wise epilogues into their producer loops).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nfedge.deploy.export import ImageWeightedModel, NeuralFuseFront, image_tensor
from nfedge.errors import NfedgeError
from nfedge.sram.image import WeightImage

__all__ = ["SCHEDULES", "relax_graphs", "lower_relax", "apply_inline_schedule"]

SCHEDULES = ("none", "inline")


def relax_graphs(input_shape: tuple[int, int, int], base_model: nn.Module, image: WeightImage,
                 generator: nn.Module | None, batch: int = 1) -> dict[str, Any]:
    """The Relax programs a bundle compiles: "base" (x, image) -> logits and, with a generator,
    "generator" x -> F(x) = clip(x + G(x), -1, 1); x is [batch, C, H, W] float32."""
    x = torch.zeros((batch, *input_shape), dtype=torch.float32)
    mods = {"base": _export_relax(ImageWeightedModel(base_model, image.manifest), (x, image_tensor(image)))}
    if generator is not None:
        mods["generator"] = _export_relax(NeuralFuseFront(generator), (x,))
    return mods


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
