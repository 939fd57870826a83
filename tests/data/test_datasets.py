"""nfedge.data: each dataset read from small files in its real on-disk format, plus the real Fashion-MNIST."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from nfedge.data import (
    FASHION_MNIST_ROOT,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    DataConfig,
    list_datasets,
    load_dataset,
    scale_images,
)
from nfedge.errors import NfedgeError

# --- helpers that write the real formats ------------------------------------------------------------


def write_idx(path: Path, magic: int, arr: np.ndarray, compress: bool = True) -> None:
    data = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def fmnist_images(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    x[:, 0, 0], x[:, 0, 1] = 0, 255  # both ends of the range in every image
    return x


def make_fmnist(root: Path, n_train: int = 6, n_test: int = 4) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    arrays = {"train-images-idx3-ubyte": fmnist_images(n_train, 1), "t10k-images-idx3-ubyte": fmnist_images(n_test, 2),
              "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
              "t10k-labels-idx1-ubyte": (9 - np.arange(n_test, dtype=np.uint8)) % 10}
    for name, arr in arrays.items():
        write_idx(root / f"{name}.gz", IDX_IMAGES_MAGIC if "images" in name else IDX_LABELS_MAGIC, arr)
    return arrays


def cifar_rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def dump(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))  # the official files are Python 2 pickles


def make_cifar10(folder: Path, per_batch: int = 2, n_test: int = 3) -> None:
    folder.mkdir(parents=True)
    for i in range(1, 6):
        labels = [(i + j) % 10 for j in range(per_batch)]
        dump(folder / f"data_batch_{i}", {b"batch_label": b"training batch", b"labels": labels,
                                          b"data": cifar_rows(per_batch, i), b"filenames": [b"x.png"] * per_batch})
    dump(folder / "test_batch", {b"labels": list(range(n_test)), b"data": cifar_rows(n_test, 0)})
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    dump(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})


def write_ppm(path: Path, rgb: np.ndarray) -> None:
    h, w, _ = rgb.shape
    path.write_bytes(b"P6\n%d %d\n255\n" % (w, h) + rgb.astype(np.uint8).tobytes())


def solid(h: int, w: int, colour: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (h, w, 3)).copy()


GT_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"
RED, BLUE, GREY = (255, 0, 0), (0, 0, 255), (0, 128, 255)


def framed(h: int, w: int) -> np.ndarray:
    """A grey image whose ROI (5 px margin) is red, like a sign inside its GTSRB margin."""
    img = solid(h, w, GREY)
    img[5:h - 5, 5:w - 5] = RED
    return img


def make_gtsrb(root: Path) -> None:
    """Official layout: GTSRB/Final_Training/Images/000NN/ + GT-000NN.csv; Final_Test/Images + GT-final_test.csv."""
    train = root / "GTSRB" / "Final_Training" / "Images"
    for cls, sizes in ((0, [(40, 35), (29, 31)]), (42, [(60, 61)])):
        d = train / f"{cls:05d}"
        d.mkdir(parents=True)
        rows = []
        for j, (h, w) in enumerate(sizes):
            name = f"00000_{j:05d}.ppm"
            write_ppm(d / name, framed(h, w))
            rows.append(f"{name};{w};{h};5;5;{w - 6};{h - 6};{cls}\n")
        (d / f"GT-{cls:05d}.csv").write_text(GT_HEADER + "".join(rows))
    test = root / "GTSRB" / "Final_Test" / "Images"
    test.mkdir(parents=True)
    write_ppm(test / "00000.ppm", solid(33, 34, BLUE))
    from PIL import Image
    Image.fromarray(solid(50, 45, RED)).save(test / "00001.png")
    (root / "GT-final_test.csv").write_text(GT_HEADER + "00000.ppm;34;33;5;5;28;27;7\n00001.png;45;50;5;5;39;44;13\n")


def scaled(colour: tuple[int, int, int]) -> torch.Tensor:
    return torch.tensor(colour, dtype=torch.float32) / 255 * 2 - 1


def err(cfg: DataConfig) -> str:
    with pytest.raises(NfedgeError) as e:
        load_dataset(cfg)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# --- scaling and config -----------------------------------------------------------------------------


def test_scale_images_maps_ends_exactly():
    x = scale_images(np.arange(256, dtype=np.uint8))
    assert x.dtype == torch.float32
    assert x[0].item() == -1.0 and x[255].item() == 1.0
    assert torch.all(torch.diff(x) > 0)
    assert torch.allclose(x, torch.arange(256.0) / 255 * 2 - 1)


def test_list_datasets_and_config_validation():
    assert list_datasets() == ["cifar10", "cifar100", "fashion-mnist", "folder", "gtsrb", "npz"]
    cfg = DataConfig(dataset="cifar10", root="/x", train_limit=10)
    assert DataConfig.from_json(cfg.to_json()) == cfg
    assert DataConfig().config_hash() != cfg.config_hash()
    with pytest.raises(NfedgeError, match="unknown dataset 'mnist'; known: cifar10, cifar100, fashion-mnist, folder, gtsrb, npz"):
        DataConfig(dataset="mnist")
    with pytest.raises(NfedgeError, match="train_limit must be a positive integer"):
        DataConfig(train_limit=0)
    with pytest.raises(NfedgeError, match="crop_roi only applies to the gtsrb"):
        DataConfig(crop_roi=True)
    with pytest.raises(NfedgeError, match="non-empty"):
        DataConfig(root="")


# --- Fashion-MNIST ----------------------------------------------------------------------------------


def test_fashion_mnist_idx_padded(tmp_path):
    arrays = make_fmnist(tmp_path)
    train, test, info = load_dataset(DataConfig(root=str(tmp_path)))
    x, y = train.tensors
    assert x.shape == (6, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert test.tensors[0].shape == (4, 1, 32, 32)
    assert y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert test.tensors[1].tolist() == [9, 8, 7, 6]
    # 2 pixels of black (-1) on every side; the 28x28 centre is the scaled image.
    centre = x[:, 0, 2:30, 2:30]
    assert torch.equal(centre, scale_images(arrays["train-images-idx3-ubyte"]))
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert torch.all(x[:, 0][:, border] == -1.0)
    assert torch.all(centre[:, 0, 0] == -1.0) and torch.all(centre[:, 0, 1] == 1.0)  # 0 -> -1, 255 -> 1
    assert x.min() == -1.0 and x.max() == 1.0
    assert (info.channels, info.image_size, info.num_classes, info.num_train, info.num_test) == (1, (32, 32), 10, 6, 4)
    assert info.class_names[0] == "T-shirt/top" and len(info.class_names) == 10 and info.root == str(tmp_path)


def test_fashion_mnist_unpadded_and_uncompressed(tmp_path):
    arrays = make_fmnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    write_idx(tmp_path / "t10k-images-idx3-ubyte", IDX_IMAGES_MAGIC, arrays["t10k-images-idx3-ubyte"], compress=False)
    train, test, info = load_dataset(DataConfig(root=str(tmp_path), pad_to_32=False))
    assert train.tensors[0].shape == (6, 1, 28, 28) and info.image_size == (28, 28)
    assert torch.equal(test.tensors[0][:, 0], scale_images(arrays["t10k-images-idx3-ubyte"]))


def test_subset_is_seeded_and_keeps_file_order(tmp_path):
    arrays = make_fmnist(tmp_path, n_train=20)
    cfg = DataConfig(root=str(tmp_path), train_limit=5, test_limit=100, seed=3)
    a, test, info = load_dataset(cfg)
    b, _, _ = load_dataset(cfg)
    assert len(a) == 5 and info.num_train == 5 and len(test) == 4  # a limit above the count keeps all
    assert torch.equal(a.tensors[0], b.tensors[0])
    full = scale_images(arrays["train-images-idx3-ubyte"])
    picked = [next(i for i in range(20) if torch.equal(full[i], img[0, 2:30, 2:30])) for img in a.tensors[0]]
    assert picked == sorted(picked) and len(set(picked)) == 5  # distinct images, kept in file order
    assert a.tensors[1].tolist() == [int(arrays["train-labels-idx1-ubyte"][i]) for i in picked]
    others = {tuple(load_dataset(DataConfig(root=str(tmp_path), train_limit=5, seed=s))[0].tensors[1].tolist()) for s in range(5)}
    assert len(others) > 1


def test_fashion_mnist_errors(tmp_path):
    assert "does not exist" in err(DataConfig(root=str(tmp_path / "nope")))
    make_fmnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    msg = err(DataConfig(root=str(tmp_path)))
    assert "t10k-labels-idx1-ubyte.gz" in msg and str(tmp_path) in msg
    # labels where images belong: wrong magic
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", IDX_LABELS_MAGIC, np.zeros(4, np.uint8))
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", IDX_LABELS_MAGIC, np.zeros(6, np.uint8))
    assert "magic 0x00000801, expected 0x00000803" in err(DataConfig(root=str(tmp_path)))
    # header promises more data than the file holds
    data = struct.pack(">IIII", IDX_IMAGES_MAGIC, 7, 28, 28) + bytes(6 * 28 * 28)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(data))
    assert "header says 7x28x28" in err(DataConfig(root=str(tmp_path)))
    # counts disagree between images and labels
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", IDX_IMAGES_MAGIC, fmnist_images(5, 0))
    assert "5 images but 6 labels" in err(DataConfig(root=str(tmp_path)))
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", IDX_IMAGES_MAGIC, np.zeros((6, 27, 28), np.uint8))
    assert "27x28, expected 28x28" in err(DataConfig(root=str(tmp_path)))
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", IDX_IMAGES_MAGIC, fmnist_images(6, 0))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", IDX_LABELS_MAGIC, np.array([0, 1, 2, 3, 4, 10], np.uint8))
    assert "labels span 0..10, expected 0..9" in err(DataConfig(root=str(tmp_path)))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    assert "cannot read IDX file" in err(DataConfig(root=str(tmp_path)))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0"))
    assert "truncated" in err(DataConfig(root=str(tmp_path)))


def test_real_debian_fashion_mnist():
    """The Debian package dataset-fashion-mnist is installed here and in CI: this must not skip."""
    train, test, info = load_dataset(DataConfig())
    assert info.root == FASHION_MNIST_ROOT
    assert (len(train), len(test), info.num_classes, info.channels, info.image_size) == (60000, 10000, 10, 1, (32, 32))
    for ds, per_class in ((train, 6000), (test, 1000)):
        x, y = ds.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.min().item() == -1.0 and x.max().item() == 1.0
        assert torch.bincount(y).tolist() == [per_class] * 10
    assert torch.all(train.tensors[0][:, :, :2] == -1.0) and torch.all(train.tensors[0][:, :, :, 30:] == -1.0)


# --- CIFAR ------------------------------------------------------------------------------------------


def test_cifar10_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar10(folder)
    first = pickle.loads((folder / "data_batch_1").read_bytes())[b"data"][0]
    for root in (folder, tmp_path):  # the folder itself, or the folder that holds it
        train, test, info = load_dataset(DataConfig(dataset="cifar10", root=str(root)))
        x, y = train.tensors
        assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert y.tolist() == [(i + j) % 10 for i in range(1, 6) for j in range(2)]
        assert test.tensors[0].shape == (3, 3, 32, 32) and test.tensors[1].tolist() == [0, 1, 2]
        # Each row is 1024 red, then 1024 green, then 1024 blue values, row-major.
        assert torch.equal(x[0], scale_images(first.reshape(3, 32, 32)))
        assert (info.channels, info.image_size, info.num_classes) == (3, (32, 32), 10)
        assert info.class_names[1] == "automobile" and info.root == str(folder)


def test_cifar10_exact_range(tmp_path):
    folder = tmp_path / "c10"
    make_cifar10(folder)
    rows = np.zeros((3, 3072), np.uint8)
    rows[:, 1024:2048] = 255  # green channel full on, red and blue off
    dump(folder / "test_batch", {b"labels": [0, 0, 0], b"data": rows})
    _, test, _ = load_dataset(DataConfig(dataset="cifar10", root=str(folder)))
    x = test.tensors[0]
    assert torch.all(x[:, 0] == -1.0) and torch.all(x[:, 1] == 1.0) and torch.all(x[:, 2] == -1.0)


def test_cifar100_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    dump(folder / "train", {b"data": cifar_rows(4, 0), b"fine_labels": [0, 99, 50, 1], b"coarse_labels": [0, 1, 2, 3]})
    dump(folder / "test", {b"data": cifar_rows(2, 1), b"fine_labels": [98, 3], b"coarse_labels": [0, 0]})
    dump(folder / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)], b"coarse_label_names": []})
    train, test, info = load_dataset(DataConfig(dataset="cifar100", root=str(tmp_path)))
    assert train.tensors[0].shape == (4, 3, 32, 32) and train.tensors[1].tolist() == [0, 99, 50, 1]
    assert test.tensors[1].tolist() == [98, 3]
    assert info.num_classes == 100 and info.class_names[99] == "c99"


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_errors(tmp_path):
    assert "no default location" in err(DataConfig(dataset="cifar10"))
    assert "does not exist" in err(DataConfig(dataset="cifar10", root=str(tmp_path / "nope")))
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar10(folder)
    (folder / "data_batch_3").unlink()
    msg = err(DataConfig(dataset="cifar10", root=str(folder)))
    assert f"CIFAR-10 folder {folder} has no data_batch_3" in msg and "python-pickle layout cifar-10-batches-py/" in msg
    dump(folder / "data_batch_3", {b"data": cifar_rows(2, 0)})
    assert "has no 'labels' entry" in err(DataConfig(dataset="cifar10", root=str(folder)))
    dump(folder / "data_batch_3", {b"data": cifar_rows(2, 0)[:, :100], b"labels": [0, 1]})
    assert "expected uint8 N x 3072" in err(DataConfig(dataset="cifar10", root=str(folder)))
    dump(folder / "data_batch_3", [1, 2, 3])
    assert "expected a dict" in err(DataConfig(dataset="cifar10", root=str(folder)))
    (folder / "data_batch_3").write_bytes(b"garbage")
    assert "is not a CIFAR-10 pickle" in err(DataConfig(dataset="cifar10", root=str(folder)))
    dump(folder / "data_batch_3", {b"data": _Evil(), b"labels": []})
    assert "refusing to load __builtin__.print" in err(DataConfig(dataset="cifar10", root=str(folder)))
    # CIFAR-100 labels are the fine ones
    c100 = tmp_path / "cifar-100-python"
    c100.mkdir()
    for name in ("train", "test"):
        dump(c100 / name, {b"data": cifar_rows(2, 0), b"labels": [0, 1]})
    assert "has no 'fine_labels' entry" in err(DataConfig(dataset="cifar100", root=str(c100)))


# --- GTSRB ------------------------------------------------------------------------------------------


def test_gtsrb_official_layout(tmp_path):
    make_gtsrb(tmp_path)
    train, test, info = load_dataset(DataConfig(dataset="gtsrb", root=str(tmp_path)))
    x, y = train.tensors
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.tolist() == [0, 0, 42]
    # Not cropped by default: the grey margin survives the resize, the centre is red.
    assert torch.allclose(x[:, :, 0, 0], scaled(GREY).expand(3, 3)) and torch.allclose(x[:, :, 16, 16], scaled(RED).expand(3, 3))
    xt, yt = test.tensors
    assert xt.shape == (2, 3, 32, 32) and yt.tolist() == [7, 13]
    assert torch.all(xt[0] == scaled(BLUE)[:, None, None]) and torch.all(xt[1] == scaled(RED)[:, None, None])
    assert xt.min() == -1.0 and xt.max() == 1.0  # 0 -> -1 and 255 -> 1 exactly
    assert (info.channels, info.image_size, info.num_classes, info.class_names) == (3, (32, 32), 43, None)


def test_gtsrb_crop_roi(tmp_path):
    make_gtsrb(tmp_path)
    train, _, _ = load_dataset(DataConfig(dataset="gtsrb", root=str(tmp_path), crop_roi=True))
    assert torch.all(train.tensors[0] == scaled(RED)[:, None, None])  # only the sign is left


def test_gtsrb_kaggle_layout(tmp_path):
    for cls in (3, 42):
        (tmp_path / "Train" / str(cls)).mkdir(parents=True)
        write_ppm(tmp_path / "Train" / str(cls) / f"00{cls}_0.ppm", solid(30, 30, BLUE))
    (tmp_path / "Test").mkdir()
    write_ppm(tmp_path / "Test" / "00000.ppm", solid(30, 30, RED))
    (tmp_path / "Test.csv").write_text("Width,Height,Roi.X1,Roi.Y1,Roi.X2,Roi.Y2,ClassId,Path\n30,30,5,5,24,24,11,Test/00000.ppm\n")
    train, test, _ = load_dataset(DataConfig(dataset="gtsrb", root=str(tmp_path)))
    assert train.tensors[1].tolist() == [3, 42] and test.tensors[1].tolist() == [11]
    assert train.tensors[0].shape == (2, 3, 32, 32)


def test_gtsrb_errors(tmp_path):
    assert "GTSRB has no default location" in err(DataConfig(dataset="gtsrb"))
    tmp_path.joinpath("empty").mkdir()
    msg = err(DataConfig(dataset="gtsrb", root=str(tmp_path / "empty")))
    assert "has no training images" in msg and "GTSRB/Final_Training/Images/000NN/" in msg
    make_gtsrb(tmp_path)
    cfg = DataConfig(dataset="gtsrb", root=str(tmp_path))
    (tmp_path / "GT-final_test.csv").rename(tmp_path / "GT-final_test.test.csv")
    assert "no labelled test CSV GT-final_test.csv" in err(cfg)
    (tmp_path / "GT-final_test.csv").write_text("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2\n00000.ppm;34;33;5;5;28;27\n")
    assert "no Filename and ClassId columns" in err(cfg)
    (tmp_path / "GT-final_test.csv").write_text(GT_HEADER + "00000.ppm;34;33;5;5;28;27;seven\n")
    assert "line 2 is malformed" in err(cfg)
    (tmp_path / "GT-final_test.csv").write_text(GT_HEADER + "00009.ppm;34;33;5;5;28;27;7\n")
    assert "00009.ppm is missing" in err(cfg)
    (tmp_path / "GT-final_test.csv").write_text(GT_HEADER + "00000.ppm;34;33;5;5;28;27;43\n")
    assert "labels span 43..43, expected 0..42" in err(cfg)
    bad = tmp_path / "GTSRB" / "Final_Training" / "Images" / "00042" / "00000_00000.ppm"
    bad.write_bytes(b"P6\n60 61\n255\n" + b"\0" * 10)  # truncated pixel data
    assert f"cannot read GTSRB image {bad}" in err(cfg)
    gt = tmp_path / "GTSRB" / "Final_Training" / "Images" / "00000" / "GT-00000.csv"
    gt.write_text(GT_HEADER + "00000_00000.ppm;35;40;5;5;90;34;0\n")
    assert "lies outside" in err(DataConfig(dataset="gtsrb", root=str(tmp_path), crop_roi=True))
