"""MetaSchedule tuning (nfedge.deploy.compile.tune) and host builds that use the tuning database."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import cnn_xs_with_bn_stats
from test_cli import assert_one_line_error, nfedge

from nfedge.deploy.compile.build import BuildConfig, build_for_target
from nfedge.deploy.run.harness import run_on_target
from nfedge.deploy.compile.tune import TuneConfig, tune_for_target
from nfedge.deploy.compile.tuning_db import load_tuning_db
from nfedge.errors import NfedgeError
from nfedge.sram.image import build_image

# One trial per task, random schedules (no cost model): enough to get a record for every operator
# within seconds; the numbers are not meant to be fast.
TINY = dict(trials=16, trials_per_round=1, strategy="replay-trace", timeout_s=60.0)


@pytest.fixture(scope="module")
def model_and_image():
    m = cnn_xs_with_bn_stats()
    return m, build_image(m, 8)


@pytest.fixture(scope="module")
def tuned_db(tmp_path_factory, model_and_image):
    m, image = model_and_image
    d = tmp_path_factory.mktemp("tune") / "db"
    return tune_for_target(TuneConfig(**TINY), m, image, None, d)


# ------------------------------------------------------------------------------------------ config


def test_config_round_trips_and_validates():
    cfg = TuneConfig(trials=8, seed=3, cpu="znver3", input_shape=(3, 32, 32))
    assert TuneConfig.from_json(cfg.to_json()) == cfg
    for bad, msg in [({"trials": 0}, "trials"), ({"seed": -1}, "seed"), ({"strategy": "grid"}, "strategy"),
                     ({"timeout_s": 0}, "timeout_s"), ({"max_workers": -1}, "max_workers"),
                     ({"input_shape": (1, 32)}, "input_shape")]:
        with pytest.raises(NfedgeError, match=msg):
            TuneConfig(**bad)


def test_only_the_host_target_is_tuned(tmp_path, model_and_image):
    m, image = model_and_image
    with pytest.raises(NfedgeError, match="only the host target can be tuned"):
        tune_for_target(TuneConfig(target="cortex-m55"), m, image, None, tmp_path / "db")
    assert not (tmp_path / "db").exists()
    with pytest.raises(NfedgeError, match="host target only"):
        build_for_target(BuildConfig(mode="weight-only", target="cortex-m55", tuning_db=str(tmp_path)),
                         m, image, None, tmp_path / "b")


def test_missing_database_is_a_clear_error(tmp_path, model_and_image):
    m, image = model_and_image
    with pytest.raises(NfedgeError, match="does not exist; run `nfedge tune") as e:
        build_for_target(BuildConfig(target="host", tuning_db=str(tmp_path / "nope")), m, image, None, tmp_path / "b")
    assert "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NfedgeError, match="is not an nfedge tuning database"):
        load_tuning_db(tmp_path / "empty")
    assert not (tmp_path / "b").exists()


def test_unreadable_tables_are_a_clear_error(tmp_path):
    """Tables whose hash matches tune.json but that MetaSchedule cannot parse."""
    from nfedge.deploy.compile.tuning_db import TABLES, tables_sha256

    d = tmp_path / "db"
    d.mkdir()
    for name in TABLES:
        (d / name).write_text('["not", "a workload"\n')
    (d / "tune.json").write_text(json.dumps({"format": "nfedge-tuning-db", "version": 1, "db_sha256": tables_sha256(d),
                                             "tvm_target": {"kind": "llvm"}}))
    with pytest.raises(NfedgeError, match="could not be read by MetaSchedule") as e:
        load_tuning_db(d).open()
    assert "\n" not in str(e.value)


def test_cli_errors_are_one_line(tmp_path, checkpoint):
    img = tmp_path / "img"
    assert nfedge("quantize", "--checkpoint", checkpoint, "--out", img).returncode == 0
    assert_one_line_error(nfedge("tune", "--target", "cortex-m4", "--base", checkpoint, "--image", img,
                                 "--db", tmp_path / "db"), "only the host target can be tuned")
    assert_one_line_error(nfedge("build", "--target", "host", "--base", checkpoint, "--image", img,
                                 "--tuning-db", tmp_path / "nope", "--out", tmp_path / "b"), "does not exist")
    assert not (tmp_path / "db").exists() and not (tmp_path / "b").exists()


# ----------------------------------------------------------------------------------- tuned builds


@pytest.mark.slow
def test_tuned_build_gives_the_untuned_outputs(tmp_path, model_and_image, tuned_db):
    m, image = model_and_image
    assert tuned_db.manifest["seed"] == 0 and tuned_db.manifest["tvm_target"]["mcpu"]
    assert any(t["best_us"] is not None for t in tuned_db.manifest["tasks"])
    plain = build_for_target(BuildConfig(target="host"), m, image, None, tmp_path / "plain")
    tuned = build_for_target(BuildConfig(target="host", tuning_db=str(tuned_db.path)), m, image, None, tmp_path / "tuned")
    assert "tuning" not in plain.manifest and plain.manifest["config"]["tuning_db"] is None
    t = tuned.manifest["tuning"]
    assert t["db_sha256"] == tuned_db.sha256 and len(t["tuned_operators"]["base"]) > 0
    rng = np.random.default_rng(1)
    x = rng.random((4, 1, 32, 32), dtype=np.float32) * 2 - 1
    faulty = image.codes.copy()
    faulty[rng.integers(0, faulty.size, 50)] ^= 0x11  # the image is an input: any bytes, same graph
    a = run_on_target(plain, faulty.tobytes(), x, timeout_s=120, trust_bundle_code=True).logits_base  # built here
    b = run_on_target(tuned, faulty.tobytes(), x, timeout_s=120, trust_bundle_code=True).logits_base
    assert np.all(np.isfinite(a)) and np.abs(a).max() > 1e-3
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_tuning_again_reuses_the_database(monkeypatch, model_and_image, tuned_db):
    import nfedge.deploy.compile.tune

    m, image = model_and_image
    before = {p.name: p.read_bytes() for p in tuned_db.path.iterdir()}

    def no_tuning(*a, **k):
        raise AssertionError("tuned again although every task has a record")

    monkeypatch.setattr(nfedge.deploy.compile.tune, "_run_tuner", no_tuning)
    again = tune_for_target(TuneConfig(**TINY), m, image, None, tuned_db.path)
    assert again.sha256 == tuned_db.sha256 and len(again.manifest["runs"]) == 1
    assert {p.name: p.read_bytes() for p in tuned_db.path.iterdir()} == before
    with pytest.raises(NfedgeError, match="use another --db directory"):  # another CPU/core count: no mixing
        tune_for_target(TuneConfig(**{**TINY, "threads": 7}), m, image, None, tuned_db.path)


@pytest.mark.slow
def test_corrupt_or_foreign_database_is_refused(tmp_path, model_and_image, tuned_db):
    m, image = model_and_image
    d = tmp_path / "db"
    shutil.copytree(tuned_db.path, d)
    manifest = json.loads((d / "tune.json").read_text())
    (d / "tune.json").write_text(json.dumps({**manifest, "tvm_target": {**manifest["tvm_target"], "mcpu": "cortex-a53"}}))
    with pytest.raises(NfedgeError, match="tuned for CPU 'cortex-a53'"):
        build_for_target(BuildConfig(target="host", tuning_db=str(d)), m, image, None, tmp_path / "b")
    (d / "tune.json").write_text(json.dumps(manifest))
    rec = d / "database_tuning_record.json"
    rec.write_bytes(rec.read_bytes()[:-20])
    with pytest.raises(NfedgeError, match="is corrupt") as e:
        build_for_target(BuildConfig(target="host", tuning_db=str(d)), m, image, None, tmp_path / "b")
    assert "\n" not in str(e.value)
    (d / "tune.json").write_text("{not json")
    with pytest.raises(NfedgeError, match="not valid JSON"):
        load_tuning_db(d)
    assert not (tmp_path / "b").exists()
