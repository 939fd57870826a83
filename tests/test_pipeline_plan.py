"""The plan stage of `nfedge run` at toy size (cnn-xs, a few steps, no target): its files, the report leading with
its table and plot, its cache key, and its config checks."""

import dataclasses
import json

import pytest
from conftest import run_nfedge

from nfedge.errors import NfedgeError
from nfedge.pipeline import RunConfig, RunPlanConfig, load_run_config, run_pipeline
from nfedge.progress import QUIET

TINY = {"base": {"model": "cnn-xs", "epochs": 1, "data": {"train_limit": 600, "test_limit": 200}},
        "generators": ["ConvT", "UIP"], "eopm": {"max_steps": 2, "n_perturbed": 2, "batch_size": 16}, "chips": 5,
        "voltages": [1.0, 0.917, 0.875], "eval_limit": 120, "target": "none",
        "plan": {"chips": 5, "confirm_chips": 5, "quantile": 0.2, "confidence": 0.6, "test_limit": 120,
                 "val_images": 100, "curve_step": 0.05, "msb": [2], "voltages": [0.875]}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("planrun")
    (d / "tiny.json").write_text(json.dumps(TINY))
    cfg = load_run_config(d / "tiny.json")
    return cfg, d / "out", run_pipeline(cfg, d / "out", progress=QUIET)


def test_plan_stage_writes_json_table_and_plot_before_the_sweep(run):
    _, out, r = run
    names = [s["name"] for s in r["stages"]]
    assert names.index("plan") < names.index("evaluate")
    (plan_dir,) = out.glob("plan-*")
    plan = json.loads((plan_dir / "plan.json").read_text())
    assert plan["format"] == "nfedge-plan" and plan["samples"] == 120 and plan["config"]["chips"] == 5
    assert [o["option"] for o in plan["options"]] == ["base", "base+ECC", "base+parity", "base+MSB2", "base 4-bit",
                                                       "base 4-bit@nominal", "ConvT", "UIP", "ConvT+MSB2", "UIP+MSB2"]
    # searched on 100 training images the base model (600 of them) did not train on, certified on the test images
    split = plan["images"]["validation"]
    assert plan["images"]["search_split"] == "validation" and split["images"] == 100 and split["disjoint_from_training"]
    assert split["trained_on"] == [{"train_limit": 600, "seed": 0}] and plan["fixed_voltages"][0]["voltage"] == 0.875
    assert plan["floor"] == pytest.approx(plan["clean"]["CA"] - 2.0) and plan["curve"] is not None
    assert (plan_dir / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    host = json.loads(next(out.glob("evaluate-*/evaluate.json")).read_text())
    assert plan["clean"]["CA"] == host["clean"]["CA"]  # the same 120 test images, the same scorer
    assert plan["clean"]["CA_NF"] == host["clean"]["CA_NF"]


def test_report_leads_with_the_plan(run):
    _, out, r = run
    (plan_dir,) = out.glob("plan-*")
    table = (plan_dir / "plan.md").read_text().strip()
    md = (out / "report" / "REPORT.md").read_text()
    assert table in md and md.index("## Operating points") < md.index(table) < md.index("## Accuracy against voltage")
    assert md.index("(plan.png)") < md.index("(accuracy_vs_voltage.png)")
    head = md[md.index("## Operating points"):md.index(table)] + table.split("\n")[0]
    assert "Certified answer" in head or "No option is certified" in head  # the report leads with the certificate
    plan = json.loads((plan_dir / "plan.json").read_text())
    s = plan["searched_winner"]
    if s and s != plan["winner"]:  # a headline the fresh chips refute never stands without "not certified"
        assert f"The search's best, {s}" in md and "**not certified**" in md
    assert (out / "report" / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "report" / "report_data.json").read_text())
    assert data["plan"] == json.loads((plan_dir / "plan.json").read_text())
    assert r["summary"]["plan_table"].strip() == table


def test_report_command_keeps_the_plan(run):
    _, out, _ = run
    (out / "report" / "plan.png").unlink()
    r = run_nfedge("report", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "report" / "plan.png").is_file() and "## Operating points" in (out / "report" / "REPORT.md").read_text()


def test_plan_key_follows_its_config_and_can_be_turned_off(run):
    cfg, out, _ = run
    again = run_pipeline(dataclasses.replace(cfg, plan=dataclasses.replace(cfg.plan, floor_drop=5.0)), out, progress=QUIET)
    ran = [s["name"] for s in again["stages"] if not s["reused"]]
    assert ran == ["plan"]  # only the plan re-runs
    assert len(list(out.glob("plan-*"))) == 2
    off = run_pipeline(dataclasses.replace(cfg, plan=dataclasses.replace(cfg.plan, enabled=False)), out, progress=QUIET)
    assert "plan" not in [s["name"] for s in off["stages"]] and off["summary"]["plan_table"] is None
    md = (out / "report" / "REPORT.md").read_text()
    assert "## Operating points" not in md and not (out / "report" / "plan.png").exists()


@pytest.mark.parametrize("plan, match", [({"chips": 3}, "3 chips cannot certify .* at least 59"),
                                         ({"quantile": 1.5}, "quantile"), ({"confidence": 1.0}, "confidence"),
                                         ({"floor_drop": -1.0}, "floor_drop"), ({"test_limit": 0}, "plan.test_limit"),
                                         ({"val_images": 0}, "plan.val_images")])
def test_bad_plan_config(plan, match):
    with pytest.raises(NfedgeError, match=match):
        RunPlanConfig(**plan)


def test_a_fault_map_run_needs_the_plan_off():
    with pytest.raises(NfedgeError, match="plan stage takes fault flip or stuck-at"):
        RunConfig(fault="map")
    assert RunConfig(fault="map", plan=RunPlanConfig(enabled=False)).fault == "map"
