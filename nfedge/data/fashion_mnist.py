"""Fashion-MNIST: the gzip'd IDX files of the Debian package dataset-fashion-mnist (the default root)."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from nfedge.data.config import DATASETS, DataConfig, RawData
from nfedge.errors import NfedgeError

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
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
