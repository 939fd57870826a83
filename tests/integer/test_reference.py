"""The exact integer reference: against a plain int64 implementation, against its fake-quantized float twin
(within one step of each layer's grid), under faulty codes, and through the NeuralFuse front."""

import numpy as np
import pytest
import torch
from conftest import cnn_xs_with_bn_stats
from numpy.lib.stride_tricks import sliding_window_view

from nfedge.errors import NfedgeError
from nfedge.integer.calibrate import INPUT_SCALE, calibrate, program_weights
from nfedge.integer.program import INPUT, trace_program
from nfedge.integer.reference import image_codes, integer_op, run_front, run_integer
from nfedge.integer.scheme import INT32_MIN, quantize_to_int8, requantize
from nfedge.integer.simulate import float_op
from nfedge.models import create_generator
from nfedge.sram.faults import InjectConfig, inject_faults
from nfedge.sram.image import build_image, with_codes


def _inputs(n=16, seed=0):
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def base():
    model = cnn_xs_with_bn_stats(3)
    image = build_image(model, 8)
    prog = calibrate(trace_program(model, True), model, _inputs(64, 1), image=image)
    return model, image, prog


def _conv_int64(x, w, pad):
    """Direct int64 convolution (stride 1): the definition, no float anywhere."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = sliding_window_view(xp, w.shape[2:], axis=(2, 3))  # N, C, H, W, kh, kw
    return np.einsum("nchwij,ocij->nohw", win, w.astype(np.int64))


def test_reference_equals_plain_int64_arithmetic_on_faulty_codes(base):
    model, image, prog = base
    faulty, audit = inject_faults(image, InjectConfig(ber=0.05, chip=2))
    assert audit.flipped_bits > 0
    codes = image_codes(prog, faulty)
    trace = run_integer(prog, quantize_to_int8(_inputs().numpy(), INPUT_SCALE), codes, keep=True)
    convs = [op for op in prog.ops if op.kind == "conv"]
    assert len(convs) == 3
    for op in convs:
        p = op.params
        ch = (1, -1, 1, 1)
        acc = _conv_int64(trace[op.inputs[0]], codes[prog.weight_key(op)], op.attrs["padding"]) + p["bias_q"].reshape(ch)
        want = requantize(acc, p["sign"].reshape(ch), p["mult"].reshape(ch), p["shift"].reshape(ch), p["lo"], p["hi"])
        assert np.array_equal(trace[op.output], want)
    assert trace[prog.output].dtype == np.int64 and trace[prog.output].shape == (16, 10)


def _layerwise_gap(prog, codes, weights, x_q):
    """Max over layers of |integer output - fake-quant output| in units of the output's grid, each layer fed the
    integer reference's own inputs."""
    trace = run_integer(prog, x_q, codes, keep=True)
    gaps = {}
    for op in prog.ops:
        a = [torch.from_numpy(trace[i] * prog.scales[i]) for i in op.inputs]
        y = float_op(prog, op, a, weights, fake_quant=True).numpy() / prog.scales[op.output]
        gaps[op.output] = (float(np.abs(trace[op.output] - y).max()), op.params.get("lo") == INT32_MIN)
    return gaps


def test_fake_quant_twin_is_within_one_step_per_layer(base):
    model, image, prog = base
    gaps = _layerwise_gap(prog, image_codes(prog, image), program_weights(prog, model, image),
                          quantize_to_int8(_inputs(32, 4).numpy(), INPUT_SCALE))
    for name, (gap, is_logits) in gaps.items():
        # int8 tensors: the float twin rounds the same value, up to float error at a .5 boundary: one step;
        # logits live on a 2^20-times finer grid, where the bias rounding (half an accumulator step) shows
        assert gap <= (2**10 if is_logits else 1.0 + 1e-9), (name, gap)


def test_a_single_flipped_weight_bit_changes_the_output(base):
    model, image, prog = base
    x_q = quantize_to_int8(_inputs(64, 5).numpy(), INPUT_SCALE)
    clean = run_integer(prog, x_q, image_codes(prog, image))
    codes = image.codes.copy()
    codes[3] ^= np.int8(1 << 6)  # bit 6 of the first conv's fourth weight
    flipped = with_codes(image, codes, None)
    out = run_integer(prog, x_q, image_codes(prog, flipped))
    assert not np.array_equal(out, clean)
    assert np.array_equal(run_integer(prog, x_q, image_codes(prog, image)), clean)  # deterministic


@pytest.mark.parametrize("name", ["ConvT", "UNetT"])
def test_generator_front_stays_in_range_and_matches_its_float_twin(name):
    torch.manual_seed(0)
    gen = create_generator(name, in_channels=1).eval()
    gprog = calibrate(trace_program(gen, False), gen, _inputs(32, 6))
    assert INPUT in gprog.scales and not gprog.weights_from_image and gprog.constants
    x_q = quantize_to_int8(_inputs(8, 7).numpy(), INPUT_SCALE)
    fx = run_front(gprog, x_q)
    assert fx.shape == x_q.shape and fx.min() >= -127 and fx.max() <= 127
    weights = {k: (c, gprog.weight_scales[k]) for k, c in gprog.constants.items()}
    for op_name, (gap, _) in _layerwise_gap(gprog, gprog.constants, weights, x_q).items():
        assert gap <= 1.0 + 1e-9, (name, op_name, gap)


def test_unsupported_layers_are_one_line_errors():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.GELU(approximate="tanh"))
    with pytest.raises(NfedgeError, match=r"GELU\(approximate='tanh'\): only the exact GELU"):
        trace_program(model, False)
    dilated = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, dilation=2))
    with pytest.raises(NfedgeError, match="dilated"):
        trace_program(dilated, False)
    grouped_t = torch.nn.Sequential(torch.nn.ConvTranspose2d(2, 2, 3, groups=2))
    with pytest.raises(NfedgeError, match="grouped transposed"):
        trace_program(grouped_t, False)


def test_a_base_program_needs_its_image():
    model = cnn_xs_with_bn_stats(0)
    with pytest.raises(NfedgeError, match="memory image"):
        calibrate(trace_program(model, True), model, _inputs(4))


def test_programs_survive_json_exactly(base):
    import json

    from nfedge.integer.program import program_from_dict, program_to_dict

    model, image, prog = base
    again = program_from_dict(json.loads(json.dumps(program_to_dict(prog))))
    x_q = quantize_to_int8(_inputs(8, 9).numpy(), INPUT_SCALE)
    assert np.array_equal(run_integer(again, x_q, image_codes(again, image)), run_integer(prog, x_q, image_codes(prog, image)))
    with pytest.raises(NfedgeError, match="not an nfedge-integer-program"):
        program_from_dict({"format": "x"})


@pytest.mark.parametrize("cin", [113, 114])  # K = 1017 (float32 path) and 1026 (float64 path) terms per output
def test_the_accumulators_are_exact_at_the_largest_k_and_extreme_operands(cin):
    from nfedge.integer.program import Op
    from nfedge.integer.reference import _mac

    rng = np.random.default_rng(cin)
    x = rng.choice([-128, 127], size=(2, cin, 5, 5)).astype(np.int64)  # the largest |products|, all one sign
    x[0] = -128
    w = np.full((3, cin, 3, 3), -128, dtype=np.int64)
    w[1] = rng.integers(-128, 128, w[1].shape)
    op = Op("conv", ["input"], "y", attrs={"stride": 1, "padding": 0})
    got = _mac(op, torch.from_numpy(x), torch.from_numpy(w)).numpy()
    want = np.einsum("nchwij,ocij->nohw", sliding_window_view(x, (3, 3), axis=(2, 3)), w)
    assert np.array_equal(got, want) and int(np.abs(want).max()) == cin * 9 * 128 * 128


def test_a_zero_batchnorm_scale_is_a_clear_error():
    from nfedge.train.eopm import init_identity

    gen = init_identity(create_generator("ConvT", in_channels=1)).eval()  # the last BatchNorm's gamma is 0
    with pytest.raises(NfedgeError, match="identity initialisation"):
        calibrate(trace_program(gen, False), gen, _inputs(8, 11))
