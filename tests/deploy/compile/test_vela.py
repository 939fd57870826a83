"""Ethos-U targets (issue #27): the real Vela (ethos-u-vela 5.2) compiles the integer programs' TOSA into a bundle whose
manifest records Vela's cycles and per-memory-area traffic; faultrun refuses such a bundle in one line; `nfedge energy
--vela-bundle` reads its weight traffic; the descriptors refuse what an NPU target cannot take."""

import pytest
import torch

from nfedge.analysis.energy import EnergyConfig, estimate_energy
from nfedge.deploy.bundle import load_bundle
from nfedge.deploy.compile.build import BuildConfig, build_for_target
from nfedge.deploy.compile.vela import AREAS, parse_summary
from nfedge.deploy.run.faultrun import FaultrunConfig, faultrun
from nfedge.deploy.targets import load_target, parse_target
from nfedge.errors import NfedgeError
from nfedge.integer.calibrate import calibrate_programs
from nfedge.models import create_base_model, create_generator
from nfedge.sram.image import build_image


@pytest.fixture(scope="module")
def npu_bundle(tmp_path_factory):
    torch.manual_seed(0)
    model = create_base_model("cnn-xs", in_channels=1, num_classes=10).eval()
    gen = create_generator("ConvT", in_channels=1).eval()
    image = build_image(model, 6)
    x = torch.rand(16, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    progs = calibrate_programs(model, image, {"generator": gen}, x)
    out = tmp_path_factory.mktemp("npu") / "bundle"
    b = build_for_target(BuildConfig(target="ethos-u55-128", mode="integer"), model, image, gen, out, programs=progs)
    return b, model, image, gen, progs


@pytest.mark.slow
def test_vela_builds_the_bundle_and_reports_its_estimates(npu_bundle):
    b, *_ = npu_bundle
    again = load_bundle(b.path)  # every file hashed and verified, target.toml included
    assert again.kind == "ethos-u" and again.target.npu.accelerator == "ethos-u55-128"
    for model in ("base", "generator"):
        for suffix in (".tosa", "_vela.tflite", "_summary.csv", "_per-layer.csv", "_vela.log"):
            assert (b.path / "npu" / f"{model}{suffix}").stat().st_size > 0
        tfl = (b.path / "npu" / f"{model}_vela.tflite").read_bytes()
        assert tfl[4:8] == b"TFL3" and b"ethos-u" in tfl  # a TFLite file holding the ethos-u custom operator
        s = b.manifest["npu"]["models"][model]
        assert s == parse_summary((b.path / "npu" / f"{model}_summary.csv").read_text(), "summary") | {
            "tosa_operators": s["tosa_operators"]}
        assert s["cycles_total"] >= s["cycles_npu"] > 0 and s["nn_macs"] > 0 and s["batch_size"] == 1
        assert s["weight_read_bytes"] == sum(s["traffic"][a]["weight_read"] for a in AREAS) > 0
        # Sram_Only: every weight byte is read from the SRAM, the memory NeuralFuse undervolts (Vela's summary labels
        # that constant area "On-chip Flash" all the same)
        assert s["traffic"]["sram"]["weight_read"] == s["weight_read_bytes"]
    base = b.manifest["npu"]["models"]["base"]
    # Vela's weights: every code of the image (it counts a few bytes more: 6,160 for cnn-xs's 6,152 codes)
    codes = b.manifest["sizes"]["weights_bytes"]
    assert codes <= base["weights"]["original_bytes"] < codes + 64
    assert base["tosa_operators"]["CONV2D"] == 4 and b.manifest["entry"]["run"] == "npu/base_vela.tflite"
    assert "ethos-u-vela" in b.manifest["versions"]


def test_faultrun_refuses_an_npu_bundle_in_one_line(npu_bundle):
    b, *_ = npu_bundle
    with pytest.raises(NfedgeError, match="no Ethos-U emulator") as e:
        faultrun(b.path, (torch.zeros(2, 1, 32, 32), torch.zeros(2, dtype=torch.long)), FaultrunConfig(bers=(0.01,)))
    assert "\n" not in str(e.value) and "TOSA reference model" in str(e.value)


def test_energy_reads_vela_weight_traffic(npu_bundle):
    b, *_ = npu_bundle
    r = estimate_energy(EnergyConfig(base="cnn-xs", generator="ConvT", input="1x32x32", vela_bundle=str(b.path)))
    v, models = r["vela"], b.manifest["npu"]["models"]
    assert v["base_weight_read_bytes"] == models["base"]["weight_read_bytes"]
    assert v["generator_weight_read_bytes"] == models["generator"]["weight_read_bytes"]
    ratio = v["generator_weight_read_bytes"] / v["base_weight_read_bytes"]
    assert v["energy_saving"] == pytest.approx(1 - r["r"] - ratio)
    assert "energy_saving" in r and r["energy_saving"] != v["energy_saving"]  # the closed form stays beside it
    with pytest.raises(NfedgeError, match="no bundle manifest"):
        estimate_energy(EnergyConfig(vela_bundle=str(b.path / "npu")))


def test_weight_only_mode_is_refused_for_an_npu(npu_bundle, tmp_path):
    _, model, image, gen, _ = npu_bundle
    with pytest.raises(NfedgeError, match="integer programs only") as e:
        build_for_target(BuildConfig(mode="weight-only", target="ethos-u55-128"), model, image, None, tmp_path / "b")
    assert "\n" not in str(e.value) and not (tmp_path / "b").exists()


@pytest.mark.parametrize("name", ["ethos-u55-128", "ethos-u65-256", "ethos-u85-256"])
def test_the_npu_descriptors(name):
    t = load_target(name)
    assert t.kind == "ethos-u" and t.npu.accelerator == name and t.emulator is None and t.clock_hz > 0
    assert t.to_dict()["npu"]["memory_mode"] == t.npu.memory_mode


def test_descriptor_and_summary_refusals():
    base = ('name = "x"\nkind = "ethos-u"\n[memory]\nram = { origin = 0, length = 4096 }\n'
            '[timing]\nclock_hz = 1\ntimer = "none"\n')
    npu = '[npu]\naccelerator = "ethos-u55-128"\nsystem_config = "S"\nmemory_mode = "M"\n'
    cases = [
        (base, "npu table is missing"),
        (base + npu.replace('"S"', '"../etc/x.ini"'), "not a plain name"),
        (base + npu + '[tvm]\ntarget = { kind = "llvm" }\n', "no \\[tvm\\]"),
        (base + npu + '[emulator]\ncommand = ["sh"]\n', "takes no \\[emulator\\]"),
    ]
    for text, match in cases:
        with pytest.raises(NfedgeError, match=match) as e:
            parse_target(text, "t.toml")
        assert "\n" not in str(e.value)
    for text in ("", "a,b\n1,2\n", "cycles_npu\nfast\n"):
        with pytest.raises(NfedgeError, match="summary"):
            parse_summary(text, "summary")


def test_the_planner_weighs_vela_weight_traffic(npu_bundle, tmp_path):
    """plan --vela-bundle: each option's ES from Vela's weight bytes (the same as `nfedge energy --vela-bundle` for the
    unprotected generator option), MSB cells at nominal on top; a generator the bundle did not measure is refused."""
    from nfedge.analysis.options import Option, option_energy
    from nfedge.train.eopm import save_generator

    _, model, image, gen, progs = npu_bundle
    save_generator(tmp_path / "g.pt", gen, "ConvT", 1, (32, 32), {})
    b = build_for_target(BuildConfig(target="ethos-u55-128", mode="integer"), model, image, gen, tmp_path / "b",
                         programs=progs, extra_files={"host/generator.pt": tmp_path / "g.pt"})
    args = ("cnn-xs", 10, "sram-14nm", "1x32x32", 0.875, 6)
    v = estimate_energy(EnergyConfig(base="cnn-xs", generator="ConvT", input="1x32x32", voltage=0.875,
                                     vela_bundle=str(b.path)))
    e = option_energy(Option("ConvT", "none", generator="ConvT", inputs="ConvT"), *args, "ConvT", str(b.path))
    assert e["weight_traffic"] == "vela" and e["energy_saving"] == pytest.approx(v["vela"]["energy_saving"])
    closed = option_energy(Option("ConvT", "none", generator="ConvT", inputs="ConvT"), *args, "ConvT")
    assert closed["weight_traffic"] == "closed form" and closed["energy_saving"] != e["energy_saving"]
    msb = option_energy(Option("base+MSB2", "msb", msb=2), *args, None, str(b.path))
    assert msb["energy_saving"] == pytest.approx(1 - (4 / 6) * v["r"] - 2 / 6)
    with pytest.raises(NfedgeError, match="measured generator ConvT, not UNetT") as err:
        option_energy(Option("UNetT", "none", generator="UNetT", inputs="UNetT"), *args, "UNetT", str(b.path))
    assert "\n" not in str(err.value)
