"""Datasets: Fashion-MNIST, CIFAR-10, CIFAR-100 and GTSRB as in-memory TensorDatasets.

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
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import pickle
import struct
import zlib
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch.utils.data import TensorDataset

from nfedge.config import StageConfig, require
from nfedge.errors import NfedgeError
from nfedge.registry import Registry

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
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


def _require_dir(root: Path | None, title: str, expected: str) -> Path:
    if root is None:
        raise NfedgeError(f"{title} has no default location; set the data root to its folder ({expected})")
    if not root.is_dir():
        raise NfedgeError(f"{title} folder {root} does not exist (expected {expected})")
    return root


# --- Fashion-MNIST: gzip'd IDX files ---------------------------------------------------------------

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, rows, cols)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N)
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an IDX file (gzip'd if it ends in .gz): a big-endian magic, big-endian uint32 dims, data."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise NfedgeError(f"cannot read IDX file {path}: {e}") from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    found = struct.unpack(">I", data[:4])[0] if len(data) >= 4 else None
    if found is not None and found != magic:
        raise NfedgeError(f"{path} is not an IDX file of {ndim}-d unsigned bytes (magic 0x{found:08x}, expected 0x{magic:08x})")
    if len(data) < header:
        raise NfedgeError(f"{path} is truncated: {len(data)} bytes, shorter than its IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != int(np.prod(dims)):
        raise NfedgeError(f"{path}: header says {'x'.join(map(str, dims))} but it holds {len(data) - header} data bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _idx_file(root: Path, name: str) -> Path:
    for p in (root / f"{name}.gz", root / name):
        if p.is_file():
            return p
    raise NfedgeError(f"Fashion-MNIST folder {root} has no {name}.gz (expected train-images-idx3-ubyte.gz, "
                      "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)")


@DATASETS.register("fashion-mnist")
def _load_fashion_mnist(root: Path | None, cfg: DataConfig) -> RawData:
    root = root or Path(FASHION_MNIST_ROOT)
    if not root.is_dir():
        hint = " (install the Debian package dataset-fashion-mnist)" if str(root) == FASHION_MNIST_ROOT else ""
        raise NfedgeError(f"Fashion-MNIST folder {root} does not exist{hint}")
    sets = []
    for split in ("train", "t10k"):
        x = read_idx(_idx_file(root, f"{split}-images-idx3-ubyte"), IDX_IMAGES_MAGIC)
        y = read_idx(_idx_file(root, f"{split}-labels-idx1-ubyte"), IDX_LABELS_MAGIC)
        if x.shape[1:] != (28, 28):
            raise NfedgeError(f"Fashion-MNIST {split} images in {root} are {x.shape[1]}x{x.shape[2]}, expected 28x28")
        if len(x) != len(y):
            raise NfedgeError(f"Fashion-MNIST {split} files in {root} disagree: {len(x)} images but {len(y)} labels")
        sets += [x[:, None], y]  # add the channel axis: N x 1 x 28 x 28
    return RawData(*sets, num_classes=10, class_names=FASHION_MNIST_CLASSES, root=root)


# --- CIFAR-10 / CIFAR-100: python pickles -----------------------------------------------------------

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickle only dicts, lists, bytes and numpy arrays: a data folder must not run code."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_pickle(path: Path, title: str) -> dict:
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="bytes").load()  # the files were written by Python 2
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError, KeyError) as e:
        raise NfedgeError(f"{path} is not a {title} pickle ({e})") from None
    if not isinstance(d, dict):
        raise NfedgeError(f"{path} is not a {title} pickle (holds a {type(d).__name__}, expected a dict)")
    return d


def _cifar_batch(path: Path, label_key: bytes, title: str) -> tuple[np.ndarray, np.ndarray]:
    d = _read_pickle(path, title)
    for key in (b"data", label_key):
        if key not in d:
            raise NfedgeError(f"{path} has no {key.decode()!r} entry (a {title} batch has 'data' and {label_key.decode()!r})")
    x, y = np.asarray(d[b"data"]), np.asarray(d[label_key])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise NfedgeError(f"{path}: 'data' is {x.dtype} {x.shape}, expected uint8 N x 3072")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise NfedgeError(f"{path}: {label_key.decode()!r} should be {len(x)} integers, got {y.dtype} {y.shape}")
    return x.reshape(-1, 3, 32, 32), y  # rows are 1024 red, 1024 green, 1024 blue values (row-major)


def _cifar_names(path: Path, key: bytes, title: str, n: int) -> tuple[str, ...] | None:
    if not path.is_file():
        return None
    names = _read_pickle(path, title).get(key)
    if not isinstance(names, list) or len(names) != n:
        return None
    return tuple(s.decode() if isinstance(s, bytes) else str(s) for s in names)


def _load_cifar(root: Path | None, title: str, folder: str, train_files: list[str], test_file: str,
                label_key: bytes, meta: tuple[str, bytes], num_classes: int) -> RawData:
    expected = f"the python-pickle layout {folder}/{{{','.join(train_files + [test_file])}}}"
    root = _require_dir(root, title, expected)
    if not (root / train_files[0]).exists() and (root / folder).is_dir():
        root = root / folder  # pointed at the folder that holds the extracted archive
    missing = [f for f in train_files + [test_file] if not (root / f).is_file()]
    if missing:
        raise NfedgeError(f"{title} folder {root} has no {missing[0]} (expected {expected})")
    parts = [_cifar_batch(root / f, label_key, title) for f in train_files]
    x_test, y_test = _cifar_batch(root / test_file, label_key, title)
    names = _cifar_names(root / meta[0], meta[1], title, num_classes)
    return RawData(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                   x_test, y_test, num_classes, names, root)


@DATASETS.register("cifar10")
def _load_cifar10(root: Path | None, cfg: DataConfig) -> RawData:
    raw = _load_cifar(root, "CIFAR-10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                      "test_batch", b"labels", ("batches.meta", b"label_names"), 10)
    return raw._replace(class_names=raw.class_names or CIFAR10_CLASSES)


@DATASETS.register("cifar100")
def _load_cifar100(root: Path | None, cfg: DataConfig) -> RawData:
    return _load_cifar(root, "CIFAR-100", "cifar-100-python", ["train"], "test", b"fine_labels",
                       ("meta", b"fine_label_names"), 100)


# --- GTSRB: class folders of PPM/PNG images with semicolon-separated GT CSVs --------------------------

GTSRB_CLASSES = 43
GTSRB_EXPECTED = ("GTSRB/Final_Training/Images/000NN/ with GT-000NN.csv and GTSRB/Final_Test/Images/ with "
                  "GT-final_test.csv, or Train/<class>/ and Test/ with Test.csv")
_TRAIN_DIRS = ("GTSRB/Final_Training/Images", "Final_Training/Images", "GTSRB/Training", "Train", "Training")
_TEST_DIRS = ("GTSRB/Final_Test/Images", "Final_Test/Images", "Test")
_TEST_CSVS = ("GT-final_test.csv", "Test.csv")
_IMAGE_SUFFIXES = (".ppm", ".png", ".jpg", ".jpeg")


def _read_gt_csv(path: Path) -> list[tuple[str, int, tuple[int, int, int, int] | None]]:
    """Rows (file name, class id, ROI x1, y1, x2, y2 or None) of a GTSRB ground-truth CSV."""
    text = path.read_text(encoding="utf-8-sig")
    first = text.split("\n", 1)[0]
    rows = list(csv.DictReader(text.splitlines(), delimiter=";" if ";" in first else ","))
    fields = set(rows[0]) if rows else set(first.replace(";", ",").split(","))
    name_col = "Filename" if "Filename" in fields else "Path"
    if name_col not in fields or "ClassId" not in fields:
        raise NfedgeError(f"{path} has no Filename and ClassId columns (expected Filename;Width;Height;"
                          "Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId; GT-final_test.test.csv has no labels)")
    roi_cols = ("Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2")
    out = []
    for i, r in enumerate(rows, start=2):
        try:
            roi = tuple(int(r[c]) for c in roi_cols) if all(c in fields for c in roi_cols) else None
            out.append((Path(r[name_col].strip()).name, int(r["ClassId"]), roi))
        except (TypeError, ValueError, AttributeError):
            raise NfedgeError(f"{path} line {i} is malformed: {';'.join(map(str, r.values()))}") from None
    return out


def _read_image(path: Path, roi: tuple[int, int, int, int] | None) -> np.ndarray:
    """One image as uint8 3 x 32 x 32; `roi` (inclusive corners x1, y1, x2, y2) crops it first."""
    try:
        from PIL import Image  # pillow comes with matplotlib
    except ImportError:
        raise NfedgeError("reading GTSRB needs pillow (python -m pip install pillow)") from None
    if not path.is_file():
        raise NfedgeError(f"GTSRB image {path} is missing (named in its folder's CSV)")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if roi is not None:
                x1, y1, x2, y2 = roi
                if not (0 <= x1 < x2 < im.width and 0 <= y1 < y2 < im.height):
                    raise NfedgeError(f"GTSRB ROI {roi} lies outside {path} ({im.width}x{im.height})")
                im = im.crop((x1, y1, x2 + 1, y2 + 1))
            im = im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)  # antialiased when shrinking
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except OSError as e:  # includes PIL.UnidentifiedImageError
        raise NfedgeError(f"cannot read GTSRB image {path}: {e}") from None


def _gtsrb_train(train_dir: Path, crop: bool) -> tuple[np.ndarray, np.ndarray]:
    class_dirs = sorted(d for d in train_dir.iterdir() if d.is_dir() and d.name.isdigit())
    if not class_dirs:
        raise NfedgeError(f"GTSRB training folder {train_dir} has no class folders (expected 00000..00042)")
    images, labels = [], []
    for d in class_dirs:
        gt = d / f"GT-{d.name}.csv"
        if gt.is_file():
            items = _read_gt_csv(gt)
        elif crop:
            raise NfedgeError(f"GTSRB class folder {d} has no {gt.name}, needed for crop_roi")
        else:  # Kaggle layout: no per-class CSV, the folder name is the class
            items = [(p.name, int(d.name), None) for p in sorted(d.iterdir()) if p.suffix.lower() in _IMAGE_SUFFIXES]
        for name, label, roi in items:
            images.append(_read_image(d / name, roi if crop else None))
            labels.append(label)
    if not images:
        raise NfedgeError(f"GTSRB training folder {train_dir} has no images (.ppm or .png)")
    return np.stack(images), np.array(labels, dtype=np.int64)


def _gtsrb_test(root: Path, crop: bool) -> tuple[np.ndarray, np.ndarray]:
    test_dir = next((root / d for d in _TEST_DIRS if (root / d).is_dir()), None)
    if test_dir is None:
        raise NfedgeError(f"GTSRB folder {root} has no test images (expected {GTSRB_EXPECTED})")
    places = [test_dir, *(p for p in test_dir.parents if p.is_relative_to(root))]  # nearest first
    gt = next((p / n for p in places for n in _TEST_CSVS if (p / n).is_file()), None)
    if gt is None:
        raise NfedgeError(f"GTSRB folder {root} has no labelled test CSV GT-final_test.csv or Test.csv "
                          f"(looked in {', '.join(map(str, places))})")
    items = _read_gt_csv(gt)
    if not items:
        raise NfedgeError(f"GTSRB test CSV {gt} lists no images")
    images = [_read_image(test_dir / name, roi if crop else None) for name, _, roi in items]
    return np.stack(images), np.array([label for _, label, _ in items], dtype=np.int64)


@DATASETS.register("gtsrb")
def _load_gtsrb(root: Path | None, cfg: DataConfig) -> RawData:
    root = _require_dir(root, "GTSRB", GTSRB_EXPECTED)
    train_dir = next((root / d for d in _TRAIN_DIRS if (root / d).is_dir()), None)
    if train_dir is None:
        raise NfedgeError(f"GTSRB folder {root} has no training images (expected {GTSRB_EXPECTED})")
    x_train, y_train = _gtsrb_train(train_dir, cfg.crop_roi)
    x_test, y_test = _gtsrb_test(root, cfg.crop_roi)
    return RawData(x_train, y_train, x_test, y_test, GTSRB_CLASSES, None, root)
