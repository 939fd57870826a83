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
