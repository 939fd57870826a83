"""The planner's validation split: training-set images that trained neither the base model nor its generators.

DESIGN "Operating points": the voltage is searched on a validation split held out of the training images, then
certified on the test set. A DataConfig with a train_limit trains on a seeded subset of the training set
(nfedge.data.datasets: np.random.default_rng(seed).choice(N, train_limit, replace=False), in file order);
`training_indices` reproduces that subset (tests/analysis/test_split.py checks it against load_dataset), and the split
is a seeded draw from the images outside every given subset. A model that trained on the whole training set leaves
nothing to hold out: that is an error naming what to do, never a silent overlap.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np
import torch

from nfedge.data import DataConfig, load_dataset
from nfedge.errors import NfedgeError

SPLIT_STREAM = 0x76616C  # "val": the split's random stream, apart from the subset seeds data configs use


def training_indices(data: DataConfig, n_train: int) -> np.ndarray:
    """Indices into the full training set of the images a model trained with `data` saw (nfedge.data's subset rule)."""
    if data.train_limit is None or data.train_limit >= n_train:
        return np.arange(n_train)
    return np.sort(np.random.default_rng(data.seed).choice(n_train, size=data.train_limit, replace=False))


def _identity(d: DataConfig) -> tuple:
    return (d.dataset.lower(), d.root, d.pad_to_32, d.crop_roi)


def validation_split(data: DataConfig, trained_on: list[DataConfig], images: int, seed: int
                     ) -> tuple[tuple[torch.Tensor, torch.Tensor], dict[str, Any]]:
    """`images` training-set images of `data`'s data set (seeded by `seed`) that none of `trained_on` (the base model's
    and every generator's data configs) trained on; and a record of how they were chosen."""
    if not (isinstance(images, int) and not isinstance(images, bool) and images >= 1):
        raise NfedgeError(f"the validation split needs >= 1 images, got {images!r}")
    for t in trained_on:
        if _identity(t) != _identity(data):
            raise NfedgeError(f"a model trained on data set {t.dataset!r} ({t.root}) and the plan reads {data.dataset!r} "
                              f"({data.root}): cannot tell which training images it saw")
    full, _, _ = load_dataset(dataclasses.replace(data, train_limit=None, test_limit=1))
    x, y = full.tensors
    n = len(x)
    used = np.zeros(n, dtype=bool)
    for t in trained_on:
        used[training_indices(t, n)] = True
    free = np.flatnonzero(~used)
    if images > n:
        raise NfedgeError(f"the validation split of {images} images is larger than the training set ({n} images)")
    if images > free.size:
        raise NfedgeError(f"the validation split of {images} images is larger than the {free.size} training images held "
                          f"out of training (the models trained on {int(used.sum())} of {n}); train with a smaller "
                          "train_limit, or ask for fewer validation images")
    pick = np.sort(np.random.default_rng([seed, SPLIT_STREAM]).choice(free, size=images, replace=False))
    record = {"images": images, "seed": seed, "train_set_images": n, "held_out_images": int(free.size),
              "trained_on": [{"train_limit": t.train_limit, "seed": t.seed} for t in trained_on],
              "indices_sha256": hashlib.sha256(pick.astype("<i8").tobytes()).hexdigest(), "disjoint_from_training": True}
    idx = torch.from_numpy(pick)
    return (x[idx].contiguous(), y[idx].contiguous()), record


def base_training_data(ckpt: dict[str, Any]) -> DataConfig | None:
    """The training images a base checkpoint saw, as a data config: train-base's (its meta holds the epoch history);
    None for an imported or adopted model, whose training images nfedge cannot know."""
    meta = ckpt.get("meta") or {}
    data = (meta.get("config") or {}).get("data")
    if ckpt.get("source") is not None or meta.get("adopted_from") or "history" not in meta or data is None:
        return None
    return DataConfig.from_dict(data)
