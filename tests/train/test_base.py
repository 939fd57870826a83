import torch

from nfedge.data import DataConfig
from nfedge.progress import QUIET
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
