import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from nfedge.errors import NfedgeError
from nfedge.models import create_generator, list_generators
from nfedge.progress import QUIET
from nfedge.sram.faults import InjectConfig
from nfedge.sram.image import build_image
from nfedge.train.eopm import EOPMConfig, eopm_loss, init_identity, load_generator, train_generator
from nfedge.train.perturb import TRAIN_CHIP_BASE, forward_many, perturbed_weights, training_chips


def _toy_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 1, 32, 32, generator=g) * 2 - 1, torch.randint(0, 10, (n,), generator=g))


def _base(small_model):
    return small_model, build_image(small_model, 8)


def test_forward_many_equals_one_model_at_a_time(small_model):
    model, image = _base(small_model)
    ws = [perturbed_weights(image, InjectConfig(ber=0.02, chip=c)) for c in range(4)]
    x = torch.rand(5, 1, 32, 32) * 2 - 1
    batched = forward_many(model, ws, x)
    for i, w in enumerate(ws):
        single = torch.func.functional_call(model, w, (x,))
        assert torch.allclose(batched[i], single, atol=1e-5)
    assert not torch.allclose(batched[0], batched[1])  # different chips, different models


def test_gradients_reach_only_the_generator(small_model):
    model, image = _base(small_model)
    model.requires_grad_(False)
    gen = create_generator("ConvS", in_channels=1)
    ws = [perturbed_weights(image, InjectConfig(ber=0.01, chip=c)) for c in range(2)]
    x, y = _toy_data(8).tensors
    eopm_loss(gen, [(model, image.dequantized_weights(), ws)], x, y, lam=5.0).backward()
    assert all(p.grad is None for p in model.parameters())
    grads = [p.grad for p in gen.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)


def test_training_chips_never_overlap_evaluation_chips():
    chips = training_chips(np.random.default_rng(0), 10_000)
    assert min(chips) >= TRAIN_CHIP_BASE  # evaluation chips are 0..K-1


def _train(small_model, **kw):
    cfg = EOPMConfig(**{"generator": "ConvS", "epochs": 1, "max_steps": 3, "n_perturbed": 2, "batch_size": 16, **kw})
    return train_generator(cfg, [_base(small_model)], _toy_data(), 1, (32, 32), progress=QUIET)


def test_eopm_is_reproducible_from_its_seed(small_model):
    a, ha = _train(small_model, seed=3)
    b, hb = _train(small_model, seed=3)
    c, _ = _train(small_model, seed=4)
    assert ha["history"][0]["step_losses"] == hb["history"][0]["step_losses"]
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize("name", list_generators())
def test_identity_init_makes_the_transform_the_identity(name):
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    gen = create_generator(name, in_channels=1)
    for g in (init_identity(gen).train(), gen.eval()):
        assert torch.equal(g(x), torch.zeros_like(x)), name


@pytest.mark.parametrize("name", ["ConvT", "UNetT"])
def test_identity_init_still_learns(small_model, name):
    gen, _ = _train(small_model, generator=name, init="identity", max_steps=3)
    with torch.no_grad():
        out = gen.eval()(torch.rand(4, 1, 32, 32) * 2 - 1)
    assert float(out.abs().max()) > 0  # the zeroed last layer moved, so G is no longer 0


def test_init_from_continues_from_a_saved_generator(small_model, tmp_path):
    from nfedge.errors import NfedgeError
    from nfedge.train.eopm import save_generator

    first, _ = _train(small_model, generator="ConvT", max_steps=2)
    path = tmp_path / "g.pt"
    save_generator(path, first, "ConvT", 1, (32, 32), {})
    more, _ = _train(small_model, generator="ConvT", max_steps=1, lr=1e-12, init_from=str(path))
    moved = dict(more.named_parameters())  # an Adam step of lr 1e-12 moves no weight visibly: the same start
    for k, v in first.named_parameters():
        assert torch.allclose(moved[k], v, atol=1e-6), k
    with pytest.raises(NfedgeError, match="not a UNetT"):
        _train(small_model, generator="UNetT", max_steps=1, init_from=str(path))


def test_uip_baseline_trains(small_model):
    gen, hist = _train(small_model, generator="UIP", max_steps=5)
    p = dict(gen.named_parameters())
    assert len(p) == 1 and float(next(iter(p.values())).abs().sum()) > 0  # P moved away from zero
    assert all(np.isfinite(hist["history"][0]["step_losses"]))


def test_restricted_access_ensemble_of_surrogates(small_model):
    from nfedge.models import create_base_model

    torch.manual_seed(5)
    other = create_base_model("cnn-xs", 1, 10).eval()
    cfg = EOPMConfig(generator="ConvS", epochs=1, max_steps=2, n_perturbed=2, batch_size=16)
    gen, hist = train_generator(cfg, [_base(small_model), _base(other)], _toy_data(), 1, (32, 32), progress=QUIET)
    assert hist["steps"] == 2


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path, checkpoint):
    """2 CPU processes (gloo) on the same global batch train the same generator as one process."""
    py = sys.executable
    img = tmp_path / "img"
    subprocess.run([py, "-m", "nfedge", "quantize", "--checkpoint", checkpoint, "--out", img], check=True)
    common = ["train", "--base", str(checkpoint), "--image", str(img), "--generator", "ConvS", "--epochs", "1",
              "--max-steps", "3", "--n-perturbed", "2", "--batch-size", "8", "--train-limit", "64"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([py, "-m", "nfedge", *common, "--out", tmp_path / "one"], capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([py, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
                          "-m", "nfedge", *common, "--out", tmp_path / "two"], capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    g1, m1 = load_generator(tmp_path / "one" / "generator.pt")
    g2, m2 = load_generator(tmp_path / "two" / "generator.pt")
    assert m2["meta"]["world_size"] == 2
    np.testing.assert_allclose(m1["meta"]["history"][0]["step_losses"], m2["meta"]["history"][0]["step_losses"], rtol=1e-4)
    x = torch.rand(16, 1, 32, 32) * 2 - 1
    with torch.no_grad():  # Adam turns float-level gradient noise into ~lr-sized steps on bias terms
        assert torch.allclose(g1(x), g2(x), atol=5e-3)


def test_bf16_steps_train_an_fp32_generator_close_to_fp32(small_model):
    a, ha = _train(small_model, seed=5)
    b, hb = _train(small_model, seed=5, precision="bf16")
    la, lb = ha["history"][0]["step_losses"], hb["history"][0]["step_losses"]
    assert la[0] == pytest.approx(lb[0], rel=0.05)  # same weights and batch at step 0: bf16 rounding only
    assert la != lb  # bf16 did run: its losses are not fp32's bit for bit
    assert all(v.dtype == torch.float32 for v in b.state_dict().values() if v.is_floating_point())
    with pytest.raises(NfedgeError, match="precision"):
        EOPMConfig(precision="fp16")


def test_integer_mode_trains_against_the_integer_twin(small_model):
    a, ha = _train(small_model, seed=6)
    b, hb = _train(small_model, seed=6, mode="integer", calib_images=32)
    la, lb = ha["history"][0]["step_losses"], hb["history"][0]["step_losses"]
    assert la[0] == pytest.approx(lb[0], rel=0.1)  # identity init: F(x) = x, the twin is the base on the int8 grid
    assert la[0] != lb[0]  # ... but the integer twin, not the float model, computed it
    assert any(not torch.equal(v, a.state_dict()[k]) for k, v in b.state_dict().items())  # and G was trained
    with pytest.raises(NfedgeError, match="mode"):
        EOPMConfig(mode="int4")


def test_tail_objectives_combine_the_perturbed_losses():
    from nfedge.train.eopm import tail_loss

    ce = torch.tensor([0.5, 2.0, 1.0, 4.0, 0.25])
    assert float(tail_loss(ce, "mean")) == pytest.approx(7.75 / 5)
    assert float(tail_loss(ce, "max")) == 4.0
    assert float(tail_loss(ce, "cvar", 0.4)) == pytest.approx(3.0)  # the worst 2 of 5: (4 + 2) / 2
    assert float(tail_loss(ce, "cvar", 0.01)) == 4.0  # at least one model
    assert float(tail_loss(ce, "cvar", 1.0)) == pytest.approx(7.75 / 5)  # all of them: the mean


def test_the_tail_objective_weighs_the_worst_perturbed_models(small_model):
    model, image = _base(small_model)
    gen = init_identity(create_generator("ConvS", in_channels=1))
    ws = [perturbed_weights(image, InjectConfig(ber=0.05, chip=c)) for c in range(4)]
    x, y = _toy_data(16).tensors
    bases = [(model, image.dequantized_weights(), ws)]
    with torch.no_grad():
        mean = float(eopm_loss(gen, bases, x, y, lam=1.0))
        cvar = float(eopm_loss(gen, bases, x, y, lam=1.0, objective="cvar", tail_fraction=0.5))
        worst = float(eopm_loss(gen, bases, x, y, lam=1.0, objective="max"))
        # by hand: CE of the clean model + lam * the mean of the 2 largest per-model CEs
        clean = torch.nn.functional.cross_entropy(torch.func.functional_call(model, bases[0][1], (x,)), y)
        per = torch.stack([torch.nn.functional.cross_entropy(torch.func.functional_call(model, w, (x,)), y) for w in ws])
    assert mean < cvar < worst
    assert cvar == pytest.approx(float(clean + per.topk(2).values.mean()), rel=1e-5)
    assert worst == pytest.approx(float(clean + per.max()), rel=1e-5)


def test_training_with_a_tail_objective(small_model):
    a, log = _train(small_model, objective="cvar", tail_fraction=0.5, seed=3)
    b, _ = _train(small_model, seed=3)
    assert all(np.isfinite(log["history"][0]["step_losses"]))
    assert any(not torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    for bad in ({"objective": "median"}, {"objective": "cvar", "tail_fraction": 0.0}):
        with pytest.raises(NfedgeError):
            EOPMConfig(generator="ConvS", **bad)
