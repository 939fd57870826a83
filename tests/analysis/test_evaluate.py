import json

import numpy as np
import pytest
import torch

from nfedge.analysis.evaluate import EvaluateConfig, ImageScorer, evaluate, predict, summarize
from nfedge.analysis.scoring import MaxPool2x2, scoring_copy
from nfedge.errors import NfedgeError
from nfedge.models import create_base_model, create_generator
from nfedge.progress import QUIET
from nfedge.sram.faults import InjectConfig, inject_faults
from nfedge.sram.image import build_image, write_image
from nfedge.train.perturb import perturbed_weights


def _test_set(model, n=200):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():  # labels = the float model's own predictions: CA is high but not exactly 100
        y = model(x).argmax(1)
    return x, y


def test_summary_statistics():
    s = summarize([10.0, 20.0, 30.0])
    assert s["mean"] == 20.0 and s["worst"] == 10.0 and s["std"] == pytest.approx(np.std([10, 20, 30]))


@pytest.mark.parametrize("name", ["cnn-s", "UNetT", "ConvT", "vgg11"])
def test_scoring_copy_gives_the_same_logits_bit_for_bit(name):
    """The fast 2x2 pool changes no value: clean and faulty weights, random inputs, batches of 37 and 1."""
    torch.manual_seed(3)
    m = (create_generator(name, in_channels=1) if name in ("UNetT", "ConvT") else
         create_base_model(name, in_channels=1, num_classes=10)).eval()
    for mod in m.modules():  # BN with negative scales too: pooling must not depend on the sign
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.weight.data.uniform_(-1.5, 1.5)
    fast = scoring_copy(m)
    assert sum(isinstance(x, MaxPool2x2) for x in fast.modules()) == sum(
        isinstance(x, torch.nn.MaxPool2d) for x in m.modules()) > 0
    assert not any(isinstance(x, MaxPool2x2) for x in m.modules())  # the original is untouched
    faulty = inject_faults(build_image(m, 8), InjectConfig(ber=0.01, chip=0))[0].dequantized_weights()
    x = torch.rand(37, 1, 32, 32, generator=torch.Generator().manual_seed(2)) * 4 - 2
    with torch.no_grad():
        for w in ({}, faulty):
            for xb in (x, x[:1]):
                assert torch.equal(torch.func.functional_call(fast, w, (xb,)), torch.func.functional_call(m, w, (xb,)))


def test_fast_pool_falls_back_on_odd_sizes():
    x = torch.randn(2, 3, 7, 9)
    assert torch.equal(MaxPool2x2()(x), torch.nn.functional.max_pool2d(x, 2))
    y = torch.randn(2, 3, 8, 8).transpose(2, 3)  # not contiguous
    assert torch.equal(MaxPool2x2()(y), torch.nn.functional.max_pool2d(y, 2))


def test_scorer_scores_a_content_once_and_as_predict_does(small_model):
    image = build_image(small_model, 8)
    x, y = _test_set(small_model, 60)
    score = ImageScorer(small_model, (x, y), {}, batch_size=16)
    faulty = inject_faults(image, InjectConfig(ber=0.02, chip=0))[0]
    want = 100.0 * float((predict(small_model, faulty.dequantized_weights(), x) == y).float().mean())
    assert score.accuracy(faulty, None) == want and len(score._cache) == 1
    again = inject_faults(image, InjectConfig(ber=0.02, chip=0))[0]
    assert score.accuracy(again, None) == want and len(score._cache) == 1  # same bytes: the cached score


def test_perturbed_weights_come_from_the_faulty_image_bytes(small_model):
    image = build_image(small_model, 8)
    cfg = InjectConfig(ber=0.01, chip=4)
    faulty, _ = inject_faults(image, cfg)
    w = perturbed_weights(image, cfg)
    for t in faulty.manifest.tensors:
        codes = torch.from_numpy(faulty.tensor_codes(t).astype(np.float32))
        assert torch.equal(w[t.name], codes * t.scale_tensor())


def test_evaluate_reports_every_metric(small_model):
    image = build_image(small_model, 8)
    x, y = _test_set(small_model)
    gen = create_generator("ConvS", in_channels=1).eval()
    r = evaluate(small_model, image, (x, y), EvaluateConfig(bers=(0.0, 0.02), chips=3), generators={"ConvS": gen},
                 progress=QUIET)
    assert r["samples"] == 200 and r["clean"]["CA"] > 80
    zero, hi = r["conditions"]
    assert zero["PA"]["mean"] == pytest.approx(r["clean"]["CA"]) and zero["PA"]["std"] == 0.0  # BER 0 = clean
    assert zero["generators"]["ConvS"]["PA_NF"]["mean"] == pytest.approx(r["clean"]["CA_NF"]["ConvS"])
    assert len(hi["PA"]["per_chip"]) == 3 and hi["PA"]["worst"] == min(hi["PA"]["per_chip"])
    nf = hi["generators"]["ConvS"]
    for chip, (a, b) in enumerate(zip(hi["PA"]["per_chip"], nf["PA_NF"]["per_chip"])):
        assert nf["RP"]["per_chip"][chip] == pytest.approx(b - a)
    # chip 1 alone, recomputed by hand
    w = perturbed_weights(image, InjectConfig(ber=0.02, chip=1))
    assert hi["PA"]["per_chip"][1] == pytest.approx(100.0 * float((predict(small_model, w, x) == y).float().mean()))


def test_evaluate_at_voltages(small_model):
    image = build_image(small_model, 8)
    r = evaluate(small_model, image, _test_set(small_model, 50), EvaluateConfig(voltages=(0.833,), chips=2), progress=QUIET)
    assert r["conditions"][0]["ber"] == 0.01115 and r["conditions"][0]["generators"] == {}


@pytest.mark.parametrize("kw, match", [({}, "voltages or BERs"), ({"bers": (0.6,)}, "BER"),
                                       ({"bers": (0.1,), "chips": 0}, "chips"), ({"bers": (0.1,), "fault": "map"}, "fault")])
def test_bad_evaluate_config(kw, match):
    with pytest.raises(NfedgeError, match=match):
        EvaluateConfig(**kw)


def test_ready_images_and_fault_maps_are_evaluated_as_their_bytes(small_model, tmp_path):
    """A ready image written by inject is the sweep's chip; a fault map's chip equals inject of that map."""
    image = build_image(small_model, 8)
    test = _test_set(small_model, 100)
    faulty, _ = inject_faults(image, InjectConfig(ber=0.02, chip=1))
    write_image(faulty, tmp_path / "chip1")
    r = evaluate(small_model, image, test, EvaluateConfig(bers=(0.02,), chips=2, images=(str(tmp_path / "chip1"),)),
                 progress=QUIET)
    sweep, ready = r["conditions"]
    assert ready["PA"]["per_chip"] == [sweep["PA"]["per_chip"][1]] and ready["chips"] == [str(tmp_path / "chip1")]
    assert ready["ber"] == 0.02 and ready["image_sha256"] == faulty.manifest.image_sha256

    m = image.manifest
    cells = np.random.default_rng(0).choice(m.stored_bits, size=m.stored_bits // 10, replace=False)
    (tmp_path / "map.json").write_text(json.dumps({
        "format": "nfedge-fault-map", "version": 1, "banks": m.banks, "geometry": {"rows": m.geometry.rows, "cols": m.geometry.cols},
        "maps": [{"voltage": 0.8, "flip": sorted(int(c) for c in cells)}]}))
    cfg = EvaluateConfig(voltages=(0.8,), chips=1, fault="map", fault_map=str(tmp_path / "map.json"))
    mapped = inject_faults(image, cfg.inject_config(cfg.conditions()[0], 0))[0]
    want = 100.0 * float((predict(small_model, mapped.dequantized_weights(), test[0]) == test[1]).float().mean())
    r = evaluate(small_model, image, test, cfg, progress=QUIET)
    assert r["conditions"][0]["PA"]["per_chip"] == [want] and r["conditions"][0]["chips"] == ["map"]
    assert want < r["clean"]["CA"]  # 10% flipped cells do hurt: the map was applied


def test_a_ready_image_of_another_layout_is_refused(small_model, tmp_path):
    write_image(build_image(small_model, 6), tmp_path / "six")
    cfg = EvaluateConfig(images=(str(tmp_path / "six"),))
    with pytest.raises(NfedgeError, match="does not fit this model: its bits differ"):
        evaluate(small_model, build_image(small_model, 8), _test_set(small_model, 10), cfg, progress=QUIET)


def test_integer_mode_scores_with_the_integer_reference(small_model):
    from nfedge.integer.calibrate import INPUT_SCALE, calibrate
    from nfedge.integer.program import trace_program
    from nfedge.integer.reference import image_codes, run_front, run_integer
    from nfedge.integer.scheme import quantize_to_int8

    image = build_image(small_model, 8)
    x, y = _test_set(small_model, 100)
    gen = create_generator("ConvT", in_channels=1).eval()
    progs = {"base": calibrate(trace_program(small_model, True), small_model, x[:50], image=image),
             "ConvT": calibrate(trace_program(gen, False), gen, x[:50])}
    cfg = EvaluateConfig(bers=(0.0, 0.02), chips=3, mode="integer")
    r = evaluate(small_model, image, (x, y), cfg, generators={"ConvT": gen}, progress=QUIET, programs=progs)
    x_q = quantize_to_int8(x.numpy(), INPUT_SCALE)
    faulty = inject_faults(image, InjectConfig(ber=0.02, chip=2))[0]
    want = 100.0 * float((run_integer(progs["base"], run_front(progs["ConvT"], x_q), image_codes(progs["base"], faulty))
                          .argmax(1) == y.numpy()).mean())
    assert r["mode"] == "integer"  # same predictions: accuracies agree to float32 rounding (one image = 1 point)
    assert r["conditions"][1]["generators"]["ConvT"]["PA_NF"]["per_chip"][2] == pytest.approx(want, abs=1e-4)
    assert r["conditions"][0]["PA"]["per_chip"] == [r["clean"]["CA"]] * 3  # BER 0: every chip is the clean image
    with pytest.raises(NfedgeError, match="integer programs"):
        evaluate(small_model, image, (x, y), cfg, progress=QUIET)
    with pytest.raises(NfedgeError, match="mode"):
        EvaluateConfig(bers=(0.1,), mode="int4")


def test_identical_images_are_scored_once(small_model, monkeypatch):
    from nfedge.analysis import evaluate as ev

    calls = []
    real = ev.predict
    monkeypatch.setattr(ev, "predict", lambda *a, **k: calls.append(1) or real(*a, **k))
    image = build_image(small_model, 8)
    r = evaluate(small_model, image, _test_set(small_model, 20), EvaluateConfig(bers=(0.0, 0.05), chips=4), progress=QUIET)
    assert len(calls) == 1 + 4  # the clean image (also every BER-0 chip) and the four faulty chips
    assert r["conditions"][0]["PA"]["per_chip"] == [r["clean"]["CA"]] * 4
