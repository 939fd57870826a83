"""`nfedge plan`: the voltage search, its accuracies against nfedge evaluate's, its energy figures against nfedge
energy's, bad input, and the command end to end on a tiny model."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from nfedge.analysis.energy import EnergyConfig, estimate_energy
from nfedge.analysis.evaluate import EvaluateConfig, evaluate
from nfedge.analysis.plan import BASE, ECC, PlanConfig, plan_operating_points
from nfedge.analysis.plan_table import plan_markdown
from nfedge.errors import NfedgeError
from nfedge.models import create_generator
from nfedge.progress import QUIET
from nfedge.sram.image import build_image
from nfedge.train.eopm import init_identity, save_generator

TABLE_V = 0.875  # a point of the sram-14nm table (BER 0.129%)


def _test_set(model, n=200):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():  # labels = the float model's own predictions: CA is high, faults pull it down
        y = model(x).argmax(1)
    return x, y


# Small q and low c keep the chip counts of these tests small (5 chips certify the 0.2 quantile at 0.6); fewer options
FAST = {"base": "cnn-xs", "chips": 5, "confirm_chips": 5, "quantile": 0.2, "confidence": 0.6, "parity": False,
        "msb": (), "fewer_bits": (), "generator_msb": 0}


def _plan(model, image, test, generators=None, validation=None, **kw):
    return plan_operating_points(model, image, test, PlanConfig(**{**FAST, **kw}), generators=generators, progress=QUIET,
                                 validation=validation)


def _row(result, label):
    return next(r for r in result["options"] if r["option"] == label)


@pytest.fixture
def setup(small_model):
    return small_model, build_image(small_model, 8), _test_set(small_model)


def test_floor_exactly_on_a_table_points_accuracy(setup):
    model, image, test = setup
    # The floor: the worst of 5 chips at the table voltage, from a real `evaluate` there.
    ev = evaluate(model, image, test, EvaluateConfig(voltages=(TABLE_V,), chips=5), progress=QUIET)
    floor = min(ev["conditions"][0]["PA"]["per_chip"])
    assert floor < ev["clean"]["CA"] - 1  # the table point matters: faults there cost accuracy
    # With the range ending at that point, the search returns exactly it: "meets" is >=, on the same numbers.
    r = _row(_plan(model, image, test, floor=floor, v_min=TABLE_V, ecc=False), BASE)
    assert r["voltage"] == TABLE_V and r["limited_by_range"] and r["search"]["accuracy_at_rank"] == floor
    assert r["search"]["per_chip"] == ev["conditions"][0]["PA"]["per_chip"]  # evaluate's simulation, chip by chip
    full = _row(_plan(model, image, test, floor=floor, ecc=False), BASE)
    assert full["voltage"] <= TABLE_V and full["search"]["accuracy_at_rank"] >= floor
    lo, hi = full["bracket"]
    assert hi == full["voltage"] and 0 < hi - lo <= 0.001
    trace = {t["voltage"]: t for t in full["trace"]}
    assert not trace[lo]["meets_floor"] and all(t["meets_floor"] and t["accuracy_at_rank"] >= floor
                                                and t["chips_measured"] == 5 for v, t in trace.items() if v >= hi)
    partial = [v for v, t in trace.items() if t["chips_measured"] < 5]
    assert partial and all(not trace[v]["meets_floor"] and trace[v]["chips_below_floor"] == 1 for v in partial)
    for v in partial[:2]:
        missed = evaluate(model, image, test, EvaluateConfig(voltages=(v,), chips=5), progress=QUIET)
        assert min(missed["conditions"][0]["PA"]["per_chip"]) < floor
    again = evaluate(model, image, test, EvaluateConfig(voltages=(full["voltage"],), chips=10), progress=QUIET)
    per_chip = again["conditions"][0]["PA"]["per_chip"]
    assert full["search"]["per_chip"] == per_chip[:5]  # search chips 0..4, fresh chips 5..9: evaluate's chips
    assert full["certificate"]["per_chip"] == per_chip[5: 5 + full["certificate"]["chips_measured"]]


def _fixed_accuracies(model, image, test, v, chips):
    ev = evaluate(model, image, test, EvaluateConfig(voltages=(v,), chips=chips), progress=QUIET)
    return ev["conditions"][0]["PA"]["per_chip"]


def test_certifies_with_59_passing_fresh_chips_and_refuses_with_58(setup):
    """q = 0.05, c = 0.95: the worst of 59 fresh chips must keep the floor. At one voltage (the range is a point),
    the floor is the worst of chips 0..117 there: all 59 fresh chips keep it (certified); the same floor plus a
    hair above the worst fresh chip fails it (so the test can fail); 58 fresh chips are refused outright."""
    model, image, test = setup
    x, y = test[0][:60], test[1][:60]
    acc = _fixed_accuracies(model, image, (x, y), TABLE_V, 118)
    search, fresh = acc[:59], acc[59:]
    kw = {**FAST, "quantile": 0.05, "confidence": 0.95, "chips": 59, "confirm_chips": 59, "ecc": False,
          "v_min": TABLE_V, "v_max": TABLE_V}
    ok = plan_operating_points(model, image, (x, y), PlanConfig(floor=min(acc), **kw), progress=QUIET)
    r = _row(ok, BASE)
    assert r["certified"] and r["certificate"]["failures"] == 0 and r["certificate"]["chips"] == 59
    assert r["certificate"]["per_chip"] == fresh and r["certificate"]["accuracy_at_rank"] == min(fresh)
    assert ok["winner"] == BASE and ok["certification"]["fresh_rank"] == 1
    assert ok["certification"]["fresh_confidence"] == pytest.approx(1 - 0.95 ** 59)
    if min(fresh) < min(search):  # a floor the 59 search chips keep and the worst fresh chip misses
        bad = plan_operating_points(model, image, (x, y), PlanConfig(floor=min(fresh) + 1e-6, **kw), progress=QUIET)
        rb = _row(bad, BASE)
        assert rb["feasible"] and not rb["certified"] and rb["certificate"]["failures"] == 1 and bad["winner"] is None
        assert "not certified" in plan_markdown(bad) and "No option is certified" in plan_markdown(bad)
    with pytest.raises(NfedgeError, match="58 chips cannot certify .* needs at least 59") as e:
        PlanConfig(**{**kw, "confirm_chips": 58})
    assert "\n" not in str(e.value)


def test_every_options_energy_is_nfedge_energys(setup):
    model, image, test = setup
    gen = init_identity(create_generator("ConvT", in_channels=1)).eval()  # F(x) = x: CA(NF) = CA
    res = _plan(model, image, test, generators={"ConvT": ("ConvT", gen)}, floor_drop=5.0, parity=True, msb=(2,),
                fewer_bits=(6,), generator_msb=2, v_min=0.85)
    assert res["clean"]["CA_NF"]["ConvT"] == res["clean"]["CA"]
    frac = {BASE: (1, 0), ECC: (72 / 64, 0), "base+parity": (65 / 64, 0), "base+MSB2": (6 / 8, 2 / 8),
            "base 6-bit": (6 / 8, 0), "base 6-bit@nominal": (0, 6 / 8), "ConvT": (1, 0), "ConvT+MSB2": (6 / 8, 2 / 8)}
    assert [r["option"] for r in res["options"]] == list(frac)
    for r in res["options"]:
        if not r["feasible"]:
            continue
        e = estimate_energy(EnergyConfig(base="cnn-xs", generator=r["generator"], input="1x32x32", voltage=r["voltage"]))
        assert (r["ber"], r["r"]) == (e["ber"], e["r"])
        f_low, f_nom = frac[r["option"]]
        g = (e["generator_weight_accesses"] or 0) / e["base_weight_accesses"]
        gm = (e["generator_macs"] or 0) / e["base_macs"]
        if (f_low, f_nom) == (1, 0):
            assert (r["energy_saving"], r["mac_energy_saving"]) == (e["energy_saving"], e["mac_energy_saving"])
        assert r["energy_saving"] == pytest.approx(1 - f_low * e["r"] - f_nom - g, abs=1e-12)
        assert r["mac_energy_saving"] == pytest.approx(1 - f_low * e["r"] - f_nom - gm, abs=1e-12)
        assert r["accesses"]["low_voltage"] == pytest.approx(f_low * e["base_weight_accesses"])
    assert _row(res, "base 6-bit@nominal")["voltage"] in (None, 1.0)
    assert _row(res, ECC)["cells"]["low_voltage"] == 72 * -(-image.manifest.total_bytes // 8)
    assert _row(res, "base+MSB2")["cells"] == {"low_voltage": 6 * image.manifest.total_bytes,
                                               "nominal": 2 * image.manifest.total_bytes}
    assert _row(res, "ConvT")["voltage"] == _row(res, BASE)["voltage"]  # the identity generator: the same weights
    best = max((r for r in res["options"] if r["certified"]), key=lambda r: r["energy_saving"], default=None)
    assert res["winner"] == (best["option"] if best else None)
    assert res["config"]["kind"] == "PlanConfig" and res["seeds"]["search_chips"] == [0, 1, 2, 3, 4]
    assert res["seeds"]["confirm_chips"] == [5, 6, 7, 8, 9] and set(res["versions"]) == {"nfedge", "torch", "numpy"}


def test_fixed_voltage_ranks_options_by_certified_accuracy(setup):
    model, image, test = setup
    res = _plan(model, image, test, floor_drop=5.0, msb=(2,), voltages=(TABLE_V,))
    (f,) = res["fixed_voltages"]
    accs = [r["accuracy_at_rank"] for r in f["options"]]
    assert f["voltage"] == TABLE_V and accs == sorted(accs, reverse=True)
    base = next(r for r in f["options"] if r["option"] == BASE)
    assert base["per_chip"] == _fixed_accuracies(model, image, test, TABLE_V, 10)[5:]  # the fresh chips 5..9
    assert base["accuracy_at_rank"] == min(base["per_chip"])  # rank 1 of 5 at q = 0.2, c = 0.6
    assert "At fixed 0.875 V/Vmin" in plan_markdown(res)


def test_validation_split_moves_the_search_floor(setup):
    model, image, test = setup
    val = (test[0][:100], test[1][:100])
    res = _plan(model, image, (test[0][100:], test[1][100:]), validation=val, floor_drop=3.0, ecc=False)
    assert res["images"]["search_split"] == "validation" and res["images"]["validation_images"] == 100
    assert res["floor_validation"] == pytest.approx(res["floor"] + res["clean"]["CA_validation"] - res["clean"]["CA"])
    r = _row(res, BASE)
    if r["feasible"]:
        assert r["search"]["accuracy_at_rank"] >= res["floor_validation"]


def test_curve_is_monotone(setup):
    model, image, test = setup
    res = _plan(model, image, test, curve=True, curve_step=0.01, curve_drop=10, v_min=0.8, ecc=False, curve_chips=5)
    c = res["curve"]["options"][BASE]
    assert len(res["curve"]["floors"]) == 11 and res["curve"]["floors"][0] == res["clean"]["CA"]
    volts = [v for v in c["voltage"] if v is not None]
    assert volts == sorted(volts, reverse=True) and len(volts) == 11  # a lower floor never needs a higher voltage
    es = c["energy_saving"]
    assert es == sorted(es) and es[0] >= 0


def test_config_round_trip():
    cfg = PlanConfig(base="cnn-xs", floor=80.0, quantile=0.1, confidence=0.9, chips=30, confirm_chips=22, v_min=0.8,
                     fault="stuck-at", ecc_uncorrectable="keep", msb=(3,), fewer_bits=(4, 6), voltages=(0.875, 0.833))
    assert PlanConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("kw, match", [
    ({"quantile": 0.0}, "quantile must be in"), ({"quantile": 1.0}, "quantile must be in"),
    ({"quantile": -0.5}, "quantile must be in"), ({"confidence": 0.0}, "confidence must be in"),
    ({"confidence": 1.0}, "confidence must be in"), ({"chips": 20}, "20 chips cannot certify .* at least 59"),
    ({"v_min": 0.9, "v_max": 0.8}, "empty voltage range"), ({"v_min": 1.1}, "empty voltage range"),
    ({"v_max": 0.6}, "empty voltage range"), ({"floor": 120.0}, "floor must be"),
    ({"fault": "map"}, "flip or stuck-at"), ({"tolerance": 0.0}, "tolerance"), ({"voltages": (0.5,)}, "outside"),
    ({"ecc_uncorrectable": "retry"}, "ecc_uncorrectable"), ({"base": "nope"}, "unknown base model"),
    ({"msb": (8,)}, "msb must be"), ({"fewer_bits": (1,)}, "bits"),
])
def test_bad_config(kw, match):
    with pytest.raises(NfedgeError, match=match) as e:
        PlanConfig(**kw)
    assert "\n" not in str(e.value)


def test_floor_above_clean_accuracy(setup):
    model, image, test = setup
    with pytest.raises(NfedgeError, match="above the base model's clean accuracy") as e:
        _plan(model, image, test, floor=100.0)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ the CLI


def nfedge(*args):
    return subprocess.run([sys.executable, "-m", "nfedge", *map(str, args)], capture_output=True, text=True, check=False)


def assert_one_line_error(r, match):
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nfedge: error:") and match in lines[0], r.stderr


@pytest.fixture
def cli_inputs(tmp_path, checkpoint):
    img = tmp_path / "img"
    assert nfedge("quantize", "--checkpoint", checkpoint, "--out", img).returncode == 0
    gen = tmp_path / "convt.pt"
    save_generator(gen, init_identity(create_generator("ConvT", in_channels=1)), "ConvT", 1, (32, 32), {})
    return checkpoint, img, gen


@pytest.mark.parametrize("args, match", [
    (["--floor", 101], "floor must be"), (["--chips", 58], "needs at least 59"),
    (["--quantile", 1.5], "quantile must be in"), (["--confidence", 0], "confidence must be in"),
    (["--confirm-chips", 10, "--quantile", 0.3, "--confidence", 0.99], "needs at least 13"),
    (["--v-min", 0.9, "--v-max", 0.8], "empty voltage range"), (["--v-min", 1.2], "above the highest voltage of calibration"),
    (["--floor", 50, "--floor-drop", 3], "not both"),
])
def test_cli_bad_input(tmp_path, cli_inputs, args, match):
    base, img, _ = cli_inputs
    out = tmp_path / "plan.json"
    assert_one_line_error(nfedge("plan", "--base", base, "--image", img, "--out", out, *args), match)
    assert not out.exists()


@pytest.mark.slow
def test_cli_end_to_end(tmp_path, cli_inputs):
    """cnn-xs (untrained: Fashion-MNIST CA near chance, so the numbers mean little; the wiring is the point),
    200 test images, 5 chips, the plot and the table; energy equal to `nfedge energy` at each voltage found."""
    base, img, gen = cli_inputs
    out, png, md = tmp_path / "plan.json", tmp_path / "plan.png", tmp_path / "plan.md"
    r = nfedge("plan", "--base", base, "--image", img, "--generator", gen, "--chips", 5, "--quantile", 0.2,
               "--confidence", 0.6, "--test-limit", 200, "--val-images", 0, "--no-parity", "--msb", 2,
               "--fewer-bits", 6, "--generator-msb", 0, "--voltage", 0.875, "--v-min", 0.85, "--floor-drop", 1,
               "--json", "--out", out, "--plot", png, "--plot-step", 0.05, "--table", md)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res == json.loads(out.read_text())
    assert res["samples"] == 200 and res["inputs"]["data"]["test_limit"] == 200
    assert [o["option"] for o in res["options"]] == [BASE, ECC, "base+MSB2", "base 6-bit", "base 6-bit@nominal", "ConvT"]
    assert res["images"]["search_split"] == "test" and res["seeds"]["confirm_chips"] == [5, 6, 7, 8, 9]
    assert res["fixed_voltages"][0]["voltage"] == 0.875
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = md.read_text()
    assert "| base |" in table and "| ConvT |" in table and ("Certified answer" in table or "No option" in table)
    for o in (o for o in res["options"] if o["feasible"] and o["kind"] in ("none", "generator")):
        e = nfedge("energy", "--base", base, "--generator", o["generator"] or "none", "--input", "1x32x32",
                   "--voltage", repr(o["voltage"]), "--json")
        assert e.returncode == 0, e.stderr
        e = json.loads(e.stdout)
        assert (o["energy_saving"], o["mac_energy_saving"]) == (e["energy_saving"], e["mac_energy_saving"])
    assert np.isfinite([o["voltage"] for o in res["options"] if o["feasible"]]).all()


def test_a_shared_scorer_gives_the_same_plans_and_scores_less(setup):
    from nfedge.analysis.evaluate import ImageScorer

    model, image, test = setup
    kw = {**FAST, "confirm_chips": 3, "confidence": 0.45}
    alone = [plan_operating_points(model, image, test, PlanConfig(floor_drop=d, **kw), progress=QUIET) for d in (2.0, 5.0)]
    score = ImageScorer(model, test, {}, 256)
    shared = [plan_operating_points(model, image, test, PlanConfig(floor_drop=d, **kw), progress=QUIET, score=score)
              for d in (2.0, 5.0)]
    for a, b in zip(alone, shared):
        assert [r["voltage"] for r in a["options"]] == [r["voltage"] for r in b["options"]]
        assert [r["search"] for r in a["options"]] == [r["search"] for r in b["options"]]
    assert shared[0]["scored_images"] == alone[0]["scored_images"] > 0
    assert shared[1]["scored_images"] < alone[1]["scored_images"]  # the CA - 2 plan's images are not scored again
    assert len(score) == shared[0]["scored_images"] + shared[1]["scored_images"]
    with pytest.raises(NfedgeError, match="shared scorer"):
        plan_operating_points(model, image, (test[0], test[1].clone()), PlanConfig(**kw), progress=QUIET, score=score)
