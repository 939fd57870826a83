"""The ONNX cross-check of integer mode (issue #11 item 5): the integer program as ONNX integer operators
(ConvInteger, MatMulInteger, int64 rescale), run by the real onnxruntime (CPU), against the exact integer reference.

The exact export uses only integer arithmetic, so the bound is equality: every output integer and every
prediction must be identical, on clean and faulty images, at 8 and 4 bits, with and without a generator front.
The float (QLinearConv/QDQ-style) rescale is the documented inexact form; it is measured, not required to be equal.
"""

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import cnn_xs_with_bn_stats
from torch import nn

from nfedge.errors import NfedgeError
from nfedge.integer.calibrate import INPUT_SCALE, LOGIT_RESOLUTION, calibrate, calibrate_programs
from nfedge.integer.onnx_export import compare_with_reference, export_integer_onnx
from nfedge.integer.program import trace_program
from nfedge.integer.reference import image_codes, run_integer
from nfedge.integer.scheme import quantize_to_int8
from nfedge.models import create_generator
from nfedge.sram.faults import InjectConfig, inject_faults
from nfedge.sram.image import build_image, with_codes

N_IMAGES = 64  # test inputs per comparison: a few tenths of a second of onnxruntime and reference each
EXACT = {"predictions": 1.0, "outputs": 1.0, "max_diff": 0}


def _inputs(n, seed, size=32, channels=1):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _x_q(n=N_IMAGES, seed=2, size=32, channels=1):
    return quantize_to_int8(_inputs(n, seed, size, channels).numpy(), INPUT_SCALE)


def _agreement(row):
    return {k: row[k] for k in EXACT}


@pytest.fixture(scope="module")
def model():
    return cnn_xs_with_bn_stats(3)


@pytest.fixture(scope="module", params=[8, 4], ids=["8bit", "4bit"])
def base(request, model, tmp_path_factory):
    image = build_image(model, request.param)
    prog = calibrate(trace_program(model, True), model, _inputs(64, 1), image=image)
    path = tmp_path_factory.mktemp("onnx") / f"base{request.param}.onnx"
    return image, prog, path, export_integer_onnx(prog, path, (1, 32, 32), image=image)


def test_the_model_is_valid_onnx_of_integer_operators(base):
    image, _, path, model = base
    written = onnx.load(path)
    assert written.SerializeToString() == model.SerializeToString()  # the file holds the model returned
    onnx.checker.check_model(written, full_check=True)
    kinds = {n.op_type for n in model.graph.node}
    assert {"ConvInteger", "MatMulInteger", "MaxPool", "ReduceSum", "Mod"} <= kinds
    assert not kinds & {"Conv", "Gemm", "MatMul", "QuantizeLinear", "Round"}  # nothing float in a layer
    ins = {i.name: i.type.tensor_type for i in model.graph.input}
    assert ins["x"].elem_type == ins["image"].elem_type == onnx.TensorProto.INT8
    assert ins["image"].shape.dim[0].dim_value == image.manifest.total_bytes
    assert not model.graph.initializer or all(t.name.startswith("const_") for t in model.graph.initializer)
    big = [t for t in model.graph.initializer if np.prod(t.dims) > 64]  # the weights are not baked in: only
    assert all(t.data_type == onnx.TensorProto.INT64 for t in big)  # per-channel rescale constants are this big
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.INT32  # the logits


def test_onnxruntime_equals_the_reference_on_clean_and_faulty_images(base):
    image, prog, path, _ = base
    faulty, audit = inject_faults(image, InjectConfig(ber=0.05, chip=2))
    stuck, _ = inject_faults(image, InjectConfig(fault="stuck-at", ber=0.05, chip=3))
    assert audit.flipped_bits > 0
    x_q = _x_q()
    rows = compare_with_reference(path, prog, x_q, {"clean": image, "flip": faulty, "stuck": stuck})
    for name, row in rows.items():
        assert _agreement(row) == EXACT, (name, row)
    # the one model reads whichever image it is given: the faulty codes really change the integers
    assert not np.array_equal(run_integer(prog, x_q, image_codes(prog, faulty)),
                              run_integer(prog, x_q, image_codes(prog, image)))


def test_extreme_codes_and_inputs_agree(model, tmp_path):
    """Every code -128 or 127 and every input -127 or 127: the largest products (2^14, where an int16 pair sum
    in a u8s8 kernel would saturate) and negative accumulators, which the floor shift must round down."""
    image = build_image(model, 8)
    prog = calibrate(trace_program(model, True), model, _inputs(64, 1), image=image)
    rng = np.random.default_rng(0)
    extreme = with_codes(image, rng.choice(np.array([-128, 127], np.int8), image.codes.size), None)
    x_q = rng.choice(np.array([-127, 127]), (16, 1, 32, 32))
    export_integer_onnx(prog, tmp_path / "m.onnx", (1, 32, 32), image=image)
    row = compare_with_reference(tmp_path / "m.onnx", prog, x_q, {"extreme": extreme})["extreme"]
    assert _agreement(row) == EXACT, row


@pytest.mark.parametrize("name", ["ConvT", "UNetT"])
def test_onnxruntime_equals_the_reference_behind_a_generator_front(model, name, tmp_path):
    torch.manual_seed(0)
    gen = create_generator(name, in_channels=1).eval()
    image = build_image(model, 8)
    progs = calibrate_programs(model, image, {name: gen}, _inputs(16, 1))  # 16: calibration dominates the time
    faulty, _ = inject_faults(image, InjectConfig(ber=0.02, chip=1))
    export_integer_onnx(progs["base"], tmp_path / "f.onnx", (1, 32, 32), image=image, generator_program=progs[name])
    rows = compare_with_reference(tmp_path / "f.onnx", progs["base"], _x_q(32), {"clean": image, "faulty": faulty},
                                  progs[name])
    for row in rows.values():
        assert _agreement(row) == EXACT and row["front_outputs"] == 1.0, (name, row)


@pytest.mark.parametrize("kernel,stride,padding,output_padding", [(4, 2, 1, 0), (3, 3, 2, 1), (3, 1, 1, 0)])
def test_transposed_convolutions_as_direct_integer_convolutions(kernel, stride, padding, output_padding, tmp_path):
    """The zero-insert + pad + flipped-kernel form, including a negative pad (k=3, s=3, p=2, op=1: crop one row)."""
    torch.manual_seed(1)
    gen = nn.Sequential(nn.ConvTranspose2d(2, 3, kernel, stride, padding, output_padding=output_padding),
                        nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1), nn.Tanh()).eval()
    gprog = calibrate(trace_program(gen, False), gen, _inputs(32, 3, size=8, channels=2))
    export_integer_onnx(gprog, tmp_path / "t.onnx", (2, 8, 8))
    row = compare_with_reference(tmp_path / "t.onnx", gprog, _x_q(16, 4, size=8, channels=2), {"gen": None})["gen"]
    assert _agreement(row) == EXACT, row


def test_the_float_rescale_is_close_but_not_exact(base, tmp_path):
    """The QLinearConv/QDQ form (float32 factor, round half to even) on the same program and images."""
    image, prog, _, _ = base
    faulty, _ = inject_faults(image, InjectConfig(ber=0.05, chip=2))
    export_integer_onnx(prog, tmp_path / "q.onnx", (1, 32, 32), image=image, rescale="float")
    rows = compare_with_reference(tmp_path / "q.onnx", prog, _x_q(), {"clean": image, "flip": faulty})
    assert min(r["outputs"] for r in rows.values()) < 1.0  # the check sees the float form's rounding
    for row in rows.values():
        assert row["predictions"] >= 0.99, row
        # measured: at most 1 logit unit; asserted: under 2^-8 of the largest calibration logit (2^20 units)
        assert row["max_diff"] < LOGIT_RESOLUTION / 256, row


def test_onnxruntime_runs_the_file_directly(base):
    """Without compare_with_reference: the file, onnxruntime's own API, the reference's integers."""
    image, prog, path, _ = base
    x_q = _x_q(8, 7)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"x": x_q.astype(np.int8), "image": image.codes})
    assert out.dtype == np.int32 and np.array_equal(out, run_integer(prog, x_q, image_codes(prog, image)))


def test_bad_input_is_a_one_line_error(model, base, tmp_path):
    image, prog, path, _ = base
    raw = trace_program(model, True)
    odd = copy.deepcopy(prog)
    odd.ops[0].kind = "softmax"
    cases = [
        (lambda: export_integer_onnx(raw, tmp_path / "a.onnx", (1, 32, 32), image=image), "not calibrated"),
        (lambda: export_integer_onnx(prog, tmp_path / "a.onnx", (1, 32, 32)), "memory image"),
        (lambda: export_integer_onnx(odd, tmp_path / "a.onnx", (1, 32, 32), image=image), "softmax"),
        (lambda: export_integer_onnx(prog, tmp_path / "a.onnx", (32, 32), image=image), "input_shape"),
        (lambda: export_integer_onnx(prog, tmp_path / "a.onnx", (1, 32, 32), image=image, rescale="fp"), "rescale"),
        (lambda: export_integer_onnx(prog, tmp_path / "a.onnx", (1, 32, 32), image=image, generator_program=prog),
         "generator"),
        (lambda: compare_with_reference(path, prog, _x_q(2), {"short": with_codes(image, image.codes[:-1], None)}),
         "bytes"),
    ]
    for call, match in cases:
        with pytest.raises(NfedgeError, match=match) as e:
            call()
        assert "\n" not in str(e.value)
    assert not (tmp_path / "a.onnx").exists()  # nothing half-written
