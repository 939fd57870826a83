"""`folder`: the ImageFolder convention, a user's own images in one folder per class.

    ROOT/train/<class>/*.png|*.jpg|*.jpeg
    ROOT/test/<class>/*.png|*.jpg|*.jpeg

Class names are the class folder names, sorted (index = position, as torchvision's ImageFolder); test/ must
hold the same classes as train/. Images are read in that order (class, then file name). Each image is resized
to 32x32 (PIL bilinear, antialiased when shrinking, stretched if not square: torchvision's Resize((32, 32)),
as the GTSRB reader); `pad_to_32` does not apply. The dataset is RGB when any image of either split is colour
(grey images are then copied to R = G = B, which loses nothing), grey when every image is grey; alpha is dropped.

The folder is untrusted input: only the PNG and JPEG decoders are tried (whatever the suffix), nothing is
executed, hidden entries (".name", e.g. .ipynb_checkpoints) are skipped, files with other suffixes are ignored,
and every path must resolve inside ROOT, so a symlink out of it is an error. Anything malformed (an empty
class folder, a corrupt image, a class in test/ unknown to train/, ...) is a one-line NfedgeError naming it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from nfedge.data.config import DATASETS, IMAGE_SIZE, DataConfig, RawData, require_dir
from nfedge.errors import NfedgeError

FOLDER_EXPECTED = "train/<class>/ and test/<class>/ folders of .png or .jpg images"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # compared lower-case
_GREY_MODES = {"1", "L", "LA", "La"}  # PIL modes of 8-bit (or 1-bit) grey images, alpha dropped
_COLOUR_MODES = {"RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr"}  # converted to 8-bit RGB
# Anything else (I;16, I, F: 16-bit or float PNGs) is refused: converting them to L clips instead of scaling.


def shown(path: Path | str) -> str:
    """A path for a one-line message: control characters in untrusted file names are escaped (a newline in a
    name would otherwise split the error line)."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(path))


def resolve_inside(path: Path, base: Path, what: str) -> Path:
    """`path` with symlinks resolved; an error unless it exists and lies inside `base` (already resolved)."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError) as e:  # a dangling or looping symlink (RuntimeError on Python 3.11)
        raise NfedgeError(f"{what} {shown(path)} cannot be resolved ({type(e).__name__})") from None
    if not real.is_relative_to(base):
        raise NfedgeError(f"{what} {shown(path)} is a symlink out of the data root (to {shown(real)})")
    return real


def resize_to_input(pixels: np.ndarray) -> np.ndarray:
    """uint8 H x W (grey) or H x W x 3 -> 32 x 32 (x 3), PIL bilinear (antialiased when shrinking).
    A 32x32 image comes back unchanged: PIL's resize to the same size is a copy."""
    from PIL import Image  # deferred: `import nfedge.data` stays light for commands that read no images

    im = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))  # 2-d uint8 -> mode L, H x W x 3 -> RGB
    return np.asarray(im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR), dtype=np.uint8)


def read_image(path: Path, real: Path | None = None) -> np.ndarray:
    """One PNG or JPEG as uint8 32 x 32 (grey) or 32 x 32 x 3 (colour). `real` is the file to open (the resolved
    path already checked to lie inside the data root), `path` the name errors give."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. PIL's palette-transparency notes: library code never prints
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # > 89 Mpixel: refuse, do not decode
            with Image.open(real or path, formats=("PNG", "JPEG")) as im:
                if im.mode in _GREY_MODES:
                    im = im.convert("L")
                elif im.mode in _COLOUR_MODES:
                    im = im.convert("RGB")
                else:
                    raise NfedgeError(f"image {shown(path)} has PIL mode {im.mode}; expected 8-bit grey or RGB")
                return resize_to_input(np.asarray(im, dtype=np.uint8))
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        # OSError covers PIL.UnidentifiedImageError (not PNG/JPEG) and truncated data
        detail = (str(e).splitlines() or [type(e).__name__])[0]
        raise NfedgeError(f"cannot read image {shown(path)}: {shown(detail)}") from None


def _visible(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as e:
        raise NfedgeError(f"cannot list {shown(folder)}: {e.strerror or type(e).__name__}") from None


def _class_folders(split: Path, base: Path) -> dict[str, Path]:
    """{class name: folder} of one split, sorted by name; image files lying loose in the split are an error."""
    classes = {}
    for p in _visible(split):
        if p.is_dir():
            resolve_inside(p, base, "class folder")
            classes[p.name] = p
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            raise NfedgeError(f"image {shown(p)} is not inside a class folder (expected {split.name}/<class>/"
                              f"{shown(p.name)})")
    if not classes:
        raise NfedgeError(f"folder dataset split {shown(split)} has no class folders (expected {FOLDER_EXPECTED})")
    return classes


def _image_files(class_dir: Path, base: Path) -> list[tuple[Path, Path]]:
    """(path, resolved path) of each image in a class folder, sorted by file name."""
    files = []
    for p in _visible(class_dir):  # other files (notes, Thumbs.db) are ignored without being opened
        if p.is_dir():
            raise NfedgeError(f"class folder {shown(class_dir)} holds a folder {shown(p.name)}; nested folders are "
                              "not read (put the images directly in the class folder)")
        if p.suffix.lower() in IMAGE_SUFFIXES:
            real = resolve_inside(p, base, "image")
            if not real.is_file():  # a FIFO or device named *.png would block or never end
                raise NfedgeError(f"image {shown(p)} is not a regular file")
            files.append((p, real))
    if not files:
        raise NfedgeError(f"class folder {shown(class_dir)} is empty (no .png, .jpg or .jpeg images)")
    return files


def _read_split(class_dirs: dict[str, Path], base: Path) -> tuple[list[np.ndarray], np.ndarray]:
    images, labels = [], []
    for label, name in enumerate(sorted(class_dirs)):
        for p, real in _image_files(class_dirs[name], base):
            images.append(read_image(p, real))
            labels.append(label)
    return images, np.array(labels, dtype=np.int64)


def _stack(images: list[np.ndarray], channels: int) -> np.ndarray:
    """N x C x 32 x 32 uint8; grey images repeated to 3 channels when the dataset is colour."""
    return np.stack([np.repeat(im[None], channels, axis=0) if im.ndim == 2 else im.transpose(2, 0, 1) for im in images])


@DATASETS.register("folder")
def _load_folder(root: Path | None, cfg: DataConfig) -> RawData:
    root = require_dir(root, "folder dataset", FOLDER_EXPECTED)
    base = root.resolve()
    splits = {}
    for name in ("train", "test"):
        d = root / name
        if not d.is_dir():
            raise NfedgeError(f"folder dataset {shown(root)} has no {name}/ folder (expected {FOLDER_EXPECTED})")
        resolve_inside(d, base, "split folder")
        splits[name] = _class_folders(d, base)
    train_classes, test_classes = splits["train"], splits["test"]
    unknown = sorted(set(test_classes) - set(train_classes))
    if unknown:
        known = ", ".join(map(shown, sorted(train_classes)))
        raise NfedgeError(f"class folder {shown(test_classes[unknown[0]])} has no counterpart in "
                          f"{shown(root / 'train')} (test/ classes must be train/'s: {known})")
    missing = sorted(set(train_classes) - set(test_classes))
    if missing:
        raise NfedgeError(f"folder dataset {shown(root)}: class {shown(missing[0])} is in train/ but test/ has no "
                          f"{shown(missing[0])}/ folder (both splits need every class)")
    x_train, y_train = _read_split(train_classes, base)
    x_test, y_test = _read_split(test_classes, base)
    channels = 3 if any(im.ndim == 3 for im in x_train + x_test) else 1
    names = tuple(sorted(train_classes))
    return RawData(_stack(x_train, channels), y_train, _stack(x_test, channels), y_test, len(names), names, root)
