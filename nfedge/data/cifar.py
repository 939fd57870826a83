"""CIFAR-10 / CIFAR-100: the python-pickle folders, read with an unpickler that only rebuilds numpy arrays."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from nfedge.data.config import DATASETS, DataConfig, RawData, require_dir
from nfedge.errors import NfedgeError

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
    root = require_dir(root, title, expected)
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
