"""A retrained base as a planner option (nfedge.analysis.plan_retrained): planned at the original's floor on the same
chips and images, priced on the same energy model, ranked at fixed voltages, never the no-retraining winner."""

import copy
import json

import pytest
import torch
from test_plan import FAST, TABLE_V, _row, _test_set, assert_one_line_error, nfedge

from nfedge.analysis.plan import BASE, PlanConfig, plan_operating_points
from nfedge.analysis.plan_retrained import RETRAINED, plan_retrained, retrained_image, retrained_label
from nfedge.analysis.plan_table import plan_markdown
from nfedge.errors import NfedgeError
from nfedge.models import create_base_model
from nfedge.progress import QUIET
from nfedge.sram.image import build_image
from nfedge.train.checkpoint import save_checkpoint


def _near_copy(model, seed=5, eps=0.02):
    """The same function nearly (weights moved by eps of their size): feasible at the original's floor."""
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(1 + eps * torch.randn(p.shape, generator=g))
    return m


def test_a_retrained_base_is_planned_at_the_originals_floor_on_the_same_energy_model(small_model):
    model, test = small_model, _test_set(small_model)
    image = build_image(model, 8)
    cfg = PlanConfig(**{**FAST, "ecc": False, "voltages": (TABLE_V,)})
    plan = plan_operating_points(model, image, test, cfg, progress=QUIET)
    other = _near_copy(model)
    merged = plan_retrained(plan, "base clip", other, retrained_image(other, image), test, cfg, progress=QUIET)
    # the retrained model planned on its own at the same absolute floor gives the same row
    alone = plan_operating_points(other, build_image(other, 8), test, PlanConfig(**{**FAST, "ecc": False,
                                  "voltages": (TABLE_V,), "floor": plan["floor"]}), progress=QUIET)
    row, ref = _row(merged, "base clip"), _row(alone, BASE)
    assert row["kind"] == RETRAINED and row["voltage"] == ref["voltage"] and row["certified"] == ref["certified"]
    assert row["certificate"] == ref["certificate"] and row["search"] == ref["search"]
    # one energy model: the base option's ES at that voltage
    assert row["feasible"]
    at = plan_operating_points(model, image, test, PlanConfig(**{**FAST, "ecc": False, "floor": 0.0,
                               "v_min": row["voltage"], "v_max": row["voltage"]}), progress=QUIET)
    assert row["energy_saving"] == _row(at, BASE)["energy_saving"]
    # the fixed voltage ranks it beside the others; the original plan's own answers are untouched
    fixed = merged["fixed_voltages"][0]
    assert "base clip" in [r["option"] for r in fixed["options"]]
    accs = [r["accuracy_at_rank"] for r in fixed["options"]]
    assert accs == sorted(accs, reverse=True)
    assert fixed["best_meeting_floor"] == plan["fixed_voltages"][0]["best_meeting_floor"]
    assert merged["winner"] == plan["winner"] and "base clip" not in [r["option"] for r in plan["options"]]
    certified = [r for r in merged["options"] if r["certified"]]
    assert merged["winner_with_retraining"] == (max(certified, key=lambda r: r["energy_saving"])["option"]
                                                if certified else None)
    assert "| base clip |" in plan_markdown(merged)


def test_a_retrained_base_below_the_floor_misses_it_everywhere_without_an_error(small_model):
    model, test = small_model, _test_set(small_model)
    image = build_image(model, 8)
    cfg = PlanConfig(**{**FAST, "ecc": False})
    plan = plan_operating_points(model, image, test, cfg, progress=QUIET)
    torch.manual_seed(3)
    stranger = create_base_model("cnn-xs", in_channels=1, num_classes=10).eval()  # labels are model's: near chance
    merged = plan_retrained(plan, "base randbet", stranger, retrained_image(stranger, image), test, cfg, progress=QUIET)
    row = _row(merged, "base randbet")
    assert row["clean_accuracy"] < plan["floor"] and not row["feasible"] and not row["certified"]
    assert merged["winner_with_retraining"] == merged["winner"]


def test_a_retrained_base_must_have_the_originals_tensors(small_model):
    image = build_image(small_model, 8)
    other = create_base_model("cnn-s", in_channels=1, num_classes=10).eval()
    with pytest.raises(NfedgeError, match="the original's weight tensors and shapes") as e:
        retrained_image(other, image)
    assert "\n" not in str(e.value)


def test_labels():
    assert retrained_label({"meta": {"config": {"robust": "randbet"}}}, "x") == "base randbet"
    assert retrained_label({"meta": {}}, "mine") == "retrained mine"


def test_cli_plans_a_retrained_base_and_refuses_a_wrong_one(tmp_path, checkpoint, small_model):
    img = tmp_path / "img"
    assert nfedge("quantize", "--checkpoint", checkpoint, "--out", img).returncode == 0
    robust = tmp_path / "robust.pt"
    save_checkpoint(robust, _near_copy(small_model), "cnn-xs", 1, 10, {"config": {"robust": "clip"}})
    args = ["plan", "--base", checkpoint, "--image", img, "--chips", 5, "--quantile", 0.2, "--confidence", 0.6,
            "--test-limit", 100, "--val-images", 0, "--no-parity", "--no-ecc", "--msb", 1, "--fewer-bits", 6,
            "--generator-msb", 0, "--floor", 5, "--v-min", 0.9, "--json"]
    r = nfedge(*args, "--retrained", robust)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert [o["option"] for o in res["options"]][-1] == "base clip" and res["options"][-1]["kind"] == RETRAINED
    assert res["inputs"]["retrained"]["base clip"]["path"] == str(robust)
    wrong = tmp_path / "wrong.pt"
    save_checkpoint(wrong, create_base_model("cnn-s", in_channels=1, num_classes=10), "cnn-s", 1, 10, {})
    assert_one_line_error(nfedge(*args, "--retrained", wrong), "the original's weight tensors and shapes")
