"""The generic formats a user brings their own data in: `folder` (train/<class>/, test/<class>/ PNG or JPEG) and
`npz` (x_train, y_train, x_test, y_test). Small real files written with PIL and numpy; exact pixels, class names,
counts, seeded limits, and every malformed input as a one-line error that names the file."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_datasets import err  # noqa: E402 - the one-line-error helper, shared

from nfedge.data import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, DataConfig, load_dataset, scale_images

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)




def save(path: Path, pixels, **kw) -> Path:
    """Write uint8 H x W (grey, mode L) or H x W x 3 (RGB) pixels, or a PIL image, as PNG or JPEG by the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = pixels if isinstance(pixels, Image.Image) else Image.fromarray(np.asarray(pixels, np.uint8))
    im.save(path, **kw)
    return path


def solid(h: int, w: int, colour) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (h, w, 3)).copy()


def gradient(seed: int, channels: int = 3) -> np.ndarray:
    """A 32x32 image of distinct known values (32x32: no resize, so every pixel survives exactly)."""
    shape = (32, 32, channels) if channels == 3 else (32, 32)
    x = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    x.flat[0], x.flat[1] = 0, 255  # both ends of the range
    return x


def folder_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(dataset="folder", root=str(root), **kw)


def npz_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(dataset="npz", root=str(root), **kw)


def small_folder(root: Path) -> Path:
    """Two classes, one RGB PNG each per split (the base case the error tests break)."""
    for split in ("train", "test"):
        save(root / split / "cat" / "a.png", solid(8, 8, RED))
        save(root / split / "dog" / "a.png", solid(8, 8, BLUE))
    return root


# --- folder: pixels, class names, counts ------------------------------------------------------------


def test_folder_rgb_png_exact_pixels_classes_and_counts(tmp_path):
    known = gradient(0)
    # Class folders created out of order: the class list is the sorted folder names, as ImageFolder's.
    save(tmp_path / "train" / "zebra" / "b.png", solid(40, 50, GREEN))
    save(tmp_path / "train" / "zebra" / "a.png", known)
    save(tmp_path / "train" / "ant" / "x.png", solid(7, 3, RED))
    save(tmp_path / "train" / "bee" / "1.png", solid(32, 32, BLUE))
    save(tmp_path / "train" / "bee" / "2.png", solid(64, 64, RED))
    for c in ("zebra", "ant", "bee"):
        save(tmp_path / "test" / c / "t.png", solid(32, 32, BLUE))
    train, test, info = load_dataset(folder_cfg(tmp_path))
    x, y = train.tensors
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert info.class_names == ("ant", "bee", "zebra") and info.num_classes == 3
    assert y.tolist() == [0, 1, 1, 2, 2]  # class order, then file name order
    assert test.tensors[1].tolist() == [0, 1, 2]
    assert (info.name, info.channels, info.image_size, info.num_train, info.num_test) == ("folder", 3, (32, 32), 5, 3)
    assert info.root == str(tmp_path)
    assert torch.equal(x[3], scale_images(known.transpose(2, 0, 1)))  # zebra/a.png, not resized: exact
    assert x[3].min() == -1.0 and x[3].max() == 1.0
    # Resized (up from 7x3, down from 64x64 and 40x50): a solid colour stays exactly that colour.
    for i, colour in ((0, RED), (1, BLUE), (2, RED), (4, GREEN)):
        assert torch.equal(x[i], scale_images(solid(32, 32, colour).transpose(2, 0, 1))), i


def test_folder_resize_keeps_orientation_and_stretches(tmp_path):
    """A 64 x 96 image, left half red and right half blue: columns, not rows, change colour; a 3:2 image
    is stretched to 32x32 (no crop), so the edge stays in the middle."""
    img = solid(64, 96, RED)
    img[:, 48:] = BLUE
    save(tmp_path / "train" / "a" / "wide.png", img)
    save(tmp_path / "test" / "a" / "wide.png", img)
    x = load_dataset(folder_cfg(tmp_path))[0].tensors[0][0]
    red, blue = scale_images(np.array(RED, np.uint8)), scale_images(np.array(BLUE, np.uint8))
    # Shrinking 3x in width, the antialiasing filter reaches 3 input columns each side of an output centre:
    # output columns 0..14 only see red input, 17..31 only blue.
    assert torch.equal(x[:, :, :15], red[:, None, None].expand(3, 32, 15))
    assert torch.equal(x[:, :, 17:], blue[:, None, None].expand(3, 32, 15))
    assert torch.equal(x[:, 0], x[:, 31])  # every row the same


def test_folder_resize_is_antialiased_bilinear(tmp_path):
    """Columns 0, 0, 255, 255, ... shrunk 64 -> 32. Antialiased bilinear (PIL's, torchvision's antialias=True)
    weighs the 4 input columns 2j-1..2j+2 by 1/8, 3/8, 3/8, 1/8: 63.75 for even j, 191.25 for odd j. Nearest,
    box and plain (point-sampled) bilinear all give 0 and 255 instead."""
    row = np.tile(np.array([0, 0, 255, 255], np.uint8), 16)
    save(tmp_path / "train" / "a" / "stripes.png", np.tile(row, (64, 1)))
    save(tmp_path / "test" / "a" / "stripes.png", np.tile(row, (64, 1)))
    x = load_dataset(folder_cfg(tmp_path))[0].tensors[0][0, 0]
    pixels = torch.round((x + 1) / 2 * 255)  # back to 0..255 (exact: the scaling is x / 255 * 2 - 1)
    expect = torch.tensor([63.75 if j % 2 == 0 else 191.25 for j in range(32)])
    assert torch.all((pixels[:, 1:31] - expect[1:31]).abs() <= 1)  # PIL's fixed-point rounding: +-1 level
    assert torch.equal(pixels[0], pixels[31])


def test_folder_grey_png_and_jpeg(tmp_path):
    known = gradient(1, channels=1)
    save(tmp_path / "train" / "a" / "known.png", known)
    jpg = save(tmp_path / "train" / "b" / "photo.JPG", np.full((48, 40), 200, np.uint8), format="JPEG", quality=95)
    save(tmp_path / "test" / "a" / "t.jpeg", np.full((32, 32), 10, np.uint8), format="JPEG")
    save(tmp_path / "test" / "b" / "t.png", np.full((16, 16), 77, np.uint8))
    train, test, info = load_dataset(folder_cfg(tmp_path))
    x = train.tensors[0]
    assert info.channels == 1 and x.shape == (2, 1, 32, 32) and test.tensors[0].shape == (2, 1, 32, 32)
    assert torch.equal(x[0, 0], scale_images(known))
    # JPEG is lossy: exactly what PIL decodes and resizes, and within 2 levels of the grey it was saved from.
    with Image.open(jpg) as im:
        ref = np.asarray(im.convert("L").resize((32, 32), Image.Resampling.BILINEAR))
    assert torch.equal(x[1, 0], scale_images(ref))
    assert np.abs(ref.astype(int) - 200).max() <= 2
    assert torch.equal(test.tensors[0][1, 0], scale_images(np.full((32, 32), 77, np.uint8)))


def test_folder_mixed_grey_and_colour_is_rgb(tmp_path):
    """One colour image makes the dataset RGB; grey images become R = G = B (nothing is lost); alpha and
    palettes are converted; an RGB JPEG is read as PIL decodes it."""
    grey = gradient(2, channels=1)
    save(tmp_path / "train" / "a" / "grey.png", grey)
    rgba = np.dstack([gradient(3), np.full((32, 32), 7, np.uint8)])
    save(tmp_path / "train" / "a" / "rgba.png", Image.fromarray(rgba, "RGBA"))
    save(tmp_path / "train" / "b" / "palette.png", Image.fromarray(solid(32, 32, GREEN)).convert("P"))
    save(tmp_path / "test" / "a" / "la.png", Image.fromarray(np.full((32, 32), 9, np.uint8)).convert("LA"))
    jpg = save(tmp_path / "test" / "b" / "c.jpg", gradient(4), quality=90)
    train, test, info = load_dataset(folder_cfg(tmp_path))
    x = train.tensors[0]
    assert info.channels == 3 and x.shape == (3, 3, 32, 32) and test.tensors[0].shape == (2, 3, 32, 32)
    assert torch.equal(x[0], scale_images(np.stack([grey] * 3)))
    assert torch.equal(x[1], scale_images(rgba[..., :3].transpose(2, 0, 1)))  # alpha dropped, not composited
    assert torch.equal(x[2], scale_images(solid(32, 32, GREEN).transpose(2, 0, 1)))
    assert torch.all(test.tensors[0][0] == scale_images(np.array([9], np.uint8)))
    with Image.open(jpg) as im:
        ref = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
    assert torch.equal(test.tensors[0][1], scale_images(ref))


def test_folder_skips_hidden_and_other_files_and_follows_links_inside(tmp_path):
    small_folder(tmp_path)
    save(tmp_path / "train" / ".ipynb_checkpoints" / "x.png", solid(8, 8, GREEN))  # not a class
    save(tmp_path / "train" / "cat" / ".hidden.png", solid(8, 8, GREEN))
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "labels.csv").write_text("ignored")
    (tmp_path / "train" / "cat" / "b.png").symlink_to(tmp_path / "test" / "dog" / "a.png")  # inside the root: fine
    train, _, info = load_dataset(folder_cfg(tmp_path))
    assert info.class_names == ("cat", "dog") and train.tensors[1].tolist() == [0, 0, 1]
    assert torch.equal(train.tensors[0][1], train.tensors[0][2])  # the link reads the blue dog


# --- npz: pixels, layouts, class names --------------------------------------------------------------


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_nhw_grey_exact(tmp_path):
    xtr = np.stack([gradient(i, channels=1) for i in range(4)])
    xte = np.stack([gradient(9, channels=1)])
    p = write_npz(tmp_path / "mine.npz", x_train=xtr, y_train=np.array([0, 2, 1, 2]), x_test=xte, y_test=np.array([1]))
    train, test, info = load_dataset(npz_cfg(p))
    assert train.tensors[0].shape == (4, 1, 32, 32) and torch.equal(train.tensors[0][:, 0], scale_images(xtr))
    assert torch.equal(test.tensors[0][0, 0], scale_images(xte[0]))
    assert train.tensors[1].tolist() == [0, 2, 1, 2] and train.tensors[1].dtype == torch.int64
    assert (info.name, info.root, info.channels, info.num_classes, info.class_names) == ("npz", str(p), 1, 3, None)


def test_npz_nhwc_rgb_exact_with_class_names_and_n_by_1_labels(tmp_path):
    xtr = np.stack([gradient(i) for i in range(3)])  # N x H x W x 3, channels last
    xtr[0, 5, 6] = RED
    names = np.array(["plane", "car", "bird", "unused"])
    # keras' CIFAR arrays: labels N x 1 uint8. The root is the folder holding the one .npz.
    write_npz(tmp_path / "data.npz", x_train=xtr, y_train=np.array([[2], [0], [1]], np.uint8),
              x_test=xtr[:1], y_test=np.array([[3]], np.uint8), class_names=names, extra=np.zeros(3))
    train, test, info = load_dataset(npz_cfg(tmp_path))
    x = train.tensors[0]
    assert x.shape == (3, 3, 32, 32) and torch.equal(x, scale_images(xtr.transpose(0, 3, 1, 2)))
    assert x[0, :, 5, 6].tolist() == [1.0, -1.0, -1.0]  # channel 0 is red
    assert train.tensors[1].tolist() == [2, 0, 1] and test.tensors[1].tolist() == [3]
    assert info.class_names == ("plane", "car", "bird", "unused") and info.num_classes == 4
    assert info.root == str(tmp_path / "data.npz")


def test_npz_nhwc_one_channel_equals_nhw(tmp_path):
    x = np.stack([gradient(i, channels=1) for i in range(2)])
    y = np.array([0, 1])
    a = write_npz(tmp_path / "a.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    b = write_npz(tmp_path / "b.npz", x_train=x[..., None], y_train=y, x_test=x[..., None], y_test=y)
    assert torch.equal(load_dataset(npz_cfg(a))[0].tensors[0], load_dataset(npz_cfg(b))[0].tensors[0])


def write_idx(path: Path, magic: int, arr: np.ndarray) -> None:
    path.write_bytes(gzip.compress(struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()))


def test_npz_28x28_is_treated_as_fashion_mnist(tmp_path):
    """keras' fashion_mnist arrays in an npz give the same tensors as the Debian IDX files they came from."""
    rng = np.random.default_rng(0)
    xtr, xte = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    ytr, yte = np.arange(6, dtype=np.uint8), np.array([9, 0, 4], np.uint8)
    idx = tmp_path / "idx"
    idx.mkdir()
    for name, arr in (("train-images-idx3-ubyte", xtr), ("t10k-images-idx3-ubyte", xte),
                      ("train-labels-idx1-ubyte", ytr), ("t10k-labels-idx1-ubyte", yte)):
        write_idx(idx / f"{name}.gz", IDX_IMAGES_MAGIC if "images" in name else IDX_LABELS_MAGIC, arr)
    p = write_npz(tmp_path / "fashion.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    for pad in (True, False):
        a_train, a_test, _ = load_dataset(DataConfig(root=str(idx), pad_to_32=pad))
        b_train, b_test, b_info = load_dataset(npz_cfg(p, pad_to_32=pad))
        assert torch.equal(a_train.tensors[0], b_train.tensors[0]) and torch.equal(a_test.tensors[0], b_test.tensors[0])
        assert torch.equal(a_train.tensors[1], b_train.tensors[1])
        assert b_info.image_size == ((32, 32) if pad else (28, 28))
    x = load_dataset(npz_cfg(p))[0].tensors[0]
    assert torch.all(x[:, :, :2] == -1.0) and torch.equal(x[:, 0, 2:30, 2:30], scale_images(xtr))  # 2 px of black


def test_npz_other_sizes_resized_like_folder(tmp_path):
    """The same 40x36 images as an npz and as PNG folders give the same tensors (one resize for both)."""
    rng = np.random.default_rng(1)
    xtr = rng.integers(0, 256, (2, 40, 36, 3), dtype=np.uint8)
    xte = rng.integers(0, 256, (1, 40, 36, 3), dtype=np.uint8)
    p = write_npz(tmp_path / "d.npz", x_train=xtr, y_train=np.array([0, 1]), x_test=xte, y_test=np.array([1]))
    root = tmp_path / "f"
    save(root / "train" / "a" / "0.png", xtr[0])
    save(root / "train" / "b" / "0.png", xtr[1])
    save(root / "test" / "a" / "0.png", xte[0])
    save(root / "test" / "b" / "0.png", xte[0])
    a, b = load_dataset(npz_cfg(p))[0], load_dataset(folder_cfg(root))[0]
    assert a.tensors[0].shape == (2, 3, 32, 32) and torch.equal(a.tensors[0], b.tensors[0])
    assert not torch.equal(a.tensors[0][0], a.tensors[0][1])


# --- seeded limits (load_dataset's, the same for every format) --------------------------------------


def many_folder(root: Path, n: int) -> list[np.ndarray]:
    """n distinct images in one class ("a") of train/ and of test/; returns them in file order."""
    imgs = [solid(32, 32, (i, 255 - i, 3 * i % 256)) for i in range(n)]
    for split in ("train", "test"):
        for i, im in enumerate(imgs):
            save(root / split / "a" / f"{i:03d}.png", im)
    return imgs


@pytest.mark.parametrize("fmt", ["folder", "npz"])
def test_limits_are_seeded_and_keep_file_order(tmp_path, fmt):
    n = 20
    imgs = many_folder(tmp_path / "f", n)
    if fmt == "npz":
        x = np.stack(imgs)
        y = np.zeros(n, np.int64)
        root = write_npz(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    else:
        root = tmp_path / "f"
    cfg = DataConfig(dataset=fmt, root=str(root), train_limit=5, test_limit=7, seed=3)
    a, test, info = load_dataset(cfg)
    assert (len(a), len(test), info.num_train, info.num_test) == (5, 7, 5, 7)
    assert torch.equal(a.tensors[0], load_dataset(cfg)[0].tensors[0])
    full = scale_images(np.stack(imgs).transpose(0, 3, 1, 2))
    picked = [next(i for i in range(n) if torch.equal(full[i], img)) for img in a.tensors[0]]
    assert picked == sorted(picked) and len(set(picked)) == 5
    expect = np.sort(np.random.default_rng(3).choice(n, size=5, replace=False)).tolist()  # load_dataset's rule
    assert picked == expect
    first_pixels = [load_dataset(DataConfig(dataset=fmt, root=str(root), train_limit=5, seed=s))[0].tensors[0][:, 0, 0]
                    for s in range(4)]
    seeds = {tuple(p.flatten().tolist()) for p in first_pixels}
    assert len(seeds) > 1


# --- folder: malformed input ------------------------------------------------------------------------


def test_folder_layout_errors(tmp_path):
    assert "folder dataset has no default location" in err(DataConfig(dataset="folder"))
    assert f"folder dataset folder {tmp_path / 'nope'} does not exist" in err(folder_cfg(tmp_path / "nope"))
    root = small_folder(tmp_path / "d")
    cfg = folder_cfg(root)
    os.rename(root / "test", root / "Test")
    assert f"folder dataset {root} has no test/ folder" in err(cfg)
    os.rename(root / "Test", root / "test")
    os.rename(root / "train", root / "training")
    assert f"folder dataset {root} has no train/ folder" in err(cfg)
    os.rename(root / "training", root / "train")
    # empty class folder (a non-image file does not count)
    (root / "train" / "eel").mkdir()
    (root / "train" / "eel" / "notes.txt").write_text("x")
    (root / "test" / "eel").mkdir()
    assert f"class folder {root / 'train' / 'eel'} is empty" in err(cfg)
    # a class in test/ that train/ lacks, and the other way round
    (root / "train" / "eel" / "notes.txt").unlink()
    (root / "train" / "eel").rmdir()
    save(root / "test" / "eel" / "e.png", solid(8, 8, GREEN))
    msg = err(cfg)
    assert f"class folder {root / 'test' / 'eel'} has no counterpart in {root / 'train'}" in msg and "cat, dog" in msg
    (root / "test" / "eel" / "e.png").unlink()
    (root / "test" / "eel").rmdir()
    (root / "test" / "dog" / "a.png").unlink()
    (root / "test" / "dog").rmdir()
    assert "class dog is in train/ but test/ has no dog/ folder" in err(cfg)
    save(root / "test" / "dog" / "a.png", solid(8, 8, BLUE))
    # no class folders at all; a loose image; a nested folder
    empty = tmp_path / "e"
    (empty / "train").mkdir(parents=True)
    (empty / "test").mkdir()
    assert f"split {empty / 'train'} has no class folders" in err(folder_cfg(empty))
    save(root / "train" / "stray.png", solid(8, 8, RED))
    assert f"image {root / 'train' / 'stray.png'} is not inside a class folder" in err(cfg)
    (root / "train" / "stray.png").unlink()
    save(root / "train" / "cat" / "sub" / "x.png", solid(8, 8, RED))
    assert f"class folder {root / 'train' / 'cat'} holds a folder sub; nested folders are not read" in err(cfg)
    assert load_dataset(folder_cfg(small_folder(tmp_path / "ok")))[2].num_train == 2  # the base case itself loads


def test_folder_unreadable_images(tmp_path):
    root = small_folder(tmp_path)
    cfg = folder_cfg(root)
    bad = root / "test" / "dog" / "a.png"
    good = bad.read_bytes()
    bad.write_bytes(b"not an image at all")
    assert f"cannot read image {bad}: cannot identify image file" in err(cfg)
    bad.write_bytes(good[: len(good) // 2])  # truncated PNG
    assert f"cannot read image {bad}:" in err(cfg)
    Image.fromarray(solid(8, 8, RED)).save(bad, format="GIF")  # a real image, but not PNG or JPEG
    assert f"cannot read image {bad}: cannot identify image file" in err(cfg)
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(bad)  # 16-bit grey PNG: converting would clip
    assert f"image {bad} has PIL mode I;16; expected 8-bit grey or RGB" in err(cfg)
    bad.unlink()
    os.mkfifo(bad)  # reading a FIFO would block forever
    assert f"image {bad} is not a regular file" in err(cfg)
    bad.unlink()
    save(bad, solid(8, 8, BLUE), format="JPEG")  # JPEG bytes under a .png name: read by content
    assert load_dataset(cfg)[1].tensors[0].shape == (2, 3, 32, 32)


def test_folder_refuses_decompression_bombs(tmp_path, monkeypatch):
    """PIL's limit (89 Mpixel; an error at twice that) lowered to 1000 pixels, so that a small file stands in for
    a bomb: over the limit is already an error here (PIL only warns), checked at open, before decoding."""
    root = small_folder(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    big = save(root / "train" / "cat" / "big.png", solid(40, 40, RED))  # 1600 pixels: PIL's warning
    assert f"cannot read image {big}: Image size (1600 pixels) exceeds limit of 1000 pixels" in err(folder_cfg(root))
    save(big, solid(50, 50, RED))  # 2500 pixels: over twice the limit, PIL's own error
    assert f"cannot read image {big}: Image size (2500 pixels) exceeds limit of 2000 pixels" in err(folder_cfg(root))


def test_folder_symlinks_out_of_the_root_are_refused(tmp_path):
    outside = save(tmp_path / "secret" / "s.png", solid(8, 8, GREEN))
    root = small_folder(tmp_path / "d")
    cfg = folder_cfg(root)
    link = root / "train" / "cat" / "link.png"
    link.symlink_to(outside)
    assert f"image {link} is a symlink out of the data root (to {outside})" in err(cfg)
    link.unlink()
    link.symlink_to(tmp_path / "gone.png")
    assert f"image {link} cannot be resolved" in err(cfg)
    link.unlink()
    (root / "train" / "owl").symlink_to(outside.parent, target_is_directory=True)
    save(root / "test" / "owl" / "o.png", solid(8, 8, RED))
    assert f"class folder {root / 'train' / 'owl'} is a symlink out of the data root" in err(cfg)
    (root / "train" / "owl").unlink()
    (root / "test" / "owl" / "o.png").unlink()
    (root / "test" / "owl").rmdir()
    os.rename(root / "test", tmp_path / "elsewhere")
    (root / "test").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert f"split folder {root / 'test'} is a symlink out of the data root" in err(cfg)
    # The root itself may be a link: containment is checked against where it points.
    os.rename(tmp_path / "elsewhere", tmp_path / "t")
    (root / "test").unlink()
    os.rename(tmp_path / "t", root / "test")
    (tmp_path / "alias").symlink_to(root, target_is_directory=True)
    assert load_dataset(folder_cfg(tmp_path / "alias"))[2].num_test == 2


def test_folder_error_with_a_newline_in_a_file_name_stays_one_line(tmp_path):
    root = small_folder(tmp_path)
    bad = root / "train" / "cat" / "evil\nname.png"
    bad.write_bytes(b"junk")
    msg = err(folder_cfg(root))
    assert "evil\\nname.png" in msg


# --- npz: malformed input ---------------------------------------------------------------------------


def good_arrays() -> dict[str, np.ndarray]:
    x = np.zeros((3, 32, 32), np.uint8)
    return {"x_train": x, "y_train": np.array([0, 1, 1]), "x_test": x[:2], "y_test": np.array([1, 0])}


def npz_err(tmp_path: Path, **change) -> tuple[str, Path]:
    arrays = {k: v for k, v in (good_arrays() | change).items() if v is not None}
    p = write_npz(tmp_path / "bad.npz", **arrays)
    msg = err(npz_cfg(p))
    assert str(p) in msg, msg  # every npz error names the file
    return msg, p


def test_npz_array_errors(tmp_path):
    assert "has no array y_test" in npz_err(tmp_path, y_test=None)[0]
    msg = npz_err(tmp_path, x_train=None, y_test=None)[0]
    assert "has no array x_train, y_test (it holds: y_train, x_test" in msg
    assert "x_train has 3 images but y_train has 2 labels" in npz_err(tmp_path, y_train=np.array([0, 1]))[0]
    assert "x_test has 2 images but y_test has 3 labels" in npz_err(tmp_path, y_test=np.array([0, 1, 1]))[0]
    assert "y_train in" in npz_err(tmp_path, y_train=np.array([0.0, 1.0, 1.0]))[0]
    assert "is float64, expected integer labels" in npz_err(tmp_path, y_train=np.array([0.0, 1.0, 1.0]))[0]
    assert "is bool, expected integer labels" in npz_err(tmp_path, y_test=np.array([True, False]))[0]
    assert "has a negative label -1" in npz_err(tmp_path, y_test=np.array([-1, 0]))[0]
    assert "has shape (3, 2), expected N or N x 1 labels" in npz_err(tmp_path, y_train=np.zeros((3, 2), np.int64))[0]
    names = np.array(["a", "b"])
    msg = npz_err(tmp_path, y_test=np.array([2, 0]), class_names=names)[0]
    assert "y_test in" in msg and "has label 2 but class_names lists 2 classes (labels 0..1)" in msg
    assert "expected a 1-d string array" in npz_err(tmp_path, class_names=np.array([0, 1]))[0]
    assert "x_train in" in npz_err(tmp_path, x_train=np.zeros((3, 32, 32), np.float32))[0]
    assert "is float32, expected uint8 pixels 0..255" in npz_err(tmp_path, x_train=np.zeros((3, 32, 32), np.float32))[0]
    assert "is int64, expected uint8" in npz_err(tmp_path, x_test=np.zeros((2, 32, 32), np.int64))[0]
    assert "has shape (3, 1024), expected N x H x W" in npz_err(tmp_path, x_train=np.zeros((3, 1024), np.uint8))[0]
    assert "has shape (3, 32, 32, 4)" in npz_err(tmp_path, x_train=np.zeros((3, 32, 32, 4), np.uint8))[0]
    msg = npz_err(tmp_path, x_train=np.zeros((3, 3, 32, 32), np.uint8))[0]  # NCHW: channels first
    assert "has shape (3, 3, 32, 32)" in msg and "channels last" in msg
    assert "has shape (0, 32, 32): no images" in npz_err(tmp_path, x_train=np.zeros((0, 32, 32), np.uint8),
                                                         y_train=np.zeros(0, np.int64))[0]
    msg = npz_err(tmp_path, x_test=np.zeros((2, 28, 28), np.uint8))[0]
    assert "x_train images are 32x32x1 (H x W x C) but x_test's are 28x28x1" in msg
    assert "but x_test's are 32x32x3" in npz_err(tmp_path, x_test=np.zeros((2, 32, 32, 3), np.uint8))[0]


class _Evil:
    """Unpickling this creates the file `marker`: proof that the loader ran code from the data file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_npz_file_errors_and_no_unpickling(tmp_path):
    assert "npz dataset has no default location" in err(DataConfig(dataset="npz"))
    assert f"npz dataset {tmp_path / 'nope.npz'} does not exist" in err(npz_cfg(tmp_path / "nope.npz"))
    marker = tmp_path / "pwned"
    # An object array inside the npz (np.savez pickles it): refused on access, never unpickled.
    msg, p = npz_err(tmp_path, x_train=np.array([_Evil(marker)], dtype=object))
    assert f"cannot read array x_train of {p}: Object arrays cannot be loaded when allow_pickle=False" in msg
    # A plain pickle under an .npz name.
    p.write_bytes(pickle.dumps({"x_train": _Evil(marker)}))
    msg = err(npz_cfg(p))
    assert f"cannot read npz file {p}: This file contains pickled (object) data" in msg
    assert not marker.exists()
    p.write_bytes(b"")
    assert f"cannot read npz file {p}" in err(npz_cfg(p))
    write_npz(p, **good_arrays())
    whole = p.read_bytes()
    p.write_bytes(whole[: len(whole) // 2])  # truncated zip
    assert f"cannot read npz file {p}" in err(npz_cfg(p))
    np.save(tmp_path / "one.npy", np.zeros((2, 32, 32), np.uint8))
    assert "is a single .npy array, expected an .npz archive" in err(npz_cfg(tmp_path / "one.npy"))


def test_npz_folder_root_errors(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    assert f"npz dataset folder {d} must hold exactly one .npz file, found 0 (none)" in err(npz_cfg(d))
    write_npz(d / "a.npz", **good_arrays())
    write_npz(d / "b.npz", **good_arrays())
    assert "found 2 (a.npz, b.npz)" in err(npz_cfg(d))
    (d / "b.npz").unlink()
    assert load_dataset(npz_cfg(d))[2].num_train == 3
    (d / "a.npz").rename(tmp_path / "outside.npz")
    (d / "a.npz").symlink_to(tmp_path / "outside.npz")
    assert f"npz file {d / 'a.npz'} is a symlink out of the data root" in err(npz_cfg(d))
    # Naming the file itself is the user's choice of file: a link is followed.
    assert load_dataset(npz_cfg(d / "a.npz"))[2].num_test == 2


# --- end to end through the CLI: train-base, quantize, evaluate, build (host) --------------------------


def nfedge(*args, cwd):
    return subprocess.run([sys.executable, "-m", "nfedge", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          check=False)


def tiny_images(n: int, k: int, channels: int, rng) -> np.ndarray:
    """Class k is brighter in channel k % channels (an easy signal); 36x36 so that the folder format resizes."""
    shape = (n, 36, 36, channels)
    x = rng.integers(0, 80, size=shape, dtype=np.uint8)
    x[..., k % channels] += np.uint8(60 * (k + 1))
    return x


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["folder", "npz"])
def test_own_data_through_the_pipeline(tmp_path, monkeypatch, fmt):
    """3 classes x 20 training (6 test) images: folder as RGB PNGs, npz as grey NHW arrays. The data root is
    relative (the commands run in tmp_path), as a user's usually is."""
    rng = np.random.default_rng(0)
    classes = ("circle", "square", "stripe")
    channels = 3 if fmt == "folder" else 1
    splits = {s: [tiny_images(n, k, channels, rng) for k in range(3)] for s, n in (("train", 20), ("test", 6))}
    if fmt == "folder":
        root = "mydata"
        for s, per_class in splits.items():
            for name, x in zip(classes, per_class):
                for i, im in enumerate(x):
                    save(tmp_path / root / s / name / f"{i:03d}.png", im)
    else:
        root = "mydata.npz"
        arrays = {}
        for s, per_class in splits.items():
            arrays[f"x_{s}"] = np.concatenate(per_class)[..., 0]  # N x H x W grey
            arrays[f"y_{s}"] = np.repeat(np.arange(3), [len(x) for x in per_class])
        np.savez(tmp_path / root, class_names=np.array(classes), **arrays)
    r = nfedge("train-base", "--model", "cnn-xs", "--epochs", 1, "--dataset", fmt, "--data-root", root, "--out", "base",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = json.loads((tmp_path / "base" / "config.json").read_text())
    # recorded absolute (issue 28 item 6), so later stages find the data from any folder
    assert cfg["data"]["dataset"] == fmt and cfg["data"]["root"] == str((tmp_path / root).resolve())
    assert f"[nfedge] data: {fmt} from {(tmp_path / root).resolve()}: 3 classes (circle, square, stripe)" in r.stderr
    from nfedge.train.checkpoint import load_checkpoint

    _, meta = load_checkpoint(tmp_path / "base" / "base.pt")
    assert (meta["in_channels"], meta["num_classes"]) == (channels, 3)
    r = nfedge("quantize", "--checkpoint", "base/base.pt", "--bits", 8, "--out", "img", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    # evaluate reads the dataset from the checkpoint: no --dataset given
    r = nfedge("evaluate", "--base", "base/base.pt", "--image", "img", "--voltage", 0.833, "--chips", 2, "--json",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert res["samples"] == 18 and len(res["conditions"][0]["PA"]["per_chip"]) == 2
    r = nfedge("build", "--target", "host", "--bits", 8, "--base", "base/base.pt", "--image", "img", "--out", "bundle",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    from nfedge.deploy.bundle import load_bundle

    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.num_classes == 3 and list(bundle.manifest["io"]["input_shape"])[-3:] == [channels, 32, 32]
    # faultrun takes its test images from the data config in the bundle's copy of the checkpoint (host/base.pt),
    # from any folder. (Running faultrun itself on a host bundle needs the trust flag.)
    _, bundled = load_checkpoint(tmp_path / "bundle" / "host" / "base.pt")
    data = DataConfig.from_dict(bundled["meta"]["config"]["data"])
    assert (data.dataset, data.root) == (fmt, str((tmp_path / root).resolve()))
    monkeypatch.chdir(tmp_path / "bundle")
    _, test, info = load_dataset(dataclasses.replace(data, test_limit=6))
    assert len(test) == 6 and info.class_names == classes and info.channels == channels
