"""The TOSA reference model as the third oracle of integer mode (issue #27): integer programs exported as TOSA 1.0
(nfedge.integer.tosa_export), run by Arm's reference model from the tosa-tools wheel (a real subprocess), against
nfedge's exact integer reference. The bound is equality: every output integer, clean and on two faulty chips, with
and without the generator front; and every operator kind of the integer program, each on its own small model.
"""

import copy
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from nfedge.errors import NfedgeError
from nfedge.integer.calibrate import INPUT_SCALE, calibrate, calibrate_programs
from nfedge.integer.program import trace_program
from nfedge.integer.reference import run_front
from nfedge.integer.scheme import add_rescaled, quantize_to_int8
from nfedge.integer.tosa_export import D, EMITTERS, T, TosaExportConfig, _Graph, add_exact, export_integer_tosa
from nfedge.integer.tosa_reference import compare_tosa_with_reference, reference_model_binary, run_tosa_reference
from nfedge.models import create_base_model, create_generator
from nfedge.sram.faults import InjectConfig, inject_faults
from nfedge.sram.image import build_image, with_codes

N = 16  # images per comparison: the reference model takes about 1 s for cnn-s at this batch
EXACT = {"outputs": 1.0, "predictions": 1.0, "max_diff": 0}


def _inputs(n, seed, size=32, channels=1, width=None):
    return torch.rand(n, channels, size, width or size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _x_q(n=N, seed=2, size=32, channels=1, width=None):
    return quantize_to_int8(_inputs(n, seed, size, channels, width).numpy(), INPUT_SCALE)


def _bn_stats(m: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorms, some gammas negative (the sign the TOSA export applies with a MUL)."""
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            c = mod.num_features
            mod.running_mean.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
            mod.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            mod.weight.data.copy_(torch.rand(c, generator=g) * 3 - 1.0)
            mod.bias.data.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
    return m.eval()


@pytest.fixture(scope="module")
def cnn_s():
    """cnn-s (the issue's model) with its 8-bit image, the ConvT generator, calibrated together (calibrate_programs),
    and two faulty chips."""
    torch.manual_seed(0)
    model = _bn_stats(create_base_model("cnn-s", in_channels=1, num_classes=10))
    gen = create_generator("ConvT", in_channels=1).eval()
    image = build_image(model, 8)
    progs = calibrate_programs(model, image, {"ConvT": gen}, _inputs(16, 1))
    chips = {"clean": image}
    for chip in (1, 2):
        chips[f"chip {chip}"], audit = inject_faults(image, InjectConfig(ber=0.01, chip=chip))
        assert audit.flipped_bits > 0
    return progs, chips


@pytest.mark.slow
@pytest.mark.parametrize("front", [False, True], ids=["base", "front"])
def test_reference_model_equals_the_integer_reference_on_clean_and_faulty_chips(cnn_s, front, tmp_path):
    progs, chips = cnn_s
    gprog = progs["ConvT"] if front else None
    x_q = _x_q()
    outs = {}
    for name, image in chips.items():
        model = export_integer_tosa(TosaExportConfig(batch=N), progs["base"], tmp_path / "m.tosa", (1, 32, 32),
                                    image=image, generator_program=gprog)
        row = compare_tosa_with_reference(model, progs["base"], x_q, image, gprog)
        assert {k: row[k] for k in EXACT} == EXACT, (name, row)
        assert row.get("front", 1.0) == 1.0, (name, row)
        assert model.operators["CONV2D"] == 4 + (7 if front else 0) and "RESCALE" in model.operators
        outs[name] = run_tosa_reference(model, x_q)["output"]
    # each file carries its chip's codes: the faults really change the reference model's integers
    assert not np.array_equal(outs["clean"], outs["chip 1"]) and not np.array_equal(outs["chip 1"], outs["chip 2"])


def test_the_front_alone_is_f_of_x(cnn_s, tmp_path):
    """A generator program exported as the base of nothing: its own output, and F(x) through the add path."""
    progs, _ = cnn_s
    gprog = progs["ConvT"]
    model = export_integer_tosa(TosaExportConfig(batch=4), gprog, tmp_path / "g.tosa", (1, 32, 32))
    x_q = _x_q(4, 5)
    row = compare_tosa_with_reference(model, gprog, x_q, None)
    assert {k: row[k] for k in EXACT} == EXACT, row
    assert {"RESIZE", "TABLE", "MAX_POOL2D"} <= set(model.operators)
    assert run_front(gprog, x_q).shape == x_q.shape


class _Kinds(nn.Module):
    """Every other op kind: grouped and depthwise convs, overlapping padded max pooling, a windowed average pool,
    a residual add with a fused clamp, a transposed conv, concat, nearest upsampling, sigmoid and hardswish tables,
    a flatten of a 2x2 map (a TRANSPOSE to nfedge's (C, H, W) order), on a 9x9 input (odd: strided windows trimmed)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
        self.gr = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.mp = nn.MaxPool2d(3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        self.side = nn.Conv2d(8, 4, 1)
        self.ap = nn.AvgPool2d(3, stride=3)
        self.fc = nn.Linear(8 * 2 * 2, 5)

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))  # 9x9
        d = torch.clamp(self.dw(y), -0.5, 0.75)  # 5x5
        r = nn.functional.relu6(self.gr(d) + d)  # residual add, clamp fused
        m = self.mp(r)  # 3x3
        u = torch.sigmoid(self.up(m))  # 6x6
        s = nn.functional.hardswish(self.side(nn.functional.interpolate(m, scale_factor=2, mode="nearest")))
        return self.fc(torch.flatten(self.ap(torch.cat([u, s], 1)), 1))  # 2x2


def test_every_op_kind_equals_the_reference(tmp_path):
    """As a generator program (the memory image holds no transposed-conv weights): int8 constants per channel."""
    torch.manual_seed(3)
    model = _bn_stats(_Kinds(), 3)
    prog = calibrate(trace_program(model, False), model, _inputs(32, 1, 9, 2))
    kinds = {op.kind for op in prog.ops}
    assert {"conv", "add", "maxpool", "avgpool", "upsample", "concat", "flatten", "linear"} <= kinds, kinds
    model_t = export_integer_tosa(TosaExportConfig(batch=8), prog, tmp_path / "k.tosa", (2, 9, 9))
    row = compare_tosa_with_reference(model_t, prog, _x_q(8, 6, 9, 2), None)
    assert {k: row[k] for k in EXACT} == EXACT, row
    ops = set(model_t.operators)
    assert {"DEPTHWISE_CONV2D", "TRANSPOSE_CONV2D", "CONCAT", "TABLE", "RESIZE", "ARITHMETIC_RIGHT_SHIFT", "SLICE",
            "TRANSPOSE"} <= ops, ops


def test_extreme_codes_and_inputs(tmp_path):
    """Every code -128 or 127 and every input -127 or 127: the largest accumulators, negative ones rounded down."""
    torch.manual_seed(1)
    model = _bn_stats(create_base_model("cnn-xs", in_channels=1, num_classes=10), 1)
    image = build_image(model, 8)
    prog = calibrate(trace_program(model, True), model, _inputs(16, 1), image=image)
    rng = np.random.default_rng(0)
    extreme = with_codes(image, rng.choice(np.array([-128, 127], np.int8), image.codes.size), None)
    x_q = rng.choice(np.array([-127, 127]), (8, 1, 32, 32))
    model_t = export_integer_tosa(TosaExportConfig(batch=8), prog, tmp_path / "e.tosa", (1, 32, 32), image=extreme)
    row = compare_tosa_with_reference(model_t, prog, x_q, extreme)
    assert {k: row[k] for k in EXACT} == EXACT, row


@pytest.mark.parametrize("shift", [17, 30, 40, 47])
def test_the_split_add_is_the_shared_shift_add(shift, tmp_path):
    """add_exact's split form (neither factor a power of two) against scheme.add_rescaled, on every int8 pair."""
    rng = np.random.default_rng(shift)
    ma, mb = (int(v) for v in rng.integers(1 << 30, 1 << 31, 2) >> max(0, 31 - shift + 1))
    a = np.repeat(np.arange(-128, 128), 256).reshape(1, 256, 256, 1)
    b = np.tile(np.arange(-128, 128), 256).reshape(1, 256, 256, 1)
    g = _Graph()
    xa, xb = (g.ser.addPlaceholder([1, 256, 256, 1], D.INT8) for _ in range(2))
    y = add_exact(g, T(xa.name, (1, 256, 256, 1), D.INT8), T(xb.name, (1, 256, 256, 1), D.INT8), ma, mb, shift)
    g.ser.addOutputTensor(g.tensors[y.name])
    (tmp_path / "a.tosa").write_bytes(g.ser.serialize())
    np.save(tmp_path / "a.npy", a.astype(np.int8))
    np.save(tmp_path / "b.npy", b.astype(np.int8))
    r = subprocess.run([str(reference_model_binary()), "--tosa_file", "a.tosa", "--ifm_name", f"{xa.name},{xb.name}",
                        "--ifm_file", "a.npy,b.npy", "--ofm_name", y.name, "--ofm_file", "y.npy", "--flatbuffer_dir",
                        str(tmp_path), "--output_dir", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-500:]
    got = np.load(tmp_path / "y.npy").astype(np.int64)
    assert np.array_equal(got, add_rescaled(a, b, ma, mb, shift)), (ma, mb, shift)


def test_refusals_are_one_line_errors(cnn_s, tmp_path):
    progs, chips = cnn_s
    raw = trace_program(create_base_model("cnn-xs", in_channels=1, num_classes=10), True)
    odd = copy.deepcopy(progs["base"])
    odd.ops[0].kind = "softmax"
    odd.ops[0].module = "features.0"
    model = export_integer_tosa(TosaExportConfig(batch=2), progs["base"], tmp_path / "ok.tosa", (1, 32, 32),
                                image=chips["clean"])
    cases = [
        (lambda: export_integer_tosa(TosaExportConfig(), raw, tmp_path / "a.tosa", (1, 32, 32)), "not calibrated"),
        (lambda: export_integer_tosa(TosaExportConfig(), progs["base"], tmp_path / "a.tosa", (1, 32, 32)), "image"),
        (lambda: export_integer_tosa(TosaExportConfig(), odd, tmp_path / "a.tosa", (1, 32, 32), image=chips["clean"]),
         "features.0 is a 'softmax'"),
        (lambda: export_integer_tosa(TosaExportConfig(), progs["base"], tmp_path / "a.tosa", (32, 32),
                                     image=chips["clean"]), "input_shape"),
        (lambda: TosaExportConfig(batch=0), "batch"),
        (lambda: run_tosa_reference(model, _x_q(3)), "takes"),
        (lambda: run_tosa_reference(model, np.full((2, 1, 32, 32), 300)), "int8"),
    ]
    for call, match in cases:
        with pytest.raises(NfedgeError, match=match) as e:
            call()
        assert "\n" not in str(e.value)
    assert not (tmp_path / "a.tosa").exists()
    kinds = {"conv", "linear", "add", "maxpool", "avgpool", "pad", "crop", "upsample", "concat", "flatten"}
    assert set(EMITTERS) >= kinds
