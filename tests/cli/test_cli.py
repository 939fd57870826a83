"""The CLI as a user runs it: subprocesses, exit codes, one-line errors, nothing half-written."""

import json
import subprocess
import sys

import pytest

from nfedge.sram.image import read_image


def nfedge(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nfedge", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def assert_one_line_error(r, match):
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nfedge: error:") and match in lines[0], r.stderr


@pytest.fixture
def image_dir(tmp_path, checkpoint):
    out = tmp_path / "img"
    r = nfedge("quantize", "--checkpoint", checkpoint, "--bits", 8, "--out", out)
    assert r.returncode == 0, r.stderr
    return out


def test_quantize_then_inject_json(tmp_path, image_dir):
    clean = read_image(image_dir)
    out = tmp_path / "chip3"
    r = nfedge("inject", "--image", image_dir, "--voltage", 0.833, "--chip", 3, "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    for key in ("stored_bits", "faulty_cells", "flipped_bits", "ber", "chip", "fault", "image_sha256"):
        assert key in rep
    assert rep["ber"] == 0.01115 and rep["chip"] == 3 and rep["fault"] == "flip"
    assert rep["stored_bits"] == clean.manifest.total_bytes * 8
    faulty = read_image(out)
    assert faulty.manifest.image_sha256 == rep["image_sha256"]
    assert faulty.manifest.faults["config"]["voltage"] == 0.833
    assert faulty.manifest.faults["clean_image_sha256"] == clean.manifest.image_sha256
    # same seed -> byte-identical image
    again = tmp_path / "again"
    assert nfedge("inject", "--image", image_dir, "--voltage", 0.833, "--chip", 3, "--out", again).returncode == 0
    assert (again / "weights.bin").read_bytes() == (out / "weights.bin").read_bytes()


def test_stuck_at_from_cli(tmp_path, image_dir):
    r = nfedge("inject", "--image", image_dir, "--ber", 0.05, "--chip", 1, "--fault", "stuck-at",
               "--out", tmp_path / "s", "--json")
    rep = json.loads(r.stdout)
    assert rep["fault"] == "stuck-at" and 0 < rep["flipped_bits"] < rep["faulty_cells"]


@pytest.mark.parametrize("args, match", [
    (["--ber", 0.7], "BER must be in"),
    (["--ber", -0.01], "BER must be in"),
    (["--voltage", 0.6], "outside calibration"),
    (["--voltage", 1.2], "outside calibration"),
    ([], "exactly one"),
    (["--ber", 0.01, "--fault", "melt"], "unknown fault"),
])
def test_inject_errors_leave_nothing(tmp_path, image_dir, args, match):
    out = tmp_path / "out"
    r = nfedge("inject", "--image", image_dir, "--chip", 1, "--out", out, *args)
    assert_one_line_error(r, match)
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_truncated_and_tampered_images(tmp_path, image_dir):
    data = (image_dir / "weights.bin").read_bytes()
    (image_dir / "weights.bin").write_bytes(data[:-1])
    assert_one_line_error(nfedge("inject", "--image", image_dir, "--ber", 0.01, "--chip", 1, "--out", tmp_path / "o"),
                          "truncated")
    (image_dir / "weights.bin").write_bytes(bytes([data[0] ^ 1]) + data[1:])
    assert_one_line_error(nfedge("inject", "--image", image_dir, "--ber", 0.01, "--chip", 1, "--out", tmp_path / "o"),
                          "sha256")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("bits", [1, 9])
def test_quantize_bits_outside_range(tmp_path, checkpoint, bits):
    out = tmp_path / "q"
    assert_one_line_error(nfedge("quantize", "--checkpoint", checkpoint, "--bits", bits, "--out", out), "2..8")
    assert not out.exists()


def test_missing_checkpoint_and_usage_errors(tmp_path):
    assert_one_line_error(nfedge("quantize", "--checkpoint", tmp_path / "no.pt", "--out", tmp_path / "q"), "does not exist")
    r = nfedge("inject", "--bogus")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_cli_reference_is_in_sync():
    from pathlib import Path

    from nfedge.cli import cli_reference_markdown

    doc = Path(__file__).resolve().parents[2] / "docs" / "CLI.md"
    assert doc.read_text() == cli_reference_markdown(), "docs/CLI.md is stale: regenerate it (command at its top)"


def _faultrun_result(mode, identical_outputs):
    row = {"voltage": 0.9, "ber": 0.001, "target_accuracy": {"base": {"mean": 43.75, "std": 6.25}},
           "host_accuracy": {"base": {"mean": 43.75}},
           "agreement": {"base": {"identical_fraction": 1.0, "identical_outputs": identical_outputs,
                                  "max_logit_diff": 1.19e-06 if mode == "weight-only" else 0.0}}}
    return {"target": "cortex-m55", "mode": mode, "bits": 8, "chips": 2, "samples": 8, "results": [row],
            "agreement": {"min_identical_fraction": 1.0, "identical_outputs": identical_outputs, "threshold": 0.99,
                          "passed": True}, "instructions_per_inference": {"base": 1000, "generator": None}}


@pytest.mark.parametrize("mode, exact", [("weight-only", 0.0), ("integer", 1.0)])
def test_faultrun_table_labels_what_the_json_counts(monkeypatch, mode, exact):
    """issue 28 item 9: the JSON's identical_outputs (bit for bit) and the table's column (predictions) were both
    called "identical"; each is now named, and both are shown in both modes."""
    from click.testing import CliRunner

    import nfedge.deploy.run.faultrun as fr
    from nfedge.cli import cli

    seen = {}

    def fake(bundle_dir, test, cfg, **kw):
        seen.update(kw)
        return _faultrun_result(mode, exact)

    monkeypatch.setattr(fr, "faultrun", fake)
    r = CliRunner().invoke(cli, ["faultrun", "--bundle", "b", "--voltage", "0.9", "--data-root", "elsewhere"])
    assert r.exit_code == 0, r.output
    assert "| identical predictions | max logit diff |" in r.output and "| 100.0% |" in r.output
    assert f"bit-identical outputs (every logit, worst row): {100 * exact:.1f}%" in r.output
    assert ("see max logit diff" in r.output) is (mode == "weight-only")
    assert seen["data_root"] == "elsewhere"  # issue 28 item 6: the recorded root can be overridden
    r = CliRunner().invoke(cli, ["faultrun", "--bundle", "b", "--voltage", "0.9", "--json"])
    assert json.loads(r.output)["agreement"]["identical_outputs"] == exact


def test_help_says_what_the_defaults_and_the_trust_flag_do():
    """issue 28 items 3 and 5: --trust-bundle-code covers a class-imported model; --dataset's default is the
    checkpoint's data set where there is one."""
    from click.testing import CliRunner

    from nfedge.cli import cli

    def help_of(cmd):
        return " ".join(CliRunner().invoke(cli, [cmd, "--help"], terminal_width=200).output.split())

    assert "import-model --class" in help_of("faultrun")
    ev = help_of("evaluate")
    assert "with a checkpoint, the data set it records; otherwise fashion-mnist" in ev
    assert "the checkpoint's recorded root" in ev


def test_models_lists_a_model_that_cannot_run_at_the_input_without_failing():
    """At ds-cnn's 1x49x10 the VGGs cannot run (their pools shrink the map to nothing): their rows say so, the command
    still lists every model (table and JSON)."""
    r = nfedge("models", "--input", "1x49x10", "--classes", "12")
    assert r.returncode == 0, r.stderr
    rows = {line.split("|")[1].strip(): line for line in r.stdout.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows["ds-cnn"].split("|")[3].strip() == "23,756"  # its reference parameter count (nfedge/models/tiny.py)
    assert rows["vgg11"].split("|")[4].strip() == "-" and "does not run on input 1x49x10" in rows["vgg11"]
    j = nfedge("models", "--input", "1x49x10", "--json")
    assert j.returncode == 0, j.stderr
    by_name = {row["name"]: row for row in json.loads(j.stdout)}
    assert by_name["vgg11"]["macs"] is None and by_name["ds-cnn"]["macs"] > 0
