"""Integer mode on the emulated targets: the firmware's output integers equal the host integer reference exactly,
on cortex-m55 and cortex-m4, at every weight precision 2..8, at several voltages and chips, with the generator."""

import numpy as np
import pytest
from conftest import run_nfedge

from nfedge.deploy.compile.build import BuildConfig
from nfedge.deploy.bundle import load_bundle
from nfedge.deploy.compile.build import build_bundle
from nfedge.deploy.run.faultrun import FaultrunConfig, _bundle_programs, _host_integers, faultrun
from nfedge.deploy.run.harness import run_on_target
from nfedge.errors import NfedgeError
from nfedge.integer.calibrate import INPUT_SCALE
from nfedge.integer.scheme import quantize_to_int8
from nfedge.progress import QUIET
from nfedge.sram.image import read_image, with_codes

pytestmark = [pytest.mark.emulator, pytest.mark.slow]


@pytest.mark.parametrize("target", ["cortex-m55", "cortex-m4"])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_target_integers_equal_the_reference(fr_bundle, tmp_path, target, bits):
    assert run_nfedge("quantize", "--checkpoint", fr_bundle / "base" / "base.pt", "--bits", bits,
                      "--out", tmp_path / "img").returncode == 0
    bundle = build_bundle(BuildConfig(target=target, bits=bits, mode="integer", calib_images=64),
                          fr_bundle / "base" / "base.pt", tmp_path / "img", fr_bundle / "gen" / "generator.pt",
                          tmp_path / "bundle", QUIET)
    assert bundle.mode == "integer" and bundle.input_dtype == "int8" and bundle.logit_dtype == "int32"
    r = faultrun(bundle.path, None, FaultrunConfig(voltages=(0.875, 0.792), chips=2, samples=4, jobs=2), QUIET)
    a = r["agreement"]
    assert a["identical_outputs"] == 1.0 and a["max_logit_diff"] == 0.0 and a["passed"], a
    assert r["instructions_per_inference"]["base"] > 100_000 and r["instructions_per_inference"]["generator"] > 10_000


def test_one_flipped_bit_changes_target_and_host_alike(fr_bundle, tmp_path):
    bundle = build_bundle(BuildConfig(target="cortex-m55", mode="integer", calib_images=64), fr_bundle / "base" / "base.pt",
                          fr_bundle / "img", None, tmp_path / "bundle", QUIET)
    clean = read_image(fr_bundle / "img")
    x = np.random.default_rng(0).uniform(-1, 1, (8, 1, 32, 32))
    x_q = quantize_to_int8(x, INPUT_SCALE)
    programs = _bundle_programs(bundle)
    codes = clean.codes.copy()
    codes[5] ^= np.int8(1 << 4)  # one stored bit of the first conv's sixth weight (6-bit codes: bit 4 is stored)
    flipped = with_codes(clean, codes, None)
    for img in (clean, flipped):
        out = run_on_target(bundle, img, x_q).logits_base
        assert out.dtype == np.int32 and np.array_equal(out.astype(np.int64), _host_integers(programs, img, x_q)[0])
    assert not np.array_equal(run_on_target(bundle, clean, x_q).logits_base, run_on_target(bundle, flipped, x_q).logits_base)
    with pytest.raises(NfedgeError, match="int8 samples"):
        run_on_target(bundle, clean, x)  # float images are not what an integer bundle takes


def test_a_program_calibrated_for_another_image_is_refused(fr_bundle, tmp_path):
    from nfedge.deploy.compile.build import check_programs
    from nfedge.integer.calibrate import calibrate_programs
    from nfedge.train.checkpoint import load_checkpoint

    model, _ = load_checkpoint(fr_bundle / "base" / "base.pt")
    assert run_nfedge("quantize", "--checkpoint", fr_bundle / "base" / "base.pt", "--bits", 8,
                      "--out", tmp_path / "img8").returncode == 0
    progs = calibrate_programs(model, read_image(tmp_path / "img8"), {}, np_rand_images(16))
    with pytest.raises(NfedgeError, match="another image"):
        check_programs(progs, read_image(fr_bundle / "img"), False)
    assert load_bundle(fr_bundle / "bundle").mode == "weight-only"


def np_rand_images(n):
    import torch

    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
