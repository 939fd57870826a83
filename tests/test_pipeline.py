"""`nfedge run` end to end at toy size (cnn-xs, a few steps), target included; the report's files checked."""

import json

import pytest

from nfedge.pipeline import RunConfig, load_run_config, run_pipeline
from nfedge.progress import QUIET

pytestmark = [pytest.mark.slow, pytest.mark.emulator]

TOY = {"base": {"model": "cnn-xs", "epochs": 1, "data": {"train_limit": 1500, "test_limit": 300}},
       "generators": ["ConvT", "UIP"], "eopm": {"max_steps": 3, "n_perturbed": 2, "batch_size": 16}, "chips": 2,
       "voltages": [1.0, 0.875, 0.833], "eval_limit": 200, "target_voltages": [0.833], "target_chips": 1,
       "target_samples": 4, "plan": {"chips": 5, "confirm_chips": 5, "quantile": 0.2, "confidence": 0.6, "test_limit": 100,
                "val_images": 100, "curve_step": 0.05, "parity": False, "msb": [], "fewer_bits": [],
                "generator_msb": 0, "voltages": []}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    (d / "toy.json").write_text(json.dumps(TOY))
    cfg = load_run_config(d / "toy.json")
    return cfg, d, run_pipeline(cfg, d / "out", progress=QUIET)


def test_config_merges_onto_default(run):
    cfg, _, _ = run
    assert cfg.base.model == "cnn-xs" and cfg.base.bits == RunConfig().base.bits and cfg.target == "arm-cortex"


def test_report_files_hold_the_plotted_numbers(run):
    _, d, r = run
    rep = d / "out" / "report"
    for png in ("accuracy_vs_voltage.png", "energy_tradeoff.png", "chip_spread.png"):
        data = (rep / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    plotted = json.loads((rep / "report_data.json").read_text())
    host = json.loads(next((d / "out").glob("evaluate-*/evaluate.json")).read_text())
    assert plotted["voltages"] == [1.0, 0.875, 0.833]
    assert plotted["series"]["base alone"]["mean"] == [c["PA"]["mean"] for c in host["conditions"]]
    assert plotted["series"]["ConvT"]["std"] == [c["generators"]["ConvT"]["PA_NF"]["std"] for c in host["conditions"]]
    assert plotted["chip_spread"]["UIP"] == host["conditions"][2]["generators"]["UIP"]["PA_NF"]["per_chip"]
    assert plotted["target"]["points"][0]["agreement"]["base"]["identical_fraction"] == 1.0
    assert "| 0.833 |" in (rep / "REPORT.md").read_text()


def test_second_run_reuses_every_stage(run):
    cfg, d, first = run
    again = run_pipeline(cfg, d / "out", progress=QUIET)
    assert [s["name"] for s in again["stages"]] == [s["name"] for s in first["stages"]]
    assert all(s["reused"] for s in again["stages"])


def test_a_users_data_enters_the_base_key_by_content(tmp_path):
    """Adding a file under the same data root changes the digest (nfedge run re-trains); named sets add nothing."""
    from nfedge.data import DataConfig
    from nfedge.data.datasets import content_digest

    (tmp_path / "d.npz").write_bytes(b"one")
    cfg = DataConfig(dataset="npz", root=str(tmp_path))
    first = content_digest(cfg)
    (tmp_path / "extra.txt").write_bytes(b"two")
    assert content_digest(cfg) != first and len(first) == 64
    assert content_digest(DataConfig()) is None


def test_target_runs_in_both_modes_integer_first(run):
    _, d, r = run
    names = [s["name"] for s in r["stages"]]
    assert names[-4:] == ["build-integer", "faultrun-integer", "build-weight-only", "faultrun-weight-only"]
    plotted = json.loads((d / "out" / "report" / "report_data.json").read_text())
    assert plotted["target"]["mode"] == "integer" and [m["mode"] for m in plotted["target_modes"]] == ["integer", "weight-only"]
    assert plotted["target_modes"][0]["identical_outputs"] == 1.0  # integer: bit for bit
    md = (d / "out" / "report" / "REPORT.md").read_text()
    assert "integer mode" in md and "weight-only: instructions" in md and "identical to the host reference: 100.0%" in md
