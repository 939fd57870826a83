"""Integer mode's newer operators (issue #23): residual add, depthwise and grouped conv, clamps (ReLU6, Hardtanh),
tables (sigmoid, SiLU, Hardswish, GELU, tanh), windowed average pooling, overlapping max pooling, zero pads, crops,
Identity and Dropout; and the MLPerf Tiny models built from them. Each through the host chain: trace, calibrate,
the exact reference (checked against plain int64 arithmetic), the fake-quantized twin (within one step per layer)
and onnxruntime (bit for bit, clean and faulty)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from edge_models import EdgeNet
from test_program import _exported, _inputs, _layerwise_gap, _with_bn_stats
from torch import nn

from nfedge.integer.calibrate import INPUT_SCALE, calibrate
from nfedge.integer.onnx_export import compare_with_reference, export_integer_onnx
from nfedge.integer.program import program_from_dict, program_to_dict, trace_program
from nfedge.integer.reference import image_codes, run_integer
from nfedge.integer.scheme import INT8_MAX, INT8_MIN, quantize_to_int8
from nfedge.integer.tables import TABLES
from nfedge.models.registry import create_base_model
from nfedge.sram.faults import InjectConfig, inject_faults
from nfedge.sram.image import build_image

EDGE_OPS = ["conv/hardswish", "maxpool", "conv/clamp", "conv/silu", "conv", "add/clamp", "avgpool", "conv/sigmoid",
            "pad", "conv/gelu", "conv/clamp", "conv/tanh", "avgpool", "flatten", "linear"]


def _ops(prog):
    return [op.kind + ("" if op.activation == "none" else "/" + op.activation) for op in prog.ops]


def _calibrated(model, shape=(1, 32, 32), bits=8):
    image = build_image(model, bits)
    x = torch.rand(48, *shape, generator=torch.Generator().manual_seed(2)) * 2 - 1
    return calibrate(trace_program(model, True), model, x, image=image), image


def _x_q(n, shape=(1, 32, 32), seed=3):
    return quantize_to_int8((torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1).numpy(),
                            INPUT_SCALE)


@pytest.fixture(scope="module")
def edgenet():
    torch.manual_seed(0)
    return _with_bn_stats(EdgeNet(), 1)


def _check_exact_everywhere(model, prog, image, shape, tmp_path, n=16):
    """The fake-quantized twin within one grid step per layer; onnxruntime equal to the reference on the clean image
    and on a faulty chip (1% of cells flipped); a flipped image changes the output."""
    x_q = _x_q(n, shape)
    for name, (gap, is_logits) in _layerwise_gap(prog, model, image, x_q).items():
        assert gap <= (2**10 if is_logits else 1.0 + 1e-9), (name, gap)
    faulty, _ = inject_faults(image, InjectConfig(ber=0.01, chip=1))
    export_integer_onnx(prog, tmp_path / "m.onnx", shape, image=image)
    rows = compare_with_reference(tmp_path / "m.onnx", prog, x_q, {"clean": image, "chip 1": faulty})
    for row in rows.values():
        assert (row["outputs"], row["max_diff"]) == (1.0, 0), rows
    assert not np.array_equal(run_integer(prog, x_q, image_codes(prog, image)),
                              run_integer(prog, x_q, image_codes(prog, faulty)))


@pytest.mark.parametrize("form", ["class", "exported program"])
def test_every_newer_operator_runs_exactly(edgenet, form, tmp_path):
    model = edgenet if form == "class" else _exported(edgenet)
    prog, image = _calibrated(model)
    assert _ops(prog) == EDGE_OPS
    by_kind = {op.kind: op for op in prog.ops}
    assert by_kind["maxpool"].attrs == {"kernel": 3, "stride": 2, "padding": 1}
    assert [op.attrs.get("groups") for op in prog.ops if op.kind == "conv"][1:3] == [16, 4]
    assert by_kind["pad"].attrs["pads"] == [1, 0, 0, 1]
    _check_exact_everywhere(model, prog, image, (1, 32, 32), tmp_path)
    with torch.no_grad():
        want = model(_inputs(16, 3)).argmax(1)
    got = torch.from_numpy(run_integer(prog, _x_q(16), image_codes(prog, image))).argmax(1)
    assert float((got == want).float().mean()) >= 0.75


@pytest.mark.parametrize("name,shape", [("resnet8", (1, 32, 32)), ("ds-cnn", (1, 49, 10)),
                                        ("mobilenet-v1-0.25", (1, 32, 32))])
def test_the_mlperf_tiny_models_run_exactly(name, shape, tmp_path):
    torch.manual_seed(0)
    model = _with_bn_stats(create_base_model(name, 1, 10), 1)
    prog, image = _calibrated(model, shape, bits=6)
    kinds = {op.kind for op in prog.ops}
    want = {"resnet8": {"add", "pad"}, "ds-cnn": {"pad", "crop"}, "mobilenet-v1-0.25": {"pad"}}[name]
    assert want <= kinds and {op.activation for op in prog.ops} <= {"none", "relu"}
    if name != "resnet8":  # every other conv is depthwise (groups = channels)
        assert any(op.attrs.get("groups", 1) > 1 for op in prog.ops)
    _check_exact_everywhere(model, prog, image, shape, tmp_path, n=8)


def test_the_residual_add_is_the_shared_shift_sum_of_plain_int64():
    """y = saturate((a Ma + b Mb + 2^(s-1)) >> s) at lo/hi, computed by hand from the two inputs' integers."""
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 1)

        def forward(self, x):
            return F.relu(self.a(x) + self.b(x))

    model = Res().eval()
    with torch.no_grad():
        model.b.weight.mul_(20.0)  # the two inputs at very different scales
    prog, image = _calibrated(model)
    add = next(op for op in prog.ops if op.kind == "add")
    assert add.activation == "relu" and (add.params["lo"], add.params["hi"]) == (0, INT8_MAX)
    trace = run_integer(prog, _x_q(8), image_codes(prog, image), keep=True)
    a, b = (trace[i].astype(np.int64) for i in add.inputs)
    p = add.params
    want = np.clip((a * p["ma"] + b * p["mb"] + (1 << (p["shift"] - 1))) >> p["shift"], 0, 127)
    assert np.array_equal(trace[add.output], want) and want.max() > 0
    s = prog.scales
    assert abs(p["ma"] / 2 ** p["shift"] - s[add.inputs[0]] / s[add.output]) < 1e-8
    assert abs(p["mb"] / 2 ** p["shift"] - s[add.inputs[1]] / s[add.output]) < 1e-8


def test_pooling_windows_and_padding_never_win():
    """Overlapping max pooling pads with -inf (a window of -128s stays -128); AvgPool2d(k)'s sums are exact."""
    class Pools(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1)

        def forward(self, x):
            return F.avg_pool2d(F.max_pool2d(self.conv(x), 3, 2, 1), 2)

    model = Pools().eval()
    with torch.no_grad():
        model.conv.weight.fill_(1.0)
        model.conv.bias.fill_(-0.5)  # outputs mostly negative: a zero pad would win, -inf does not
    prog, image = _calibrated(model)
    x_q = _x_q(4)
    trace = run_integer(prog, x_q, image_codes(prog, image), keep=True)
    mp, ap = prog.ops[1], prog.ops[2]
    y = trace[prog.ops[0].output]
    want = np.full((4, 2, 16, 16), INT8_MIN, np.int64)
    padded = np.pad(y, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=INT8_MIN)
    for i in range(16):
        for j in range(16):
            want[:, :, i, j] = padded[:, :, 2 * i: 2 * i + 3, 2 * j: 2 * j + 3].max(axis=(2, 3))
    assert np.array_equal(trace[mp.output], want) and (want < 0).any()
    sums = want.reshape(4, 2, 8, 2, 8, 2).sum(axis=(3, 5))
    p = ap.params
    assert ap.attrs["hw"] == 4
    assert np.array_equal(trace[ap.output], np.clip((sums * p["sign"] * p["mult"] + (1 << (p["shift"] - 1)))
                                                    >> p["shift"], INT8_MIN, INT8_MAX))


@pytest.mark.parametrize("fn", sorted(TABLES))
def test_every_table_is_its_function_on_the_grids(fn):
    """lut[q + 128] = round_half_up(f(q * pre_scale) / s_out), s_out fixed where the function's range is."""
    layer = {"tanh": nn.Tanh(), "sigmoid": nn.Sigmoid(), "silu": nn.SiLU(), "hardswish": nn.Hardswish(),
             "hardsigmoid": nn.Hardsigmoid(), "gelu": nn.GELU()}[fn]
    model = nn.Sequential(nn.Conv2d(1, 3, 3), layer, nn.Flatten(), nn.Linear(3 * 30 * 30, 2)).eval()
    prog, _ = _calibrated(model)
    op = prog.ops[0]
    assert op.activation == fn
    s_out = prog.scales[op.output]
    if TABLES[fn].out_scale is not None:
        assert s_out == TABLES[fn].out_scale
    q = np.arange(INT8_MIN, INT8_MAX + 1)
    real = TABLES[fn].fn(torch.from_numpy(q * op.params["pre_scale"])).numpy()
    assert np.array_equal(op.params["lut"], np.clip(np.floor(real / s_out + 0.5), INT8_MIN, INT8_MAX))


def test_relu6_clamps_on_the_output_grid():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU6(), nn.Conv2d(2, 2, 1), nn.Hardtanh(-0.25, 0.25),
                          nn.Flatten(), nn.Linear(2 * 30 * 30, 2)).eval()
    with torch.no_grad():
        model[0].weight.fill_(4.0)  # pre-activations far above 6: the clamp binds
    prog, _ = _calibrated(model)
    relu6, ht = prog.ops[0], prog.ops[1]
    assert (relu6.activation, ht.activation) == ("clamp", "clamp")
    assert relu6.params["lo"] == 0 and relu6.params["hi"] == min(127, int(np.floor(6 / prog.scales[relu6.output] + .5)))
    s = prog.scales[ht.output]
    assert (ht.params["lo"], ht.params["hi"]) == (int(np.floor(-0.25 / s + 0.5)), int(np.floor(0.25 / s + 0.5)))


def test_programs_with_newer_operators_survive_json(edgenet):
    prog, image = _calibrated(edgenet)
    again = program_from_dict(program_to_dict(prog))
    x_q = _x_q(4)
    assert np.array_equal(run_integer(prog, x_q, image_codes(prog, image)),
                          run_integer(again, x_q, image_codes(again, image)))


def test_quantization_aware_training_flows_through_residual_and_depthwise_layers(edgenet):
    from nfedge.integer.qat import LiveWeights
    from nfedge.integer.simulate import run_float

    prog, _ = _calibrated(edgenet)
    live = LiveWeights(prog, edgenet, bits=8, per_channel=True)
    loss = run_float(prog, _inputs(4, 5), None, fake_quant=True, live=live).square().mean()
    loss.backward()
    assert edgenet.dw[0].weight.grad is not None and float(edgenet.dw[0].weight.grad.abs().sum()) > 0
    assert edgenet.block.conv.weight.grad is not None and float(edgenet.block.conv.weight.grad.abs().sum()) > 0
    edgenet.zero_grad()
