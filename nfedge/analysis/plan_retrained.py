"""A retrained base model as a planner option (issue #25 item 3): allowed only where the user may change the
deployed model, which is not NeuralFuse's setting, so it is reported beside the answer without retraining, never
in place of it (docs/PLANNER.md "Retrained bases").

A retrained model (`nfedge train-base --robust clip|randbet`, nfedge.train.robust) has the original's architecture
and precision, so it reads the same cells with the same accesses: its energy is the base option's, on the same
energy model. It is planned as its own plan, at the original plan's floor (absolute), on the same validation and test
images and the same search and fresh chips, with no other protection; its base row joins the original plan as
option "<label>" of kind "retrained", and each fixed-voltage ranking takes its row too. The plan's "winner" (and each
fixed voltage's "best_meeting_floor") stays the best option without retraining; "winner_with_retraining" (and
"best_meeting_floor_with_retraining") is the best of all.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from nfedge.analysis.plan import PlanConfig, plan_operating_points, rank_at_voltage
from nfedge.analysis.split import base_training_data
from nfedge.config import require
from nfedge.data import DataConfig
from nfedge.executor import Executor
from nfedge.progress import DEFAULT, Progress
from nfedge.sram.image import WeightImage, build_image
from nfedge.train.checkpoint import load_checkpoint

RETRAINED = "retrained"


def retrained_label(meta: dict[str, Any], fallback: str) -> str:
    """The option's name: "base <method>" for a `train-base --robust` checkpoint, else "retrained <fallback>"."""
    robust = ((meta.get("meta") or {}).get("config") or {}).get("robust", "none")
    return f"base {robust}" if robust != "none" else f"retrained {fallback}"


def retrained_image(model: nn.Module, image: WeightImage) -> WeightImage:
    """The retrained model's clean image at the original image's bits and granularity; the same weight tensors and
    shapes are required (the same cells and accesses: one energy model)."""
    per_channel = any(len(t.scales) > 1 for t in image.manifest.tensors)
    new = build_image(model, image.manifest.bits, per_channel)
    shapes = [(t.name, tuple(t.shape)) for t in image.manifest.tensors]
    require([(t.name, tuple(t.shape)) for t in new.manifest.tensors] == shapes,
            "a retrained base must have the original's weight tensors and shapes (the same cells, one energy model)")
    return new


class Retrained(NamedTuple):
    label: str
    model: nn.Module
    image: WeightImage  # at the original image's bits and granularity (retrained_image)
    trained_on: DataConfig | None  # its training images (None: not trained by nfedge, unknown)
    path: str


def load_retrained(paths: list[str], image: WeightImage, classes: int) -> list[Retrained]:
    """Each retrained base checkpoint (read as data, weights_only) with its option label and clean image."""
    out: list[Retrained] = []
    for path in paths:
        model, meta = load_checkpoint(path)
        require(int(meta["num_classes"]) == classes,
                f"retrained base {path} has {meta['num_classes']} classes, the base {classes}")
        label = retrained_label(meta, Path(path).stem)
        if label in {r.label for r in out}:
            label = f"retrained {path}"
        out.append(Retrained(label, model, retrained_image(model, image), base_training_data(meta), str(path)))
    return out


def plan_retrained(plan: dict[str, Any], label: str, model: nn.Module, image: WeightImage,
                   test: tuple[torch.Tensor, torch.Tensor], cfg: PlanConfig, validation=None, split_record=None,
                   executor: Executor | None = None, progress: Progress = DEFAULT, score=None, val_score=None
                   ) -> dict[str, Any]:
    """`plan` (a plan_operating_points result made with `cfg`) with the retrained `model` (reading `image`, from
    retrained_image) added as option `label`; the merged plan is returned, `plan` is left as it was. `score` /
    `val_score`: ImageScorers of `model` on the test and validation images, shared between plans."""
    taken = {r["option"] for r in plan["options"]}
    require(label not in taken, f"a retrained base cannot be labelled {label!r} (an option's name)")
    sub_cfg = dataclasses.replace(cfg, floor=plan["floor"], ecc=False, parity=False, msb=(), fewer_bits=(),
                                  generator_msb=0, curve=False)
    progress.info(f"plan: {label} (retrained base), at the floor {plan['floor']:.2f}%")
    sub = plan_operating_points(model, image, test, sub_cfg, progress=progress, validation=validation,
                                split_record=split_record, executor=executor, floor_above_ca=True, score=score,
                                val_score=val_score)
    return merge_retrained(plan, label, sub)


def merge_retrained(plan: dict[str, Any], label: str, sub: dict[str, Any]) -> dict[str, Any]:
    """`plan` with the base row of `sub` (a plan of the retrained model at plan's floor) as option `label`."""
    require(sub["floor"] == plan["floor"] and sub["seeds"] == plan["seeds"] and sub["samples"] == plan["samples"],
            "a retrained base's plan must use the original plan's floor, chips and images")
    out = {**plan, "options": [*plan["options"]], "fixed_voltages": []}
    row = {**sub["options"][0], "option": label, "kind": RETRAINED, "image_sha256": sub["image_sha256"]}
    out["options"].append(row)
    for f, g in zip(plan["fixed_voltages"], sub["fixed_voltages"]):
        rows, best = rank_at_voltage([*f["options"], {**g["options"][0], "option": label, "kind": RETRAINED}])
        out["fixed_voltages"].append({**f, "options": rows, "best_meeting_floor_with_retraining": best})
    certified = [r for r in out["options"] if r["certified"]]
    out["winner_with_retraining"] = max(certified, key=lambda r: r["energy_saving"])["option"] if certified else None
    out["retrained"] = {**plan.get("retrained", {}),
                        label: {"image_sha256": sub["image_sha256"], "clean": sub["clean"], "scored_images":
                                sub["scored_images"]}}
    return out
