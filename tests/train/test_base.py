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


def test_train_base_resumes_after_interruption(tmp_path, monkeypatch):
    cfg = TrainBaseConfig(model="cnn-xs", epochs=2, batch_size=64, data=DataConfig(train_limit=1000, test_limit=200))
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
