"""The scorer's rewrites (nfedge.analysis.scoring.fast_scoring_copy) give the same logits bit for bit as the model
run as it is, on every registered base model, with clean and faulty weights, BatchNorm scales of both signs and zero,
and the batch sizes a pass uses; ImageScorer's accuracies stay `predict`'s (evaluate's) exactly."""

import pytest
import torch
from torch import nn

from nfedge.analysis.evaluate import ImageScorer, _checked_fast_copy, predict
from nfedge.analysis.scoring import (MaxPool2x2, PooledBatchNorm2d, SignedConv2d, UnfoldConv2d, fast_scoring_copy,
                                     scoring_copy)
from nfedge.models import create_base_model, list_base_models
from nfedge.sram.faults import InjectConfig, inject_faults
from nfedge.sram.image import build_image


def _with_bn_stats(m: nn.Module, seed: int, negative: bool = True) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():  # statistics and scales away from the identity; negative scales exercise the signs
        if isinstance(mod, nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            mod.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            mod.weight.data.copy_(torch.rand(n, generator=g) * 2.5 - (1.0 if negative else -0.1))
            mod.bias.data.copy_(torch.rand(n, generator=g) * 0.6 - 0.3)
    return m.eval()


def _x(n: int, seed: int = 2) -> torch.Tensor:
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed)) * 4 - 2


@pytest.mark.parametrize("name", list_base_models())
def test_fast_copy_gives_the_same_logits_bit_for_bit(name):
    if name in ("resnet50", "vgg19", "vgg16"):
        pytest.skip("large: the same layers as resnet18 / vgg11")
    torch.manual_seed(0)
    m = _with_bn_stats(create_base_model(name, in_channels=1, num_classes=10), 1)
    fast = fast_scoring_copy(m)
    assert not any(isinstance(x, (UnfoldConv2d, PooledBatchNorm2d)) for x in m.modules())  # the original is untouched
    assert [k for k, _ in fast.state_dict().items()] == [k for k, _ in m.state_dict().items()]
    faulty = inject_faults(build_image(m, 8), InjectConfig(ber=0.01, chip=0))[0].dequantized_weights()
    x = _x(37)
    with torch.no_grad():
        for w in ({}, faulty):
            for xb in (x, x[:1]):
                assert torch.equal(torch.func.functional_call(fast, w, (xb,)), torch.func.functional_call(m, w, (xb,)))


def test_cnn_s_blocks_are_rewritten_and_exact_over_many_chips():
    """cnn-s, the default base model: every block reordered, its first conv unfolded; 1,000 inputs in the scorer's
    batches of 256 (the last one 232), 12 chips at voltages from clean to 1% BER, logits equal bit for bit."""
    torch.manual_seed(0)
    m = _with_bn_stats(create_base_model("cnn-s", in_channels=1, num_classes=10), 3)
    fast = fast_scoring_copy(m)
    assert sum(isinstance(x, PooledBatchNorm2d) for x in fast.modules()) == 3
    assert sum(isinstance(x, SignedConv2d) for x in fast.modules()) == 3
    assert isinstance(fast.features[0], UnfoldConv2d)
    image, x = build_image(m, 8), _x(1000, 5)
    with torch.no_grad():
        for chip, v in enumerate((1.0, 0.95, 0.92, 0.9, 0.88, 0.86, 0.85, 0.84, 0.83, 0.82, 0.8, 0.78)):
            w = inject_faults(image, InjectConfig(voltage=v, chip=chip))[0].dequantized_weights()
            for i in (0, 256, 512, 768):
                xb = x[i: i + 256]
                assert torch.equal(torch.func.functional_call(fast, w, (xb,)), torch.func.functional_call(m, w, (xb,)))


def test_zero_batchnorm_scale_takes_the_original_order():
    torch.manual_seed(0)
    m = _with_bn_stats(create_base_model("cnn-xs", in_channels=1, num_classes=10), 4)
    m.features[1].weight.data[3] = 0.0
    m.features[5].weight.data[0] = -0.0
    fast = fast_scoring_copy(m)
    x = _x(20)
    with torch.no_grad():
        assert torch.equal(fast(x), m(x))
        w = {"features.1.weight": torch.ones(8)}  # a substituted BatchNorm weight is read at call time
        assert torch.equal(torch.func.functional_call(fast, w, (x,)), torch.func.functional_call(m, w, (x,)))


def test_unfold_conv_matches_conv2d_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    for k, stride, pad, out in ((3, 1, 1, 8), (3, 1, 1, 32), (5, 1, 2, 16), (3, 2, 1, 16), (3, 1, 0, 8)):
        # parameters that require grad: torch.matmul would fold the batch for them (another kernel, other sums)
        conv = nn.Conv2d(1, out, k, stride, pad, bias=False)
        fast = UnfoldConv2d(1, out, k, stride, pad, bias=False)
        fast.load_state_dict(conv.state_dict())
        x = torch.randn(9, 1, 31, 32, generator=g)
        with torch.no_grad():
            assert torch.equal(fast(x), conv(x))


def test_a_mismatching_platform_falls_back_to_the_plain_copy(monkeypatch):
    from nfedge.analysis import evaluate as ev

    m = _with_bn_stats(create_base_model("cnn-xs", in_channels=1, num_classes=10), 6)
    assert any(isinstance(x, PooledBatchNorm2d) for x in _checked_fast_copy(m, [_x(8)], 4).modules())

    def off_by_one_ulp(model):
        fast = fast_scoring_copy(model)
        fast.classifier.bias.data = torch.nextafter(fast.classifier.bias.data, torch.full_like(fast.classifier.bias, 9))
        return fast

    monkeypatch.setattr(ev, "fast_scoring_copy", off_by_one_ulp)
    with pytest.warns(UserWarning, match="fast copy of .* gives other logits on this CPU"):
        chosen = _checked_fast_copy(m, [_x(8)], 4)
    assert not any(isinstance(x, PooledBatchNorm2d) for x in chosen.modules())
    assert any(isinstance(x, MaxPool2x2) for x in chosen.modules())


def test_scorer_accuracies_equal_predict_on_the_model_as_is():
    """ImageScorer (fast copy, inference mode) against `predict` on the model as it is (nfedge evaluate's number before
    the rewrites): equal accuracies chip by chip, and equal predictions image by image."""
    torch.manual_seed(0)
    m = _with_bn_stats(create_base_model("cnn-s", in_channels=1, num_classes=10), 7)
    x = _x(300, 8)
    with torch.no_grad():
        y = m(x).argmax(1)
    score = ImageScorer(m, (x, y), {}, batch_size=128)
    assert isinstance(score.fast.features[1], PooledBatchNorm2d)
    image = build_image(m, 8)
    for chip, v in enumerate((0.9, 0.86, 0.83, 0.8)):
        faulty = inject_faults(image, InjectConfig(voltage=v, chip=chip))[0]
        w = faulty.dequantized_weights()
        assert torch.equal(predict(score.fast, w, x, batch_size=128), predict(m, w, x, batch_size=128))
        assert score.accuracy(faulty, None) == 100.0 * float((predict(m, w, x, batch_size=128) == y).float().mean())


def test_scoring_copy_is_unchanged_for_generators():
    """transform_inputs keeps scoring_copy (pools only): F(x) is computed once per scorer."""
    m = _with_bn_stats(create_base_model("cnn-xs", in_channels=1, num_classes=10), 9)
    assert not any(isinstance(x, (PooledBatchNorm2d, UnfoldConv2d)) for x in scoring_copy(m).modules())


def test_scorer_resumes_after_the_first_block_with_the_same_accuracies(monkeypatch):
    """Chips whose first block reads fault-free weights start after it (its output kept from the clean image's pass);
    every accuracy equals `predict` on the model as it is, for the base inputs and a generator's, and a chip with a
    faulty first block runs it."""
    from nfedge.analysis import scoring
    from nfedge.models import create_generator

    torch.manual_seed(0)
    m = _with_bn_stats(create_base_model("cnn-s", in_channels=1, num_classes=10), 11)
    x = _x(300, 12)
    with torch.no_grad():
        y = m(x).argmax(1)
    gen = create_generator("ConvT", in_channels=1).eval()
    score = ImageScorer(m, (x, y), {"ConvT": gen}, batch_size=128)
    runs = []
    real = scoring.PooledBatchNorm2d.forward
    monkeypatch.setattr(scoring.PooledBatchNorm2d, "forward", lambda self, h: runs.append(h.shape[-1]) or real(self, h))
    image = build_image(m, 8)
    first = image.manifest.tensors[0].name
    assert first == "features.0.weight"
    clean0 = image.dequantized_weights()[first]
    resumed = faulty_first = 0
    for name, inputs in ((None, x), ("ConvT", score.inputs["ConvT"])):
        score.accuracy(image, name)  # the clean image: its first block output is kept
        for chip in range(8):
            faulty = inject_faults(image, InjectConfig(ber=2e-4, chip=chip))[0]
            w = faulty.dequantized_weights()
            runs.clear()
            got = score.accuracy(faulty, name)
            assert got == 100.0 * float((predict(m, w, inputs, batch_size=128) == y).float().mean())
            clean_first = torch.equal(w[first], clean0)
            assert (32 in runs) == (not clean_first)  # the first block's pooled BatchNorm runs on 16x16 maps
            resumed += clean_first
            faulty_first += not clean_first
    assert resumed and faulty_first  # both paths were taken
    assert set(score._heads) == {None, "ConvT"}
