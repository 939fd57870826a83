import functools
import json
import math

import pytest
import torch
from torch import nn

from nfedge.analysis.dataflow import (
    count_macs,
    count_params,
    layer_geometry,
    scalesim_topology_csv,
    weight_memory_accesses,
)
from nfedge.analysis.energy import EnergyConfig, energy_saving, estimate_energy, list_models, mac_energy_saving
from nfedge.errors import NfedgeError
from nfedge.models import create_base_model, create_generator, list_base_models, list_generators
from nfedge.sram.calibration import load_calibration

# REFERENCE section 8: paper Table 6 (TWMA) and Table 2 (ES % at 1% BER, r = 0.694)
TABLE6 = {"resnet18": 2_755_968, "resnet50": 6_182_144, "vgg11": 1_334_656, "vgg16": 2_366_848,
          "vgg19": 3_104_128, "ConvL": 320_256, "ConvS": 41_508, "DeConvL": 259_264, "DeConvS": 86_208,
          "UNetL": 180_894, "UNetS": 45_711}
TABLE2 = [("resnet18", "ConvL", 19.0), ("resnet18", "ConvS", 29.1), ("resnet18", "DeConvL", 21.2),
          ("resnet18", "DeConvS", 27.5), ("resnet18", "UNetL", 24.0), ("resnet18", "UNetS", 28.9),
          ("vgg11", "ConvL", 6.6)]
R_1PCT = 0.694


@functools.cache
def _model(name: str) -> nn.Module:
    """Built once, on the meta device (counting needs shapes only; test_meta_and_real_models_agree)."""
    with torch.device("meta"):
        return create_base_model(name) if name in list_base_models() else create_generator(name)


@pytest.mark.parametrize("name", ["ConvS", "UNetS", "cnn-xs"])
def test_meta_and_real_models_agree(name):
    torch.manual_seed(0)
    real = create_base_model(name) if name in list_base_models() else create_generator(name)
    for f in (count_params, lambda m: count_macs(m, (3, 32, 32)), lambda m: weight_memory_accesses(m, (3, 32, 32))):
        assert f(real) == f(_model(name))


# ------------------------------------------------------------------------------ Eq. 6 and Eq. 7


@pytest.mark.parametrize("base,gen,es_pct", TABLE2)
def test_energy_saving_reproduces_table2_from_table6(base, gen, es_pct):
    es = energy_saving(TABLE6[gen], TABLE6[base], R_1PCT)
    assert abs(100 * es - es_pct) <= 0.1


def test_energy_saving_is_not_the_low_voltage_generator_variant():
    # charging the generator at the low voltage too (r * TWMA_G) would miss Table 2 by more than 0.1
    es_wrong = 1 - R_1PCT - R_1PCT * TABLE6["ConvL"] / TABLE6["resnet18"]
    assert abs(100 * es_wrong - 19.0) > 0.1
    assert abs(100 * energy_saving(TABLE6["ConvL"], TABLE6["resnet18"], R_1PCT) - 19.0) <= 0.1


def test_mac_energy_saving_vgg11_convl():
    # paper MACs: VGG11 153.5M, ConvL 80.5M -> MAC-ES -21.8%
    assert round(100 * mac_energy_saving(80.5e6, 153.5e6, R_1PCT), 1) == -21.8


def test_energy_saving_with_the_calibration_table_ratio():
    r = load_calibration().energy_at(0.833)  # (V/Vmin)^2 table: 0.6944
    assert r == pytest.approx(0.6944)
    assert 100 * energy_saving(TABLE6["ConvL"], TABLE6["resnet18"], r) == pytest.approx(18.94, abs=0.01)


@pytest.mark.parametrize("args", [(10, 0, 0.7), (-1, 10, 0.7), (1, 10, 0.0)])
def test_energy_saving_rejects_bad_arguments(args):
    with pytest.raises(NfedgeError):
        energy_saving(*args)
    with pytest.raises(NfedgeError):
        mac_energy_saving(*args)


# ------------------------------------------------------------------------- counts by hand


def test_tiny_conv_counts_by_hand():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 40, 3, padding=1)  # on 3x8x8: 64 output pixels, T = 27, 40 filters
    assert count_params(conv) == 3 * 40 * 9 + 40
    assert count_macs(conv, (3, 8, 8)) == 64 * 27 * 40
    # OS 32x32: ceil(64 / 32) = 2 row folds, each reads all 27 x 40 filter elements; / 8
    assert weight_memory_accesses(conv, (3, 8, 8)) == 2 * 27 * 40 // 8
    # 16 rows: 4 folds; the column count does not matter for filter reads
    assert weight_memory_accesses(conv, (3, 8, 8), array=(16, 16)) == 4 * 27 * 40 // 8
    assert weight_memory_accesses(conv, (3, 8, 8), array=(16, 3)) == 4 * 27 * 40 // 8
    assert weight_memory_accesses(conv, (3, 8, 8), weights_per_access=1) == 2 * 27 * 40


def test_strided_conv_uses_scalesims_ofmap_formula():
    conv = nn.Conv2d(2, 4, 3, stride=2, padding=1)
    (lg,) = layer_geometry(conv, (2, 8, 8))
    assert (lg.ifmap_h, lg.ifmap_w) == (10, 10)  # padded ifmap, as SCALE-SIM topologies list it
    assert (lg.ofmap_h, lg.ofmap_w) == (5, 5)  # ceil((10 - 3 + 2) / 2); PyTorch computes 4x4
    assert count_macs(conv, (2, 8, 8)) == 16 * 18 * 4  # MACs are PyTorch's
    assert weight_memory_accesses(conv, (2, 8, 8), array=(8, 8), weights_per_access=1) == math.ceil(25 / 8) * 18 * 4


def test_linear_and_transposed_conv_by_hand():
    assert weight_memory_accesses(nn.Linear(10, 5), (10,), weights_per_access=1) == 50
    ct = nn.ConvTranspose2d(4, 2, 4, stride=2, padding=1)  # 4x5x5 -> 2x10x10
    (lg,) = layer_geometry(ct, (4, 5, 5))
    assert (lg.ifmap_h, lg.stride_h, lg.ofmap_h, lg.ofmap_w) == (13, 1, 10, 10)  # zero-inserted 9 + 2*2 pad
    assert weight_memory_accesses(ct, (4, 5, 5), weights_per_access=1) == math.ceil(100 / 32) * 16 * 4 * 2
    assert count_macs(ct, (4, 5, 5)) == 25 * 4 * 2 * 16


def test_grouped_conv_counts_each_group():
    conv = nn.Conv2d(4, 8, 3, padding=1, groups=2, bias=False)
    assert weight_memory_accesses(conv, (4, 8, 8), weights_per_access=1) == 2 * 2 * (9 * 2) * 4


def test_unmodelled_layer_is_refused():
    with pytest.raises(NfedgeError, match="not modelled"):
        weight_memory_accesses(nn.Sequential(nn.Conv1d(2, 2, 3)), (2, 16))


# Per-layer filter reads that SCALE-SIM 3.0.0 (PyPI `scalesim`, os dataflow) reported for these
# topology rows (DETAILED_ACCESS_REPORT.csv, "SRAM Filter Reads"), 32x32 and 16x8 arrays.
SCALESIM_GOLDEN = [
    ("resnet18", "layer2.0.conv1", 737_280, 1_400_832),
    ("resnet18", "layer2.0.shortcut.0", 81_920, 155_648),
    ("resnet18", "linear", 5_120, 5_120),
    ("ConvS", "encoder.0", 27_648, 55_296),
    ("DeConvS", "head.0", 49_152, 98_304),
    ("UNetS", "up3.up", 16_384, 32_768),
]


@pytest.mark.parametrize("model,layer,reads32,reads16x8", SCALESIM_GOLDEN)
def test_layer_reads_match_scalesim(model, layer, reads32, reads16x8):
    lg = {g.name: g for g in layer_geometry(_model(model), (3, 32, 32))}[layer]
    assert lg.filter_reads((32, 32)) == reads32
    assert lg.filter_reads((16, 8)) == reads16x8


def test_topology_csv_rows():
    text = scalesim_topology_csv(layer_geometry(_model("resnet18"), (3, 32, 32)))
    lines = text.strip().splitlines()
    assert lines[0].startswith("Layer name, IFMAP Height")
    assert "layer2_0_conv1, 34, 34, 3, 3, 64, 128, 2," in text
    assert lines[-1] == "linear, 1, 1, 1, 1, 512, 10, 1,"


# --------------------------------------------------------------------- Table 6 from the models

# ours at 3x32x32; exact where the paper's topology rows are the layer's (see nfedge.analysis.energy docstring)
OURS = {"resnet18": 2_755_968, "resnet50": 6_182_144, "vgg11": 1_334_656, "vgg16": 2_366_848,
        "vgg19": 3_104_128, "ConvL": 320_256, "ConvS": 41_508, "DeConvL": 259_456, "DeConvS": 86_400,
        "UNetL": 173_952, "UNetS": 43_968}


@pytest.mark.parametrize("name", list(TABLE6))
def test_twma_against_table6(name):
    twma = weight_memory_accesses(_model(name), (3, 32, 32))
    assert twma == OURS[name]
    dev = twma / TABLE6[name] - 1
    limit = {"DeConvL": 0.001, "DeConvS": 0.003, "UNetL": 0.04, "UNetS": 0.04}.get(name, 0.0)
    assert abs(dev) <= limit


# ------------------------------------------------------------------------------------- stage


KEYS = {"base", "generator", "voltage", "ber", "r", "base_params", "base_macs", "base_weight_accesses",
        "generator_params", "generator_macs", "generator_weight_accesses", "energy_saving",
        "mac_energy_saving", "dataflow"}


def test_estimate_energy_default():
    res = estimate_energy(EnergyConfig())
    assert set(res) == KEYS
    assert res["base"] == "cnn-s" and res["generator"] == "ConvS"
    assert res["voltage"] == 0.833 and res["ber"] == pytest.approx(0.01115) and res["r"] == pytest.approx(0.6944)
    assert res["generator_params"] == count_params(create_generator("ConvS", in_channels=1))
    assert res["energy_saving"] == pytest.approx(
        1 - res["r"] - res["generator_weight_accesses"] / res["base_weight_accesses"])
    assert res["mac_energy_saving"] == pytest.approx(1 - res["r"] - res["generator_macs"] / res["base_macs"])
    assert "output-stationary 32x32" in res["dataflow"]
    json.dumps(res)  # plain JSON types


def test_estimate_energy_paper_pair():
    res = estimate_energy(EnergyConfig(base="resnet18", generator="ConvL", input="3x32x32"))
    assert res["base_weight_accesses"] == TABLE6["resnet18"] and res["generator_weight_accesses"] == TABLE6["ConvL"]
    assert res["base_params"] == 11_173_962 and res["generator_params"] == 723_273
    assert 100 * res["energy_saving"] == pytest.approx(18.94, abs=0.01)


def test_estimate_energy_by_ber_and_without_generator():
    res = estimate_energy(EnergyConfig(voltage=None, ber=0.01115, generator=None))
    assert res["voltage"] == pytest.approx(0.833, abs=1e-6) and res["ber"] == 0.01115
    assert res["generator"] is None and res["generator_weight_accesses"] is None
    assert res["energy_saving"] == pytest.approx(1 - res["r"])


@pytest.mark.parametrize("kwargs,match", [
    ({"base": "resnet9"}, "unknown base model"),
    ({"generator": "ConvXL"}, "unknown generator"),
    ({"input": "3x32"}, "CxHxW"),
    ({"input": "3x0x32"}, "CxHxW"),
    ({"classes": 0}, "classes"),
    ({"ber": 0.01}, "exactly one of voltage and ber"),
    ({"voltage": None}, "exactly one of voltage and ber"),
    ({"array_rows": 0}, "array_rows"),
])
def test_bad_config_is_a_one_line_error(kwargs, match):
    with pytest.raises(NfedgeError, match=match) as e:
        EnergyConfig(**kwargs)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs,match", [
    ({"voltage": 0.5}, "outside calibration"),
    ({"input": "1x28x28"}, "multiples of 8"),
    ({"base": "vgg11", "generator": None, "input": "3x8x8"}, "does not run on input 3x8x8"),
])
def test_bad_run_is_a_one_line_error(kwargs, match):
    with pytest.raises(NfedgeError, match=match) as e:
        estimate_energy(EnergyConfig(**kwargs))
    assert "\n" not in str(e.value)


def test_config_json_round_trip():
    cfg = EnergyConfig(base="resnet18", generator="UNetS", input="3x32x32", voltage=None, ber=0.005)
    assert EnergyConfig.from_json(cfg.to_json()) == cfg


# -------------------------------------------------------------------------------- list_models


def test_list_models_has_every_registered_name():
    rows = list_models((3, 32, 32), 10)
    names = {(r["name"], r["kind"]) for r in rows}
    assert names == {(n, "base") for n in list_base_models()} | {(n, "generator") for n in list_generators()}
    by = {r["name"]: r for r in rows}
    assert by["resnet18"]["params"] == 11_173_962 and by["resnet18"]["weight_accesses"] == TABLE6["resnet18"]
    assert by["ConvS"]["macs"] == count_macs(create_generator("ConvS"), (3, 32, 32))
    assert by["UIP"]["weight_accesses"] == 0 and by["UIP"]["params"] == 3 * 32 * 32
    assert all("error" not in r for r in rows)


def test_list_models_marks_models_that_do_not_fit_the_input():
    rows = {r["name"]: r for r in list_models((1, 28, 28), 10)}
    assert rows["cnn-xs"]["weight_accesses"] > 0 and "error" not in rows["cnn-xs"]
    assert rows["ConvL"]["params"] is None and "multiples of 8" in rows["ConvL"]["error"]


def test_counting_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    m = create_base_model("cnn-xs", in_channels=1)
    m.train()
    m.features[1].eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    weight_memory_accesses(m, (1, 32, 32))
    count_macs(m, (1, 32, 32))
    assert m.training and not m.features[1].training
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # BN statistics untouched
    assert not m._forward_hooks and not any(x._forward_hooks for x in m.modules())
