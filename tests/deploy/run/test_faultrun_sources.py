"""faultrun on the user's own faulty bytes: ready images (`--image`) and measured fault maps (`--fault map`),
on the real emulator, against `nfedge inject` + host simulation of the same bytes."""

import hashlib
import json

import numpy as np
import pytest
from conftest import run_nfedge as nfedge

from nfedge.sram.image import read_image

pytestmark = [pytest.mark.emulator, pytest.mark.slow]


def _faultrun(bundle, *args):
    r = nfedge("faultrun", "--bundle", bundle / "bundle", "--samples", 8, "--json", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def _accuracies(row, side):
    return row[f"{side}_accuracy"]


def test_ready_image_runs_exactly_the_bytes_of_nfedge_inject(fr_bundle, tmp_path):
    r = nfedge("inject", "--image", fr_bundle / "img", "--voltage", 0.792, "--chip", 1, "--out", tmp_path / "chip1")
    assert r.returncode == 0, r.stderr
    res = _faultrun(fr_bundle, "--voltage", 0.792, "--chips", 2, "--image", tmp_path / "chip1")
    sweep, ready = res["results"]
    assert sweep["chips"] == [0, 1] and ready["chips"] == [str(tmp_path / "chip1")]
    assert ready["image"] == str(tmp_path / "chip1") and ready["voltage"] == 0.792  # recorded by inject
    digest = hashlib.sha256((tmp_path / "chip1" / "weights.bin").read_bytes()).hexdigest()
    assert ready["image_sha256"] == digest
    for name in ("base", res["generator"]):
        for side in ("target", "host"):  # the ready image is the sweep's chip 1, on target and on host
            assert _accuracies(ready, side)[name]["per_chip"] == [_accuracies(sweep, side)[name]["per_chip"][1]]
        assert ready["agreement"][name]["identical_fraction"] == 1.0
    assert str(tmp_path / "chip1") in res["target_accuracy"]


def test_measured_fault_map_matches_inject_of_the_same_map(fr_bundle, tmp_path):
    img = read_image(fr_bundle / "img")
    m = img.manifest
    cells = np.random.default_rng(5).choice(m.stored_bits, size=m.stored_bits // 20, replace=False)  # 5% of cells
    fmap = {"format": "nfedge-fault-map", "version": 1, "source": "test", "banks": m.banks,
            "geometry": {"rows": m.geometry.rows, "cols": m.geometry.cols},
            "maps": [{"voltage": 0.8, "flip": sorted(int(c) for c in cells[: len(cells) // 2]),
                      "stuck_at_1": sorted(int(c) for c in cells[len(cells) // 2:])}]}
    (tmp_path / "map.json").write_text(json.dumps(fmap))
    r = nfedge("inject", "--image", fr_bundle / "img", "--fault", "map", "--fault-map", tmp_path / "map.json",
               "--voltage", 0.8, "--chip", 0, "--out", tmp_path / "mapped")
    assert r.returncode == 0, r.stderr
    res = _faultrun(fr_bundle, "--fault", "map", "--fault-map", tmp_path / "map.json", "--voltage", 0.8,
                    "--image", tmp_path / "mapped")
    mapped, ready = res["results"]
    assert mapped["chips"] == ["map"] and res["config"]["chips"] == 1  # a map is one measured chip
    for name in ("base", res["generator"]):
        for side in ("target", "host"):
            assert _accuracies(mapped, side)[name]["per_chip"] == _accuracies(ready, side)[name]["per_chip"]
    assert res["agreement"]["min_identical_fraction"] == 1.0


@pytest.mark.parametrize("args, message", [
    (("--fault", "map", "--voltage", 0.8), "--fault-map"),
    (("--fault", "map", "--fault-map", "m.json", "--voltage", 0.8, "--chips", 2), "one measured chip"),
    (("--fault-map", "m.json", "--voltage", 0.8), "goes with fault 'map'"),
    ((), "ready faulty images"),
])
def test_bad_fault_sources_are_one_line_errors(fr_bundle, args, message):
    r = nfedge("faultrun", "--bundle", fr_bundle / "bundle", "--samples", 1, *args)
    assert r.returncode == 1 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_an_image_of_another_model_is_refused(fr_bundle, tmp_path):
    assert nfedge("quantize", "--checkpoint", fr_bundle / "base" / "base.pt", "--bits", 8,
                  "--out", tmp_path / "img8").returncode == 0
    r = nfedge("faultrun", "--bundle", fr_bundle / "bundle", "--samples", 1, "--image", tmp_path / "img8")
    assert r.returncode == 1 and "does not fit this model: its bits differ" in r.stderr, r.stderr
