"""`npz`: a user's own arrays in one numpy .npz archive (np.savez / np.savez_compressed).

Arrays (others are ignored):
- `x_train`, `x_test`: uint8 images, N x H x W (grey) or N x H x W x C with C = 1 or 3; both splits the same
  H x W and C.
- `y_train`, `y_test`: integer labels 0..K-1, shape N or N x 1 (keras' CIFAR arrays).
- `class_names` (optional): a 1-d string array of the K class names. Without it K = the largest label + 1.

The data root is the .npz file itself, or a folder holding exactly one .npz file. Image size: 32x32 is kept;
28x28 (the MNIST family, e.g. keras' mnist.npz and fashion_mnist arrays) is treated exactly as the
fashion-mnist reader treats its images, padded to 32x32 with black when `pad_to_32` is set (the default) and
kept at 28x28 otherwise; any other size is resized to 32x32 like the `folder` format (PIL bilinear, antialiased).

The archive is untrusted input: it is read with allow_pickle=False (an object array is an error, never
unpickled), and a folder's .npz must not be a symlink out of that folder. Malformed arrays are a one-line
NfedgeError naming the file and the array.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from nfedge.data.config import DATASETS, IMAGE_SIZE, DataConfig, RawData
from nfedge.data.folder import resize_to_input, resolve_inside, shown
from nfedge.errors import NfedgeError

NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
NPZ_EXPECTED = "an .npz file (or a folder with exactly one) holding x_train, y_train, x_test, y_test"
PADDED_SIZE = (28, 28)  # the fashion-mnist size: padded (pad_to_32) instead of resized, as that reader does

_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)  # corrupt, truncated, pickled


def npz_file(root: Path | None) -> Path:
    """The archive a data root names: the file itself, or the one .npz inside a folder."""
    if root is None:
        raise NfedgeError(f"the npz dataset has no default location; set the data root to {NPZ_EXPECTED}")
    if root.is_file():
        return root
    if not root.is_dir():
        raise NfedgeError(f"npz dataset {shown(root)} does not exist (expected {NPZ_EXPECTED})")
    found = sorted(p for p in root.iterdir() if p.suffix.lower() == ".npz" and not p.name.startswith("."))
    if len(found) != 1:
        names = ", ".join(shown(p.name) for p in found) or "none"
        raise NfedgeError(f"npz dataset folder {shown(root)} must hold exactly one .npz file, "
                          f"found {len(found)} ({names})")
    real = resolve_inside(found[0], root.resolve(), "npz file")
    if not real.is_file():
        raise NfedgeError(f"npz file {shown(found[0])} is not a regular file")
    return found[0]


def _array(npz, key: str, path: Path) -> np.ndarray:
    try:
        return npz[key]
    except _READ_ERRORS as e:  # an object array (pickle refused), a bad CRC, truncated data
        detail = (str(e).splitlines() or [type(e).__name__])[0]
        raise NfedgeError(f"cannot read array {key} of {shown(path)}: {detail}") from None


def _images(x: np.ndarray, key: str, path: Path) -> np.ndarray:
    """uint8 N x H x W x C (C = 1 or 3) from N x H x W or N x H x W x C."""
    if x.dtype != np.uint8:
        raise NfedgeError(f"{key} in {shown(path)} is {x.dtype}, expected uint8 pixels 0..255")
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[3] in (1, 3))):
        raise NfedgeError(f"{key} in {shown(path)} has shape {x.shape}, expected N x H x W (grey) or N x H x W x C "
                          "with C = 1 or 3 (channels last)")
    if min(x.shape) == 0:
        raise NfedgeError(f"{key} in {shown(path)} has shape {x.shape}: no images")
    return x[..., None] if x.ndim == 3 else x


def _labels(y: np.ndarray, n: int, key: str, path: Path) -> np.ndarray:
    if y.dtype.kind not in "iu":  # bool, float, string: not class indices
        raise NfedgeError(f"{key} in {shown(path)} is {y.dtype}, expected integer labels 0..K-1")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise NfedgeError(f"{key} in {shown(path)} has shape {y.shape}, expected N or N x 1 labels")
    if len(y) != n:
        images = "x_" + key[2:]
        raise NfedgeError(f"{shown(path)}: {images} has {n} images but {key} has {len(y)} labels")
    if y.min() < 0:
        raise NfedgeError(f"{key} in {shown(path)} has a negative label {y.min()}, expected 0..K-1")
    return y


def _class_names(npz, path: Path) -> tuple[str, ...] | None:
    if "class_names" not in npz.files:
        return None
    names = _array(npz, "class_names", path)
    if names.dtype.kind != "U" or names.ndim != 1 or len(names) == 0:
        raise NfedgeError(f"class_names in {shown(path)} is {names.dtype} of shape {names.shape}, expected a 1-d "
                          "string array such as np.array(['cat', 'dog'])")
    return tuple(str(n) for n in names)


def _to_input_size(x: np.ndarray) -> np.ndarray:
    """N x H x W x C -> N x C x H' x W': 32x32 and 28x28 (padded later, in load_dataset) as they are, else resized."""
    if x.shape[1:3] not in ((IMAGE_SIZE, IMAGE_SIZE), PADDED_SIZE):
        grey = x.shape[3] == 1
        x = np.stack([resize_to_input(im[..., 0] if grey else im) for im in x])
        x = x[..., None] if grey else x
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _read_arrays(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], tuple[str, ...] | None]:
    """({x_train, x_test} as N x H x W x C, {y_train, y_test} as N, class names or None), checked one by one."""
    try:
        with open(path, "rb") as f:  # opened here: np.load leaks the handle it opens when the file is no archive
            return _read_archive(f, path)
    except OSError as e:  # opening it (reading errors are NfedgeErrors by now)
        raise NfedgeError(f"cannot read npz file {shown(path)}: {e.strerror or type(e).__name__}") from None


def _read_archive(f, path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], tuple[str, ...] | None]:
    try:
        npz = np.load(f, allow_pickle=False)
    except _READ_ERRORS as e:  # not a zip, a pickle (refused), an empty file
        detail = (str(e).splitlines() or [type(e).__name__])[0]
        if "pickle" in detail.lower():  # numpy's wording differs between versions: say it in ours
            detail = "This file contains pickled (object) data, which nfedge never unpickles"
        raise NfedgeError(f"cannot read npz file {shown(path)}: {detail}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise NfedgeError(f"{shown(path)} is a single .npy array, expected an .npz archive ({NPZ_EXPECTED})")
    with npz:
        missing = [k for k in NPZ_ARRAYS if k not in npz.files]
        if missing:
            raise NfedgeError(f"{shown(path)} has no array {', '.join(missing)} (it holds: "
                              f"{', '.join(map(shown, npz.files)) or 'nothing'}; expected {', '.join(NPZ_ARRAYS)})")
        xs = {k: _images(_array(npz, k, path), k, path) for k in ("x_train", "x_test")}
        ys = {k: _labels(_array(npz, k, path), len(xs["x" + k[1:]]), k, path) for k in ("y_train", "y_test")}
        return xs, ys, _class_names(npz, path)


@DATASETS.register("npz")
def _load_npz(root: Path | None, cfg: DataConfig) -> RawData:
    path = npz_file(root)
    xs, ys, names = _read_arrays(path)
    a, b = xs["x_train"].shape[1:], xs["x_test"].shape[1:]
    if a != b:
        raise NfedgeError(f"{shown(path)}: x_train images are {'x'.join(map(str, a))} (H x W x C) but x_test's are "
                          f"{'x'.join(map(str, b))}; both splits need the same size and channels")
    top = max(int(ys["y_train"].max()), int(ys["y_test"].max()))
    num_classes = len(names) if names is not None else top + 1
    if top >= num_classes:
        key = "y_train" if int(ys["y_train"].max()) == top else "y_test"
        raise NfedgeError(f"{key} in {shown(path)} has label {top} but class_names lists {num_classes} classes "
                          f"(labels 0..{num_classes - 1})")
    return RawData(_to_input_size(xs["x_train"]), ys["y_train"].astype(np.int64), _to_input_size(xs["x_test"]),
                   ys["y_test"].astype(np.int64), num_classes, names, path)
