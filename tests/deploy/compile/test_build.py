"""Target descriptors (nfedge.deploy.targets) and the build stage (nfedge.deploy.compile.build)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_nfedge
from torch import nn

from nfedge.deploy.compile.build import BuildConfig, build_bundle, build_for_target
from nfedge.deploy.bundle import load_bundle
from nfedge.deploy.targets import list_targets, load_target
from nfedge.errors import NfedgeError
from nfedge.models import create_base_model
from nfedge.sram.image import build_image

# The ARM toolchain is installed by scripts/setup.sh: a test that needs it fails, never skips, without it.
needs_arm_gcc = pytest.mark.emulator


def _model() -> nn.Module:
    torch.manual_seed(0)
    return create_base_model("cnn-xs", in_channels=1, num_classes=10).eval()


# ------------------------------------------------------------------------------------------ targets


def test_builtin_targets_load_and_validate():
    names = list_targets()
    for n in ("arm-cortex", "cortex-m55", "cortex-m4", "cortex-a72", "host"):
        assert n in names
    for n in names:
        t = load_target(n)
        if t.kind == "ethos-u":  # an NPU: Vela compiles its TOSA, not TVM (tests/deploy/compile/test_vela.py)
            continue
        assert t.tvm_target_dict["kind"] == "llvm"
        t.tvm_target()  # TVM accepts the dict
    m55 = load_target("cortex-m55")
    assert m55.is_bare_metal and m55.emulator.machine == "mps3-an547" and m55.instructions_per_tick == 31.25
    assert load_target("cortex-m4").instructions_per_tick == 40.0
    assert m55.image.origin not in range(m55.ram.origin, m55.ram.end)


def test_arm_cortex_is_an_alias_of_the_default_cortex_m():
    t = load_target("arm-cortex")
    assert t.name == "cortex-m55" and t.aliases == ("arm-cortex",)
    assert load_target("ARM-Cortex").name == "cortex-m55"


def test_unknown_target_names_the_known_ones():
    with pytest.raises(NfedgeError, match="unknown target 'cortex-z9'.*cortex-m4.*cortex-m55"):
        load_target("cortex-z9")


def _write_descriptor(tmp_path: Path, name: str = "cortex-m55", **patch) -> Path:
    text = Path(load_target(name).source).read_text()
    for old, new in patch.items():
        assert old in text
        text = text.replace(old, new)
    p = tmp_path / "custom.toml"
    p.write_text(text)
    return p


def test_descriptor_from_a_path(tmp_path):
    p = _write_descriptor(tmp_path, **{'name = "cortex-m55"': 'name = "my-board"'})
    assert load_target(p).name == "my-board"
    assert load_target(str(p)).source == str(p)


@pytest.mark.parametrize("old,new,msg", [
    ('kind = "bare-metal"', 'kind = "fpga"', "kind 'fpga' is not one of"),
    ("origin = 0x31200000", "origin = 0x31100000", "overlap"),
    ("instructions_per_tick = 31.25", "instructions_per_tick = -1.0", "positive timing.instructions_per_tick"),
    ('machine = "mps3-an547"', 'machine = 547', "emulator.machine must be a str"),
    ('cc = "arm-none-eabi-gcc"', 'compiler = "arm-none-eabi-gcc"', "toolchain.cc is missing"),
])
def test_invalid_descriptors_are_rejected(tmp_path, old, new, msg):
    with pytest.raises(NfedgeError, match=msg):
        load_target(_write_descriptor(tmp_path, **{old: new}))


def test_descriptor_with_bad_toml(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("name = \n")
    with pytest.raises(NfedgeError, match="invalid TOML"):
        load_target(p)


# --------------------------------------------------------------------------------------------- build


def test_build_config_validation():
    assert BuildConfig().target == "arm-cortex"
    for bad in ({"bits": 9}, {"input_shape": (1, 32)}, {"opt_level": 5}, {"schedule": "fast"},
                {"workspace_bytes": -1}):
        with pytest.raises(NfedgeError):
            BuildConfig(**bad)
    cfg = BuildConfig(target="cortex-m4", bits=4)
    assert BuildConfig.from_dict(cfg.to_dict()) == cfg


def test_bits_mismatch_is_rejected(tmp_path):
    m = _model()
    with pytest.raises(NfedgeError, match="4-bit weights but the image holds 8-bit"):
        build_for_target(BuildConfig(mode="weight-only", target="cortex-m55", bits=4),
                         m, build_image(m, 8), None, tmp_path / "b")


def test_missing_toolchain_is_a_clear_error(tmp_path):
    desc = _write_descriptor(tmp_path, **{'cc = "arm-none-eabi-gcc"': 'cc = "nfedge-no-such-gcc"'})
    m = _model()
    with pytest.raises(NfedgeError, match="compiler 'nfedge-no-such-gcc'.*not found on PATH"):
        build_for_target(BuildConfig(mode="weight-only", target=str(desc)), m, build_image(m, 8), None, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_image_larger_than_its_region_does_not_fit(tmp_path):
    desc = _write_descriptor(tmp_path, **{'image = { name = "ISRAM1", origin = 0x31200000, length = 0x200000 }':
                                          'image = { name = "ISRAM1", origin = 0x31200000, length = 0x400 }'})
    m = _model()
    with pytest.raises(NfedgeError, match="does not fit.*weight image is 6152 bytes.*holds 1024"):
        build_for_target(BuildConfig(mode="weight-only", target=str(desc)), m, build_image(m, 8), None, tmp_path / "b")


@needs_arm_gcc
@pytest.mark.slow
def test_model_larger_than_ram_does_not_fit(tmp_path):
    desc = _write_descriptor(tmp_path, **{'ram = { name = "ISRAM0", origin = 0x31000000, length = 0x200000 }':
                                          'ram = { name = "ISRAM0", origin = 0x31000000, length = 0x10000 }'})
    m = _model()
    with pytest.raises(NfedgeError, match="does not fit"):
        build_for_target(BuildConfig(mode="weight-only", target=str(desc)), m, build_image(m, 8), None, tmp_path / "b")
    assert not (tmp_path / "b").exists()  # nothing half-written


@pytest.fixture(scope="module")
def m55_bundle(tmp_path_factory):
    m = _model()
    out = tmp_path_factory.mktemp("bundle") / "m55"
    return build_for_target(BuildConfig(mode="weight-only", target="cortex-m55", bits=8),
                            m, build_image(m, 8), None, out)


@pytest.mark.slow
def test_bundle_manifest(m55_bundle):
    b = m55_bundle
    m = b.manifest
    assert (b.path / "firmware.elf").is_file() and (b.path / "operators.o").is_file()
    assert (b.path / "image" / "weights.bin").stat().st_size == m["io"]["image_bytes"] == 6152
    assert m["io"]["input_shape"] == [1, 32, 32] and m["io"]["num_classes"] == 10
    assert not m["io"]["has_generator"]
    assert m["io"]["image_address"] == load_target("cortex-m55").image.origin
    assert m["memory_map"]["image"]["origin"] == m["io"]["image_address"]
    s = m["sizes"]
    assert s["code_bytes"] > 0 and s["arena_bytes"] > 0 and s["weights_bytes"] == 6152
    assert s["ram_bytes"] <= load_target("cortex-m55").ram.length
    assert "firmware.elf" in m["files"] and "model.c" in m["files"]
    # the weight image is not linked into the firmware: its address is only referenced
    assert "NFEDGE_IMAGE_ADDR" in (b.path / "build.log").read_text()
    assert load_bundle(b.path).manifest == m


@pytest.mark.slow
def test_corrupt_bundle_is_detected(m55_bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(m55_bundle.path, copy)
    elf = copy / "firmware.elf"
    data = bytearray(elf.read_bytes())
    data[len(data) // 2] ^= 0xFF
    elf.write_bytes(bytes(data))
    with pytest.raises(NfedgeError, match="corrupt: firmware.elf has sha256"):
        load_bundle(copy)
    (copy / "firmware.elf").unlink()
    with pytest.raises(NfedgeError, match="incomplete: firmware.elf is missing"):
        load_bundle(copy)
    with pytest.raises(NfedgeError, match="not a build bundle"):
        load_bundle(tmp_path)


@pytest.mark.slow
def test_host_build_writes_libraries(tmp_path):
    m = _model()
    b = build_for_target(BuildConfig(target="host"), m, build_image(m, 8), None, tmp_path / "host")
    assert (b.path / "base.so").is_file() and b.manifest["entry"]["run"] == "base.so"
    assert b.kind == "host"


def test_build_bundle_refuses_an_input_shape_its_checkpoint_does_not_take(fr_bundle, tmp_path):
    """build_bundle takes the checkpoint's input shape; a different one in the config is an error, not replaced."""
    with pytest.raises(NfedgeError, match=r"input shape \(3, 32, 32\).*takes \(1, 32, 32\)"):
        build_bundle(BuildConfig(target="cortex-m55", input_shape=(3, 32, 32)), fr_bundle / "base" / "base.pt",
                     fr_bundle / "img", None, tmp_path / "b")
    assert not (tmp_path / "b").exists()


_ODD_NET = '''
import torch
from torch import nn


class OddNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=2, dilation=2), nn.ReLU())
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))
'''


@needs_arm_gcc
@pytest.mark.slow
def test_integer_is_the_default_on_cortex_m_and_weight_only_one_flag_away(fr_bundle, tmp_path):
    base, img = fr_bundle / "base" / "base.pt", fr_bundle / "img"
    for target, mode in (("arm-cortex", "integer"), ("cortex-a72", "weight-only")):
        r = run_nfedge("build", "--target", target, "--bits", 6, "--base", base, "--image", img, "--out", tmp_path / target)
        assert r.returncode == 0 and load_bundle(tmp_path / target).mode == mode, r.stderr[-2000:]
    # a model integer mode cannot take: one line naming the layer and the way out, nothing written
    (tmp_path / "odd_net.py").write_text(_ODD_NET)
    ns: dict = {}
    exec(compile(_ODD_NET, "odd_net.py", "exec"), ns)  # noqa: S102 - the test's own model
    torch.save(ns["OddNet"]().state_dict(), tmp_path / "odd.pt")
    r = run_nfedge("import-model", "--class", f"{tmp_path / 'odd_net.py'}:OddNet", "--state-dict", tmp_path / "odd.pt",
                   "--dataset", "fashion-mnist", "--test-limit", 20, "--out", tmp_path / "odd")
    assert r.returncode == 0, r.stderr[-2000:]
    assert run_nfedge("quantize", "--checkpoint", tmp_path / "odd" / "base.pt", "--bits", 8,
                      "--out", tmp_path / "odd-img").returncode == 0
    args = ["build", "--target", "arm-cortex", "--bits", 8, "--base", tmp_path / "odd" / "base.pt",
            "--image", tmp_path / "odd-img"]
    r = run_nfedge(*args, "--out", tmp_path / "odd-m55")
    err = r.stderr.strip().splitlines()[-1]  # after the build's progress lines, the one error line
    assert r.returncode != 0 and err.startswith("nfedge: error: integer mode cannot take 1 layer")
    assert not (tmp_path / "odd-m55").exists()
    assert "features.0 (Conv2d, dilation=(2, 2): dilated)" in err and err.endswith("build with --mode weight-only")
    r = run_nfedge(*args, "--mode", "weight-only", "--out", tmp_path / "odd-m55")
    assert r.returncode == 0 and load_bundle(tmp_path / "odd-m55").mode == "weight-only", r.stderr[-2000:]
