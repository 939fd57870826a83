"""`nfedge run` as a table: every stage keyed by the one key function, a change re-running exactly the stages
downstream of it; `nfedge report` finding this run's stages by their keys; and a run on a user's checkpoint taking
the data set that checkpoint records (issue 28)."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_nfedge

from nfedge.data import DataConfig
from nfedge.errors import NfedgeError
from nfedge.models import create_base_model
from nfedge.pipeline import (
    STAGES,
    RunConfig,
    check_base_data,
    load_run_config,
    resolve_stages,
    rewrite_report,
    run_pipeline,
    stage_key,
)
from nfedge.progress import QUIET
from nfedge.train.checkpoint import load_checkpoint, save_checkpoint

# The cheapest run there is: a few hundred images, one input-perturbation generator for one step, no plan, no target.
TINY = {"base": {"model": "cnn-xs", "epochs": 1, "data": {"train_limit": 200, "test_limit": 40}},
        "generators": ["UIP"], "eopm": {"max_steps": 1, "n_perturbed": 1, "batch_size": 8}, "chips": 1,
        "voltages": [1.0, 0.875], "eval_limit": 40, "target": "none", "plan": {"enabled": False}}

TABLE = ('format = "nfedge-sram-calibration"\nversion = 1\nname = "mine"\nsource = "test"\n'
         "voltage = [0.75, 0.85, 1.0]\nber = [0.05, 0.01, 0.0]\nenergy_per_access = [0.6, 0.75, 1.0]\n")


def keys(cfg: RunConfig) -> dict[str, str]:
    return {p.name: p.key for p in resolve_stages(cfg)}


def downstream(cfg: RunConfig, names: set[str]) -> set[str]:
    """`names` and every stage that reads one of them, directly or through others (from the resolved table)."""
    out = set(names)
    for p in resolve_stages(cfg):  # run order: a stage's inputs come before it
        for s in p.inputs.values():
            if any(t.name in out for t in (s.values() if isinstance(s, dict) else [s])):
                out.add(p.name)
    return out


def test_every_key_is_stage_key_of_its_config_and_inputs():
    planned = resolve_stages(RunConfig())
    assert [p.name for p in planned] == [
        "base", "image", "gen-ConvT", "gen-UNetT", "gen-UIP", "plan", "evaluate",
        "build-integer", "faultrun-integer", "build-weight-only", "faultrun-weight-only"]
    by_name = {p.name: p for p in planned}
    for p in planned:
        ins = {i: s.key if not isinstance(s, dict) else [[v, t.key] for v, t in s.items()] for i, s in p.inputs.items()}
        assert p.key == stage_key(p.config, ins) and p.dir == f"{p.name}-{p.key}"
        assert p.config == p.spec.config(RunConfig(), p.variant) and p.spec in STAGES
    assert by_name["faultrun-integer"].inputs == {"build": by_name["build-integer"]}
    assert list(by_name["evaluate"].inputs["gen"]) == ["ConvT", "UNetT", "UIP"]


@pytest.mark.parametrize("change, first", [
    ({"base": {"epochs": 2}}, {"base"}),
    ({"bits": 6}, {"image", "build-integer", "build-weight-only"}),
    ({"eopm": {"lam": 3.0}}, {"gen-ConvT", "gen-UNetT", "gen-UIP"}),
    ({"plan": {"floor_drop": 5.0}}, {"plan"}),
    ({"chips": 3}, {"evaluate"}),
    ({"eval_limit": 100}, {"evaluate"}),
    ({"fault": "stuck-at"}, {"plan", "evaluate", "faultrun-integer", "faultrun-weight-only"}),
    ({"target": "cortex-m55"}, {"build-integer", "build-weight-only"}),
    ({"target_samples": 8}, {"faultrun-integer", "faultrun-weight-only"}),
    ({"generators": ["UIP", "ConvT", "UNetT"]}, {"plan", "evaluate", "build-integer", "build-weight-only"}),
])
def test_a_change_rekeys_its_stages_and_exactly_those_downstream(change, first):
    """`first`: the stages whose own config (or list of inputs: the generators' order) the change reaches. Every stage
    downstream of them gets a new key (it reads their files), and every other stage keeps its key (a re-run reuses
    it)."""
    base = RunConfig()
    merged = json.loads(json.dumps(base.to_dict()))
    for k, v in change.items():
        merged[k] = {**merged[k], **v} if isinstance(v, dict) else v
    changed = RunConfig.from_dict(merged)
    before, after = keys(base), keys(changed)
    old = {p.name: p for p in resolve_stages(base)}
    reads = lambda p: {i: list(s) if isinstance(s, dict) else s.name for i, s in p.inputs.items()}  # noqa: E731
    assert {p.name for p in resolve_stages(changed) if (p.config, reads(p)) != (old[p.name].config, reads(old[p.name]))} \
        == first
    assert {n for n in before if before[n] != after[n]} == downstream(base, first)


def test_a_files_content_is_part_of_the_keys_it_feeds(tmp_path):
    """Editing a user's SRAM table re-keys every stage that reads the table, and those downstream of them."""
    table = tmp_path / "mine.toml"
    table.write_text(TABLE)
    cfg = RunConfig(calibration=str(table), voltages=(1.0, 0.85), target_voltages=(0.85,))
    before = keys(cfg)
    table.write_text(TABLE.replace("0.01,", "0.02,"))
    after = keys(cfg)
    assert {n for n in before if before[n] != after[n]} == downstream(
        cfg, {"gen-ConvT", "gen-UNetT", "gen-UIP", "plan", "evaluate", "faultrun-integer", "faultrun-weight-only"})
    assert before["base"] == after["base"] and before["image"] == after["image"]


@pytest.mark.slow
def test_report_shows_the_runs_own_stages_after_another_config(tmp_path):
    """Run A, then B, then A again (all reused): `nfedge report` shows A's stages, not B's (the newest on disk)."""
    (tmp_path / "a.json").write_text(json.dumps(TINY))
    a = load_run_config(tmp_path / "a.json")
    b = dataclasses.replace(a, base=dataclasses.replace(a.base, seed=1))
    out = tmp_path / "out"
    run_pipeline(a, out, progress=QUIET)
    run_pipeline(b, out, progress=QUIET)
    third = run_pipeline(a, out, progress=QUIET)
    assert all(s["reused"] for s in third["stages"])
    recorded = json.loads((out / "stages.json").read_text())
    assert [out / s["dir"] for s in recorded["stages"]] == [Path(s["path"]) for s in third["stages"]]
    data, md = (out / "report" / "report_data.json").read_text(), (out / "report" / "REPORT.md").read_text()
    base_a = load_checkpoint(out / recorded["stages"][0]["dir"] / "base.pt")[1]["meta"]["test_accuracy"]
    assert f"clean test accuracy {100 * base_a:.2f}%" in md
    r = run_nfedge("report", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "report" / "REPORT.md").read_text() == md
    assert (out / "report" / "report_data.json").read_text() == data


def test_report_needs_the_runs_stage_list_and_its_stages(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps(RunConfig().to_dict()))  # an older nfedge's run: no stages.json
    with pytest.raises(NfedgeError, match="no stages.json"):
        rewrite_report(tmp_path)
    planned = resolve_stages(RunConfig())
    (tmp_path / "stages.json").write_text(json.dumps({
        "format": "nfedge-run-stages", "version": 1, "config": RunConfig().to_dict(),
        "stages": [{"name": p.name, "stage": p.spec.name, "variant": p.variant, "key": p.key, "dir": p.dir}
                   for p in planned]}))
    with pytest.raises(NfedgeError, match=f"stage base of this run has not finished \\({planned[0].dir}\\)"):
        rewrite_report(tmp_path)


# ------------------------------------------------------------------ a user's checkpoint and its data set (issue 28)


@pytest.fixture
def digits(tmp_path):
    """An npz data set (10 classes of 28x28 grey images) and a cnn-xs checkpoint that records it, as import-model
    --dataset npz --data-root digits.npz or train-base on it would."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (60, 28, 28), dtype=np.uint8), "y_train": np.arange(60) % 10,
              "x_test": rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), "y_test": np.arange(30) % 10}
    np.savez(tmp_path / "digits.npz", **arrays)
    data = DataConfig(dataset="npz", root=str(tmp_path / "digits.npz"))
    torch.manual_seed(0)
    path = tmp_path / "digits.pt"
    save_checkpoint(path, create_base_model("cnn-xs", 1, 10), "cnn-xs", 1, 10,
                    {"config": {"data": data.to_dict()}, "dataset": {"channels": 1, "image_size": [32, 32],
                                                                     "num_classes": 10}})
    return path, data


def test_run_config_takes_the_checkpoints_data_set(tmp_path, digits):
    ckpt, data = digits
    (tmp_path / "run.json").write_text(json.dumps({"base_checkpoint": str(ckpt)}))
    assert load_run_config(tmp_path / "run.json").base.data == data
    # base.data's limits apply to the checkpoint's data set (not to the default Fashion-MNIST)
    (tmp_path / "run.json").write_text(json.dumps({"base_checkpoint": str(ckpt), "base": {"data": {"test_limit": 20}}}))
    assert load_run_config(tmp_path / "run.json").base.data == dataclasses.replace(data, test_limit=20)
    (tmp_path / "run.json").write_text(json.dumps({"base_checkpoint": str(ckpt), "base": {"data": data.to_dict()}}))
    assert load_run_config(tmp_path / "run.json").base.data == data  # the same data set, given again: fine


@pytest.mark.parametrize("given, match", [({"dataset": "fashion-mnist"}, "base.data.dataset is 'fashion-mnist'"),
                                          ({"pad_to_32": False}, "base.data.pad_to_32 is False")])
def test_a_base_data_contradicting_the_checkpoint_is_refused(tmp_path, digits, given, match):
    ckpt, _ = digits
    (tmp_path / "run.json").write_text(json.dumps({"base_checkpoint": str(ckpt), "base": {"data": given}}))
    with pytest.raises(NfedgeError, match=match) as e:
        load_run_config(tmp_path / "run.json")
    assert "\n" not in str(e.value) and "leave base.data" in str(e.value)
    # a RunConfig built in Python with the default data set: refused too, before anything is written
    with pytest.raises(NfedgeError, match="base.data.dataset is 'fashion-mnist'"):
        run_pipeline(RunConfig(base_checkpoint=str(ckpt)), tmp_path / "out", progress=QUIET)
    assert not (tmp_path / "out").exists()


def test_the_checkpoints_data_set_may_have_moved(tmp_path, digits):
    """The recorded root gone: a one-line error naming base.data.root, which then gives the data's new place."""
    ckpt, data = digits
    moved = tmp_path / "moved.npz"
    (tmp_path / "digits.npz").rename(moved)
    (tmp_path / "run.json").write_text(json.dumps({"base_checkpoint": str(ckpt)}))
    with pytest.raises(NfedgeError, match="root .*digits.npz .*does not exist; give base.data.root"):
        load_run_config(tmp_path / "run.json")
    conf = {"base_checkpoint": str(ckpt), "base": {"data": {"root": str(moved)}}}
    (tmp_path / "run.json").write_text(json.dumps(conf))
    cfg = load_run_config(tmp_path / "run.json")
    assert cfg.base.data == dataclasses.replace(data, root=str(moved))
    check_base_data(cfg)  # what run_pipeline checks first: the data set is the checkpoint's, moved


def test_run_on_a_checkpoint_measures_on_its_data_set(tmp_path, digits):
    ckpt, data = digits
    conf = {**TINY, "base_checkpoint": str(ckpt)}
    del conf["base"]
    (tmp_path / "run.json").write_text(json.dumps(conf))
    r = run_pipeline(load_run_config(tmp_path / "run.json"), tmp_path / "out", progress=QUIET)
    ran = {s["name"]: s["path"] for s in r["stages"]}
    adopted = load_checkpoint(f"{ran['base']}/base.pt")[1]["meta"]
    assert adopted["config"]["data"] == data.to_dict() and adopted["dataset"]["name"] == "npz"
    host = json.loads(open(f"{ran['evaluate']}/evaluate.json").read())
    assert host["samples"] == 30  # the npz's 30 test images, not 40 of Fashion-MNIST's
    assert "on `npz`" in open(r["report"]).read()
