import pytest
import torch

from nfedge.data import DataConfig
from nfedge.integer.calibrate import calibrate
from nfedge.integer.program import trace_program
from nfedge.progress import QUIET
from nfedge.sram.image import build_image
from nfedge.train.base import TrainBaseConfig, train_base
from nfedge.train.checkpoint import load_checkpoint


def test_train_base_learns_and_saves_config(tmp_path):
    cfg = TrainBaseConfig(model="cnn-xs", epochs=1, batch_size=64, data=DataConfig(train_limit=3000, test_limit=500))
    path = train_base(cfg, tmp_path, progress=QUIET)
    model, meta = load_checkpoint(path)
    assert meta["meta"]["config"] == cfg.to_dict()
    assert meta["meta"]["test_accuracy"] > 0.4  # 10 classes: chance is 0.1
    assert (tmp_path / "config.json").is_file() and not (tmp_path / "resume.pt").exists()


@pytest.mark.parametrize("robust", ["none", "randbet"])  # randbet: its bit-error stream resumes too
def test_train_base_resumes_after_interruption(tmp_path, monkeypatch, robust):
    cfg = TrainBaseConfig(model="cnn-xs", epochs=2, batch_size=64, data=DataConfig(train_limit=1000, test_limit=200),
                          robust=robust, clip=0.05, robust_ber=0.02)
    straight = train_base(cfg, tmp_path / "straight", progress=QUIET)

    import nfedge.train.base as tb
    calls = {"n": 0}
    real = tb.qat_accuracy

    def interrupt_after_first_epoch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(tb, "qat_accuracy", interrupt_after_first_epoch)
    try:
        train_base(cfg, tmp_path / "resumed", progress=QUIET)
    except KeyboardInterrupt:
        pass
    assert (tmp_path / "resumed" / "resume.pt").is_file() and not (tmp_path / "resumed" / "base.pt").exists()
    monkeypatch.setattr(tb, "qat_accuracy", real)
    resumed = train_base(cfg, tmp_path / "resumed", progress=QUIET)
    a, b = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    for k, v in a["state_dict"].items():
        assert torch.allclose(v.float(), b["state_dict"][k].float(), atol=1e-6), k
    assert a["meta"]["history"] == b["meta"]["history"]


def test_integer_mode_freezes_ranges_and_trains_through_the_twin(tmp_path):
    """QAT with activation fake-quant: ranges observed, frozen into the checkpoint, the twin's accuracy recorded;
    a program calibrated with those ranges has exactly the trained grids."""
    cfg = TrainBaseConfig(model="cnn-xs", epochs=1, data=DataConfig(train_limit=512, test_limit=128), mode="integer",
                          calib_images=64, batch_size=64)
    model, meta = load_checkpoint(train_base(cfg, tmp_path, progress=QUIET))
    integer = meta["meta"]["integer"]
    assert integer["calib_images"] == 64 and 0.0 <= integer["twin_test_accuracy"] <= 1.0
    ranges = integer["ranges"]
    assert ranges and all(v > 0 for v in ranges.values())
    x = torch.rand(8, 1, 32, 32) * 2 - 1  # other images: the frozen ranges, not these, set the scales
    prog = calibrate(trace_program(model, True), model, x, image=build_image(model, 8), ranges=ranges)
    assert prog.ranges == {**prog.ranges, **ranges}


def _tiny_npz(path, train_labels=(0, 1, 0, 1, 0, 1, 0, 1), test_labels=(0, 1, 2)):
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (len(train_labels), 32, 32), dtype=np.uint8),
             y_train=np.array(train_labels), x_test=rng.integers(0, 256, (len(test_labels), 32, 32), dtype=np.uint8),
             y_test=np.array(test_labels), class_names=np.array(["zero", "one", "two"]))
    return path


def test_train_base_says_what_data_it_loaded_and_warns_of_a_class_without_images(tmp_path, capsys):
    """issue 28 item 8: the user sees classes, channels and image counts before the epochs run."""
    from nfedge.progress import DEFAULT

    npz = _tiny_npz(tmp_path / "digits.npz")  # class "two" is declared and tested, never trained on
    cfg = TrainBaseConfig(model="cnn-xs", epochs=1, batch_size=8, data=DataConfig(dataset="npz", root=str(npz)))
    train_base(cfg, tmp_path / "run", progress=DEFAULT)
    err = capsys.readouterr().err
    assert (f"[nfedge] data: npz from {npz}: 3 classes (zero, one, two), 1 channel, 32x32; 8 training images "
            "(0..4 per class), 3 test images\n") in err
    assert "[nfedge] warning: 1 class with no training image: two (the model cannot learn it)\n" in err


def test_the_checkpoint_records_the_absolute_data_root(tmp_path, monkeypatch):
    """issue 28 item 6: a relative --data-root is resolved when recorded, so later stages run from any folder; a
    recorded root that is gone is an error that says where the path came from and how to override it."""
    import dataclasses

    import pytest

    from nfedge.cli.common import data_config
    from nfedge.errors import NfedgeError
    from nfedge.train.checkpoint import checkpoint_data

    _tiny_npz(tmp_path / "digits.npz")
    monkeypatch.chdir(tmp_path)
    cfg = TrainBaseConfig(model="cnn-xs", epochs=1, batch_size=8, data=DataConfig(dataset="npz", root="digits.npz"))
    _, meta = load_checkpoint(train_base(cfg, tmp_path / "run", progress=QUIET))
    recorded = meta["meta"]["config"]["data"]
    assert recorded["root"] == str(tmp_path / "digits.npz")
    assert meta["meta"]["config"] == dataclasses.replace(cfg, data=cfg.data.absolute()).to_dict()
    monkeypatch.chdir(tmp_path / "run")  # another folder: the recorded root still finds the data
    assert checkpoint_data(meta, "base.pt").root == recorded["root"]
    assert data_config(meta["meta"], None, None, None, None).root == recorded["root"]
    (tmp_path / "digits.npz").rename(tmp_path / "moved.npz")
    for call in (lambda: checkpoint_data(meta, "b/base.pt"), lambda: data_config(meta["meta"], None, None, None, None)):
        with pytest.raises(NfedgeError, match=f"dataset root {tmp_path / 'digits.npz'} \\(recorded in .*checkpoint.*\\) "
                                              "does not exist; pass --data-root with the data's current path"):
            call()
    assert checkpoint_data(meta, "b/base.pt", str(tmp_path / "moved.npz")).root == str(tmp_path / "moved.npz")
    assert data_config(meta["meta"], None, "../moved.npz", None, None).root == "../moved.npz"
