import numpy as np
import pytest
import torch

from nfedge.analysis.evaluate import EvaluateConfig, evaluate, predict, summarize
from nfedge.errors import NfedgeError
from nfedge.models import create_generator
from nfedge.progress import QUIET
from nfedge.sram.faults import InjectConfig, inject_faults
from nfedge.sram.image import build_image
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
