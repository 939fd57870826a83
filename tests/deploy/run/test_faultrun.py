"""build + faultrun through the CLI on the real emulator (cnn-xs, a tiny generator, cortex-m55)."""

import json

import pytest
from conftest import run_nfedge as nfedge

pytestmark = [pytest.mark.emulator, pytest.mark.slow]


def test_faultrun_json_and_agreement(fr_bundle):
    r = nfedge("faultrun", "--bundle", fr_bundle / "bundle", "--voltage", 0.875, "--voltage", 0.833, "--chips", 2,
               "--samples", 6, "--json", "--out", fr_bundle / "fr.json")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    for key in ("target", "bits", "voltage", "ber", "chips", "samples", "target_accuracy", "host_accuracy", "agreement",
                "instructions_per_inference", "energy_saving"):
        assert key in res
    assert res["target"] == "cortex-m55" and res["bits"] == 6 and res["voltage"] == [0.875, 0.833]
    assert res["agreement"]["min_identical_fraction"] == 1.0 and res["agreement"]["max_logit_diff"] < 1e-4
    ipi = res["instructions_per_inference"]
    assert ipi["base"] > 100_000 and ipi["generator"] > 10_000  # deterministic QEMU -icount counts
    for row in res["results"]:  # target and host see the same chips: the same accuracy
        assert row["target_accuracy"]["base"]["per_chip"] == row["host_accuracy"]["base"]["per_chip"]
    assert json.loads((fr_bundle / "fr.json").read_text())["samples"] == 6


def test_faultrun_rejects_corrupt_bundle(fr_bundle, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(fr_bundle / "bundle", bad)
    fw = next(p for p in bad.iterdir() if p.suffix == ".elf")
    fw.write_bytes(fw.read_bytes()[:-4])
    r = nfedge("faultrun", "--bundle", bad, "--voltage", 0.9, "--chips", 1, "--samples", 1)
    assert r.returncode == 1 and "corrupt" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_faultrun_names_chip_and_voltage_when_emulator_hangs(fr_bundle):
    r = nfedge("faultrun", "--bundle", fr_bundle / "bundle", "--voltage", 0.833, "--chips", 1, "--samples", 4, "--timeout", 0.2)
    assert r.returncode == 1 and "chip 0 at 0.833 V/Vmin" in r.stderr
