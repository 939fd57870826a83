"""nfedge.deploy.run.harness: compiled models on emulated targets agree with the host (torch) simulation of the same bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import cnn_xs_with_bn_stats
from torch import nn

from nfedge.deploy.compile.build import BuildConfig, build_for_target
from nfedge.deploy.compile.export import ImageWeightedModel, NeuralFuseFront, image_tensor
from nfedge.deploy.run.harness import _explain_exit, run_on_target
from nfedge.errors import NfedgeError
from nfedge.models import create_generator
from nfedge.sram.image import build_image, with_codes

pytestmark = pytest.mark.emulator
# The toolchains and QEMU are installed by scripts/setup.sh: a test that needs them fails, never skips, without them.
needs_arm = pytest.mark.emulator

ATOL = 1e-4  # target vs host, relative to max(1, |logits|)


def _model() -> nn.Module:
    return cnn_xs_with_bn_stats(0)


def _generator() -> nn.Module:
    """ConvS (the paper's generator) with non-trivial BatchNorm statistics."""
    torch.manual_seed(2)
    g = create_generator("ConvS", in_channels=1)
    for mod in g.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 2.0)
    return g.eval()


def _inputs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 1, 32, 32)).astype(np.float32)


def _ref(model, manifest, codes, x, generator=None):
    """Host simulation: the same ImageWeightedModel on the same bytes."""
    w = ImageWeightedModel(model, manifest)
    with torch.no_grad():
        xt = torch.from_numpy(x)
        img = image_tensor(codes)
        base = w(xt, img).numpy()
        nf = w(NeuralFuseFront(generator)(xt), img).numpy() if generator is not None else None
    return base, nf


def _close(got, ref):
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(got - ref).max() <= ATOL * scale, f"max diff {np.abs(got - ref).max()} (scale {scale})"


def _flip_bit(codes: np.ndarray, index: int, bit: int) -> np.ndarray:
    out = codes.copy().view(np.uint8)
    out[index] ^= np.uint8(1 << bit)
    return out.view(np.int8)


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def generator():
    return _generator()


@pytest.fixture(scope="module", params=["cortex-m55", "cortex-m4"])
def bundle(request, tmp_path_factory, model, generator):
    image = build_image(model, 8)
    out = tmp_path_factory.mktemp("b") / request.param
    return build_for_target(BuildConfig(mode="weight-only", target=request.param, bits=8),
                            model, image, generator, out), image


@needs_arm
def test_clean_image_matches_host_with_and_without_generator(bundle, model, generator):
    b, image = bundle
    x = _inputs(2)
    res = run_on_target(b.path, image, x, timeout_s=300)
    base, nf = _ref(model, image.manifest, image.codes, x, generator)
    _close(res.logits_base, base)
    _close(res.logits_nf, nf)
    # instruction counts: per inference, generator and base separately, exactly repeatable
    assert res.instructions_base.shape == (2,) and np.all(res.instructions_base > 10_000)
    assert np.all(res.instructions_generator > 1_000) and np.all(res.instructions_base_nf > 10_000)
    assert res.timer == "systick" and res.estimated_seconds_base > 0
    logits_base, logits_nf, instr = res  # unpacks as (base, nf, counts)
    assert instr["generator"] is res.instructions_generator
    again = run_on_target(b.path, image, x[:1], timeout_s=300)
    assert again.instructions_base[0] == res.instructions_base[0]
    assert again.instructions_generator[0] == res.instructions_generator[0]


@needs_arm
def test_single_bit_flip_changes_host_and_target_identically(bundle, model, generator):
    b, image = bundle
    # the sign bit of the largest-magnitude code of the first conv: a flip that must matter
    first = image.manifest.tensors[0]
    idx = first.offset + int(np.argmax(np.abs(image.tensor_codes(first).astype(np.int16))))
    faulty = with_codes(image, _flip_bit(image.codes, idx, image.manifest.bits - 1), faults={"test": "one flip"})
    x = _inputs(2, seed=3)
    clean_t = run_on_target(b.path, image.codes, x, timeout_s=300)
    faulty_t = run_on_target(b.path, faulty, x, timeout_s=300)  # same firmware, other image
    clean_h, clean_nf = _ref(model, image.manifest, image.codes, x, generator)
    faulty_h, faulty_nf = _ref(model, image.manifest, faulty.codes, x, generator)
    assert np.abs(faulty_h - clean_h).max() > 1e-3  # host changes
    assert np.abs(faulty_t.logits_base - clean_t.logits_base).max() > 1e-3  # target changes
    _close(faulty_t.logits_base, faulty_h)  # ... identically
    _close(faulty_t.logits_nf, faulty_nf)
    _close(faulty_t.logits_base - clean_t.logits_base, faulty_h - clean_h)
    # faults change numbers, not the work: same instruction count per inference
    assert faulty_t.instructions_base[0] == clean_t.instructions_base[0]


@needs_arm
@pytest.mark.slow
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_every_precision_builds_and_agrees(bits, model, tmp_path):
    image = build_image(model, bits, per_channel=bits % 2 == 0)
    b = build_for_target(BuildConfig(mode="weight-only", target="cortex-m55", bits=bits),
                         model, image, None, tmp_path / f"b{bits}")
    x = _inputs(1, seed=bits)
    rng = np.random.default_rng(bits)
    faulty = image.codes.copy().view(np.uint8)
    idx = rng.choice(faulty.size, 8, replace=False)
    faulty[idx] ^= np.uint8(1 << int(rng.integers(0, bits)))
    faulty = faulty.view(np.int8)
    for codes in (image.codes, faulty):
        res = run_on_target(b.path, codes, x, timeout_s=120)
        _close(res.logits_base, _ref(model, image.manifest, codes, x)[0])


@needs_arm
def test_hung_emulator_times_out_with_a_clear_error(bundle):
    b, image = bundle
    with pytest.raises(NfedgeError, match="no result within 0.01 s.*killed"):
        run_on_target(b.path, image, _inputs(1), timeout_s=0.01)


@needs_arm
def test_wrong_inputs_and_images_are_rejected(bundle):
    b, image = bundle
    with pytest.raises(NfedgeError, match=r"inputs must have shape \[N, 1, 32, 32\]"):
        run_on_target(b.path, image, np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(NfedgeError, match="6151 bytes but the bundle was built for 6152"):
        run_on_target(b.path, image.codes[:-1], _inputs(1))


def test_exit_codes_are_explained():
    e = _explain_exit(250, "nfedge: CPU fault (HardFault/MemManage/BusFault/UsageFault)\n", "", "target x")
    assert "CPU faulted" in str(e) and "HardFault" in str(e)
    assert "workspace" in str(_explain_exit(4, "nfedge-error: workspace pool exhausted\n", "", "t"))
    assert "locked up" in str(_explain_exit(134, "", "qemu: fatal: Lockup: can't escalate 3 to HardFault", "t"))
    assert "exited with code 7" in str(_explain_exit(7, "", "", "t"))


@needs_arm
def test_missing_emulator_is_a_clear_error(bundle, tmp_path, monkeypatch):
    b, image = bundle
    monkeypatch.setenv("PATH", str(tmp_path))  # no qemu on PATH any more
    with pytest.raises(NfedgeError, match="'qemu-system-arm' was not found on PATH"):
        run_on_target(b.path, image, _inputs(1))


@pytest.mark.slow
def test_host_target_matches_torch(model, tmp_path):
    g = _generator()
    image = build_image(model, 8)
    b = build_for_target(BuildConfig(target="host"), model, image, g, tmp_path / "host")
    x = _inputs(2)
    with pytest.raises(NfedgeError, match="host bundle is native code.*trust_bundle_code"):
        run_on_target(b.path, image, x, timeout_s=300)  # loading a bundle's .so is running its code: opt in
    res = run_on_target(b.path, image, x, timeout_s=300, trust_bundle_code=True)  # built here, so trusted
    base, nf = _ref(model, image.manifest, image.codes, x, g)
    _close(res.logits_base, base)
    _close(res.logits_nf, nf)
    assert res.instructions_base is None and res.estimated_seconds_base > 0


@pytest.mark.slow
def test_cortex_a72_matches_torch(model, tmp_path):
    g = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 1, 3, padding=1), nn.Tanh()).eval()
    image = build_image(model, 8)
    b = build_for_target(BuildConfig(target="cortex-a72"), model, image, g, tmp_path / "a72")
    x = _inputs(2)
    res = run_on_target(b.path, image, x, timeout_s=300)
    base, nf = _ref(model, image.manifest, image.codes, x, g)
    _close(res.logits_base, base)
    _close(res.logits_nf, nf)
    assert res.instructions_base is None
