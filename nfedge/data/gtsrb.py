"""GTSRB: class folders of PPM/PNG images with semicolon-separated GT CSVs (official and Kaggle layouts)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from nfedge.data.config import DATASETS, IMAGE_SIZE, DataConfig, RawData, require_dir
from nfedge.errors import NfedgeError

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
    root = require_dir(root, "GTSRB", GTSRB_EXPECTED)
    train_dir = next((root / d for d in _TRAIN_DIRS if (root / d).is_dir()), None)
    if train_dir is None:
        raise NfedgeError(f"GTSRB folder {root} has no training images (expected {GTSRB_EXPECTED})")
    x_train, y_train = _gtsrb_train(train_dir, cfg.crop_roi)
    x_test, y_test = _gtsrb_test(root, cfg.crop_roi)
    return RawData(x_train, y_train, x_test, y_test, GTSRB_CLASSES, None, root)
