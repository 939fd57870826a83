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
from nfedge.analysis.plan import BASE, ECC, PlanConfig, chip_quantile, plan_operating_points, quantile_rank
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


def _plan(model, image, test, generators=None, **kw):
    kw = {"base": "cnn-xs", "chips": 5, "confirm_chips": 0, **kw}
    return plan_operating_points(model, image, test, PlanConfig(**kw), generators=generators, progress=QUIET)


def _row(result, label):
    return next(r for r in result["options"] if r["option"] == label)


@pytest.fixture
def setup(small_model):
    return small_model, build_image(small_model, 8), _test_set(small_model)


def test_quantile_is_an_order_statistic():
    assert [quantile_rank(q, k) for q, k in [(0.05, 20), (0.05, 100), (0.05, 5), (0.2, 5), (0.21, 5), (0.5, 5)]] == \
        [1, 5, 1, 1, 2, 3]
    assert chip_quantile([5.0, 1.0, 4.0, 2.0, 3.0], 0.5) == 3.0


def test_floor_exactly_on_a_table_points_accuracy(setup):
    model, image, test = setup
    # The floor: the worst of 5 chips (q = 0.05) at the table voltage, from a real `evaluate` there.
    ev = evaluate(model, image, test, EvaluateConfig(voltages=(TABLE_V,), chips=5), progress=QUIET)
    floor = min(ev["conditions"][0]["PA"]["per_chip"])
    assert floor < ev["clean"]["CA"] - 1  # the table point matters: faults there cost accuracy
    # With the range ending at that point, the search returns exactly it: "meets" is >=, on the same numbers.
    r = _row(_plan(model, image, test, floor=floor, v_min=TABLE_V, ecc=False), BASE)
    assert r["voltage"] == TABLE_V and r["limited_by_range"] and r["accuracy"]["quantile"] == floor
    assert r["accuracy"]["per_chip"] == ev["conditions"][0]["PA"]["per_chip"]  # evaluate's simulation, chip by chip
    # Over the whole table it may go lower, never higher, and it brackets a measured crossing.
    full = _row(_plan(model, image, test, floor=floor, ecc=False), BASE)
    assert full["voltage"] <= TABLE_V and full["accuracy"]["quantile"] >= floor
    lo, hi = full["bracket"]
    assert hi == full["voltage"] and 0 < hi - lo <= 0.001
    trace = {t["voltage"]: t for t in full["trace"]}
    assert not trace[lo]["meets_floor"] and all(t["meets_floor"] and t["quantile"] >= floor and t["chips_measured"] == 5
                                                for v, t in trace.items() if v >= hi)
    # Where the search stopped measuring (the first chip below the floor decides the worst of 5), evaluate on
    # every chip agrees that the voltage misses the floor.
    partial = [v for v, t in trace.items() if t["chips_measured"] < 5]
    assert partial and all(not trace[v]["meets_floor"] and trace[v]["chips_below_floor"] == 1 for v in partial)
    for v in partial[:2]:
        missed = evaluate(model, image, test, EvaluateConfig(voltages=(v,), chips=5), progress=QUIET)
        assert min(missed["conditions"][0]["PA"]["per_chip"]) < floor
    assert full["accuracy"]["chips_meeting_floor"] == 5  # the quantile is the worst of 5 chips: all meet
    # the voltage found, re-measured by `evaluate`: the same per-chip accuracies
    again = evaluate(model, image, test, EvaluateConfig(voltages=(full["voltage"],), chips=5), progress=QUIET)
    assert full["accuracy"]["per_chip"] == again["conditions"][0]["PA"]["per_chip"]


def test_energy_figures_are_nfedge_energys(setup):
    model, image, test = setup
    gen = init_identity(create_generator("ConvT", in_channels=1)).eval()  # F(x) = x: CA(NF) = CA
    res = _plan(model, image, test, generators={"ConvT": ("ConvT", gen)}, floor_drop=5.0, confirm_chips=5)
    assert res["clean"]["CA_NF"]["ConvT"] == res["clean"]["CA"]
    for r in res["options"]:
        assert r["feasible"], r["option"]
        e = estimate_energy(EnergyConfig(base="cnn-xs", generator=r["generator"], input="1x32x32", voltage=r["voltage"]))
        assert (r["ber"], r["r"]) == (e["ber"], e["r"])
        if r["option"] == ECC:  # Eq. 6 with 72/64 of the base model's accesses at the low voltage
            assert r["energy_saving"] == pytest.approx(1 - 72 / 64 * e["r"], abs=1e-12)
            assert r["mac_energy_saving"] == pytest.approx(1 - 72 / 64 * e["r"], abs=1e-12)
            assert r["ecc"]["words"] == -(-image.manifest.total_bytes // 8) and r["ecc"]["uncorrectable"] == "zero"
        else:
            assert (r["energy_saving"], r["mac_energy_saving"]) == (e["energy_saving"], e["mac_energy_saving"])
        assert r["confirm"]["chip_seeds"] == [5, 6, 7, 8, 9] and len(r["confirm"]["per_chip"]) == 5
    # the base alone and behind the identity generator see the same weights and inputs: the same voltage,
    # and the generator's weight reads make it the worse option there
    assert _row(res, "ConvT")["voltage"] == _row(res, BASE)["voltage"]
    assert _row(res, "ConvT")["energy_saving"] < _row(res, BASE)["energy_saving"]
    best = max((r for r in res["options"]), key=lambda r: r["energy_saving"])["option"]
    assert res["winner"] == best
    assert res["winner_confirmed"] == _row(res, best)["confirm"]["meets_floor"]
    assert res["config"]["kind"] == "PlanConfig" and res["seeds"]["search_chips"] == [0, 1, 2, 3, 4]
    assert set(res["versions"]) == {"nfedge", "torch", "numpy"}


def test_curve_is_monotone(setup):
    model, image, test = setup
    res = _plan(model, image, test, curve=True, curve_step=0.01, curve_drop=10, v_min=0.8, ecc=False)
    c = res["curve"]["options"][BASE]
    assert len(res["curve"]["floors"]) == 11 and res["curve"]["floors"][0] == res["clean"]["CA"]
    volts = [v for v in c["voltage"] if v is not None]
    assert volts == sorted(volts, reverse=True) and len(volts) == 11  # a lower floor never needs a higher voltage
    es = c["energy_saving"]
    assert es == sorted(es) and es[0] >= 0


def test_config_round_trip():
    cfg = PlanConfig(base="cnn-xs", floor=80.0, quantile=0.1, chips=7, v_min=0.8, fault="stuck-at",
                     ecc_uncorrectable="keep")
    assert PlanConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("kw, match", [
    ({"quantile": 0.0}, "quantile must be in"), ({"quantile": 1.0}, "quantile must be in"),
    ({"quantile": -0.5}, "quantile must be in"), ({"chips": 4}, "at least|>= 5"),
    ({"v_min": 0.9, "v_max": 0.8}, "empty voltage range"), ({"v_min": 1.1}, "empty voltage range"),
    ({"v_max": 0.6}, "empty voltage range"), ({"floor": 120.0}, "floor must be"),
    ({"fault": "map"}, "flip or stuck-at"), ({"tolerance": 0.0}, "tolerance"),
    ({"ecc_uncorrectable": "retry"}, "ecc_uncorrectable"), ({"base": "nope"}, "unknown base model"),
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
    (["--floor", 101], "floor must be"), (["--chips", 4], ">= 5"), (["--quantile", 1.5], "quantile must be in"),
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
    r = nfedge("plan", "--base", base, "--image", img, "--generator", gen, "--chips", 5, "--confirm-chips", 0,
               "--test-limit", 200, "--v-min", 0.85, "--floor-drop", 1, "--json", "--out", out, "--plot", png,
               "--plot-step", 0.05, "--table", md)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res == json.loads(out.read_text())
    assert res["samples"] == 200 and res["inputs"]["data"]["test_limit"] == 200
    assert [o["option"] for o in res["options"]] == [BASE, ECC, "ConvT"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = md.read_text()
    assert "| base |" in table and "| ConvT |" in table and "Winner" in table
    for o in (o for o in res["options"] if o["feasible"] and o["option"] != ECC):
        e = nfedge("energy", "--base", base, "--generator", o["generator"] or "none", "--input", "1x32x32",
                   "--voltage", repr(o["voltage"]), "--json")
        assert e.returncode == 0, e.stderr
        e = json.loads(e.stdout)
        assert (o["energy_saving"], o["mac_energy_saving"]) == (e["energy_saving"], e["mac_energy_saving"])
    assert np.isfinite([o["voltage"] for o in res["options"] if o["feasible"]]).all()


def test_a_shared_scorer_gives_the_same_plans_and_scores_less(setup):
    from nfedge.analysis.evaluate import ImageScorer

    model, image, test = setup
    kw = {"base": "cnn-xs", "chips": 5, "confirm_chips": 2}
    alone = [plan_operating_points(model, image, test, PlanConfig(floor_drop=d, **kw), progress=QUIET) for d in (2.0, 5.0)]
    score = ImageScorer(model, test, {}, 256)
    shared = [plan_operating_points(model, image, test, PlanConfig(floor_drop=d, **kw), progress=QUIET, score=score)
              for d in (2.0, 5.0)]
    for a, b in zip(alone, shared):
        assert [r["voltage"] for r in a["options"]] == [r["voltage"] for r in b["options"]]
        assert [r["accuracy"] for r in a["options"]] == [r["accuracy"] for r in b["options"]]
    assert shared[0]["scored_images"] == alone[0]["scored_images"] > 0
    assert shared[1]["scored_images"] < alone[1]["scored_images"]  # the CA - 2 plan's images are not scored again
    assert len(score) == shared[0]["scored_images"] + shared[1]["scored_images"]
    with pytest.raises(NfedgeError, match="shared scorer"):
        plan_operating_points(model, image, (test[0], test[1].clone()), PlanConfig(**kw), progress=QUIET, score=score)
