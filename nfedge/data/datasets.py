"""Datasets: Fashion-MNIST, CIFAR-10, CIFAR-100, GTSRB and a user's own (folder, npz) as in-memory TensorDatasets.

Every dataset is scaled to [-1, 1] exactly as the NeuralFuse paper does (x / 255 * 2 - 1, no
mean/std normalisation): images are float32 NCHW tensors, labels int64. A user points `root` at a
dataset's usual on-disk layout; a missing or malformed folder is a one-line NfedgeError that says
what was expected.

- fashion-mnist: the gzip'd IDX files of the Debian package dataset-fashion-mnist (the default root).
  28x28 greyscale, padded to 32x32 with -1 (black) when `pad_to_32` is set.
- cifar10 / cifar100: the python-pickle folders cifar-10-batches-py / cifar-100-python (100 fine
  labels). Pickles are read with an unpickler that only rebuilds numpy arrays.
- gtsrb: the official GTSRB/Final_Training/Images/000NN/ folders with their GT-000NN.csv files, and
  the test images with GT-final_test.csv (the labelled one from GTSRB_Final_Test_GT.zip). The
  Kaggle layout (Train/<class>/, Test/ + Test.csv) also works. Images are resized to 32x32 (PIL,
  bilinear with antialiasing, as torchvision's Resize((32, 32)) used by NeuralFuse); they are NOT
  cropped to the ROI unless `crop_roi` is set.
- folder / npz: a user's own data (nfedge.data.folder, nfedge.data.npz; docs/BRING_YOUR_OWN.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from nfedge.data import cifar, fashion_mnist, folder, gtsrb, npz  # noqa: F401 - registers the readers
from nfedge.data.config import DATASETS, IMAGE_SIZE, DataConfig
from nfedge.errors import NfedgeError
from nfedge.fileio import sha256_file


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    root: str
    channels: int
    image_size: tuple[int, int]  # (height, width) of the returned tensors
    num_classes: int
    class_names: tuple[str, ...] | None
    num_train: int
    num_test: int


def list_datasets() -> list[str]:
    return DATASETS.names()


def load_dataset(cfg: DataConfig | None = None) -> tuple[TensorDataset, TensorDataset, DatasetInfo]:
    """Load (train, test, info); each set is a TensorDataset of (float32 NCHW in [-1, 1], int64)."""
    cfg = cfg or DataConfig()
    root = Path(cfg.root).expanduser() if cfg.root is not None else None
    raw = DATASETS.get(cfg.dataset)(root, cfg)
    name = DATASETS.canonical(cfg.dataset)
    train = _finish(raw.x_train, raw.y_train, raw.num_classes, cfg.train_limit, cfg.seed, cfg.pad_to_32, f"{name} train")
    test = _finish(raw.x_test, raw.y_test, raw.num_classes, cfg.test_limit, cfg.seed, cfg.pad_to_32, f"{name} test")
    x = train.tensors[0]
    info = DatasetInfo(name, str(raw.root), x.shape[1], (x.shape[2], x.shape[3]), raw.num_classes,
                       raw.class_names, len(train), len(test))
    return train, test, info


def describe_dataset(train: TensorDataset, test: TensorDataset, info: DatasetInfo) -> list[str]:
    """What was loaded, for the user to check before training on it: one summary line (classes, channels, size,
    images per split), then a warning line if a class has no training image (the model could never learn it)."""
    y = train.tensors[1]
    per_class = torch.bincount(y, minlength=info.num_classes).tolist()
    names = list(info.class_names) if info.class_names else [str(i) for i in range(info.num_classes)]
    shown = ", ".join(names[:10]) + (f", ... (+{len(names) - 10})" if len(names) > 10 else "")
    lines = [f"data: {info.name} from {info.root}: {info.num_classes} classes ({shown}), {info.channels} channel"
             f"{'s' if info.channels > 1 else ''}, {info.image_size[0]}x{info.image_size[1]}; {info.num_train} training "
             f"images ({min(per_class)}..{max(per_class)} per class), {info.num_test} test images"]
    empty = [names[i] for i, n in enumerate(per_class) if n == 0]
    if empty:
        lines.append(f"warning: {len(empty)} class{'es' if len(empty) > 1 else ''} with no training image: "
                     f"{', '.join(empty)} (the model cannot learn {'them' if len(empty) > 1 else 'it'})")
    return lines


def scale_images(x: np.ndarray) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1]: 0 -> -1 and 255 -> 1 exactly (x / 255 * 2 - 1)."""
    f = np.asarray(x, dtype=np.uint8).astype(np.float32)
    return torch.from_numpy(f / np.float32(255) * np.float32(2) - np.float32(1))


def _finish(x: np.ndarray, y: np.ndarray, num_classes: int, limit: int | None, seed: int, pad: bool, what: str) -> TensorDataset:
    if len(x) != len(y):
        raise NfedgeError(f"{what}: {len(x)} images but {len(y)} labels")
    if len(x) == 0:
        raise NfedgeError(f"{what}: no images")
    y = np.asarray(y, dtype=np.int64)
    if y.min() < 0 or y.max() >= num_classes:
        raise NfedgeError(f"{what}: labels span {y.min()}..{y.max()}, expected 0..{num_classes - 1}")
    if limit is not None and limit < len(x):
        # A seeded random subset (not the first N: some files are sorted by class), kept in file order.
        keep = np.sort(np.random.default_rng(seed).choice(len(x), size=limit, replace=False))
        x, y = x[keep], y[keep]
    images = scale_images(x)
    h, w = images.shape[2:]
    if pad and h <= IMAGE_SIZE and w <= IMAGE_SIZE and (h, w) != (IMAGE_SIZE, IMAGE_SIZE):
        top, left = (IMAGE_SIZE - h) // 2, (IMAGE_SIZE - w) // 2
        images = torch.nn.functional.pad(images, (left, IMAGE_SIZE - w - left, top, IMAGE_SIZE - h - top), value=-1.0)
    return TensorDataset(images.contiguous(), torch.tensor(y))


USER_FORMATS = ("folder", "npz")  # a user's files: their content, not their name, says what the data is


def content_digest(cfg: DataConfig) -> str | None:
    """sha256 over every file of a user's data set (folder, npz): a stage cache keyed on it re-runs when a file
    is added, removed or changed under the same root. None for the named data sets (fixed releases)."""
    if cfg.dataset.lower() not in USER_FORMATS or cfg.root is None:
        return None
    root = Path(cfg.root).expanduser()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root) if f != root else f.name}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def calibration_images(cfg: DataConfig, n: int, seed: int = 0) -> torch.Tensor:
    """A seeded subset of n training images (float32 NCHW in [-1, 1]): what integer mode calibrates on."""
    train, _, _ = load_dataset(dataclasses.replace(cfg, train_limit=n, test_limit=1, seed=seed))
    return train.tensors[0]
