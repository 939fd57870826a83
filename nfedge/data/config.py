"""What a dataset is asked for (DataConfig) and the registry of readers: a reader per on-disk format returns
RawData (uint8 images, labels); adding a dataset is one `@DATASETS.register(name)` reader in a module that
nfedge.data.datasets imports."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from nfedge.config import StageConfig, require
from nfedge.errors import NfedgeError
from nfedge.registry import Registry

IMAGE_SIZE = 32  # the side every model in the pipeline sees (after padding / resizing)


class RawData(NamedTuple):
    """What a dataset loader returns: uint8 NCHW images and integer labels, before scaling."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] | None
    root: Path


DATASETS: Registry[Callable[[Path | None, "DataConfig"], RawData]] = Registry("dataset")


@dataclasses.dataclass(frozen=True)
class DataConfig(StageConfig):
    dataset: str = "fashion-mnist"
    root: str | None = None  # the dataset's folder; None = its default location (Fashion-MNIST only)
    pad_to_32: bool = True  # pad 28x28 images to 32x32 with -1 (black), 2 pixels each side
    crop_roi: bool = False  # GTSRB only: crop each image to its CSV's ROI before resizing
    train_limit: int | None = None  # keep at most this many training images (seeded random subset)
    test_limit: int | None = None
    seed: int = 0  # for the subset selection

    def validate(self) -> None:
        require(isinstance(self.dataset, str), "dataset must be a name, e.g. fashion-mnist")
        DATASETS.get(self.dataset)  # unknown name: error listing the known ones
        require(self.root is None or (isinstance(self.root, str) and self.root != ""),
                "data root must be a non-empty path or None")
        require(isinstance(self.pad_to_32, bool), "pad_to_32 must be true or false")
        require(isinstance(self.crop_roi, bool), "crop_roi must be true or false")
        require(not self.crop_roi or self.dataset.lower() == "gtsrb", "crop_roi only applies to the gtsrb dataset")
        for name in ("train_limit", "test_limit"):
            v = getattr(self, name)
            require(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
                    f"{name} must be a positive integer or None, got {v!r}")
        require(isinstance(self.seed, int) and not isinstance(self.seed, bool), "seed must be an integer")

    def absolute(self) -> "DataConfig":
        """This config with an absolute root: what a checkpoint records, so that later stages run from another
        folder (faultrun, evaluate, nfedge run) read the same data."""
        return self if self.root is None else dataclasses.replace(self, root=str(Path(self.root).expanduser().resolve()))

    def check_recorded_root(self, where: str, how: str = "pass --data-root with the data's current path") -> "DataConfig":
        """This config, read from `where` (a checkpoint), if its root exists; else a one-line error saying the path
        came from there and `how` to read the data from elsewhere."""
        if self.root is not None and not Path(self.root).expanduser().exists():
            raise NfedgeError(f"dataset root {self.root} (recorded in {where} when the model was trained or imported) "
                              f"does not exist; {how}")
        return self


def require_dir(root: Path | None, title: str, expected: str) -> Path:
    if root is None:
        raise NfedgeError(f"{title} has no default location; set the data root to its folder ({expected})")
    if not root.is_dir():
        raise NfedgeError(f"{title} folder {root} does not exist (expected {expected})")
    return root
