"""trace_program on a user's own models (issue 28): the docs' MyNet (global average pooling written as
x.mean((2, 3))) as a class and as its torch.export program runs in integer mode, and every layer integer mode
cannot take is named at once, in the user's terms."""

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nfedge.errors import NfedgeError
from nfedge.integer.calibrate import INPUT_SCALE, calibrate, program_weights
from nfedge.integer.program import trace_program
from nfedge.integer.reference import image_codes, run_integer
from nfedge.integer.scheme import INT32_MIN, quantize_to_int8
from nfedge.integer.simulate import float_op
from nfedge.sram.image import build_image
from nfedge.train.model_source import load_program

DOC = Path(__file__).resolve().parents[2] / "docs" / "BRING_YOUR_OWN.md"


def _doc_mynet() -> type[nn.Module]:
    """MyNet exactly as docs/BRING_YOUR_OWN.md writes it (its `cat > my_net.py` block)."""
    src = re.search(r"cat > my_net.py <<'EOF'\n(.*?)\nEOF\n", DOC.read_text(), re.S).group(1)
    ns: dict = {}
    exec(compile(src, "my_net.py", "exec"), ns)  # noqa: S102 - the repository's own documentation
    return ns["MyNet"]


def _inputs(n, seed, channels=1, size=32):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _with_bn_stats(model: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _exported(model: nn.Module, channels=1, size=32) -> nn.Module:
    """The module `import-model --exported-program` rebuilds from a .pt2 (exported with a dynamic batch, as the docs do)."""
    buf = io.BytesIO()
    batch = torch.export.Dim("batch")
    ep = torch.export.export(model.eval(), (torch.zeros(2, channels, size, size),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(ep, buf)
    return load_program(buf.getvalue(), "test program")


@pytest.fixture(scope="module")
def mynet():
    torch.manual_seed(0)
    return _with_bn_stats(_doc_mynet()(width=16), 1)


def _layerwise_gap(prog, model, image, x_q):
    """Per op: max |integer output - float twin output| in units of the output's grid, each layer of the twin fed
    the integer reference's own inputs (as tests/integer/test_reference.py checks the registered models)."""
    trace = run_integer(prog, x_q, image_codes(prog, image), keep=True)
    weights = program_weights(prog, model, image)
    gaps = {}
    for op in prog.ops:
        a = [torch.from_numpy(trace[i] * prog.scales[i]) for i in op.inputs]
        y = float_op(prog, op, a, weights, fake_quant=True).numpy() / prog.scales[op.output]
        gaps[op.output] = (float(np.abs(trace[op.output] - y).max()), op.params.get("lo") == INT32_MIN)
    return gaps


@pytest.mark.parametrize("form", ["class", "exported program"])
def test_the_docs_mynet_runs_in_integer_mode(mynet, form):
    model = mynet if form == "class" else _exported(mynet)
    image = build_image(model, 8)
    prog = calibrate(trace_program(model, True), model, _inputs(64, 2), image=image)
    kinds = [op.kind for op in prog.ops]
    # x.mean((2, 3)) is the existing global average pool (then a flatten): no new operator for any back end
    assert kinds == ["conv", "maxpool", "conv", "maxpool", "avgpool", "flatten", "linear"]
    assert all(op.attrs.get("bn_eps") == 1e-5 for op in prog.ops if op.kind == "conv")
    x_q = quantize_to_int8(_inputs(16, 3).numpy(), INPUT_SCALE)
    out = run_integer(prog, x_q, image_codes(prog, image))
    assert out.shape == (16, 10) and np.array_equal(out, run_integer(prog, x_q, image_codes(prog, image)))
    for name, (gap, is_logits) in _layerwise_gap(prog, model, image, x_q).items():
        assert gap <= (2**10 if is_logits else 1.0 + 1e-9), (form, name, gap)
    # and the integer model is the float model, quantized: the same predictions on most images
    with torch.no_grad():
        agree = float((torch.from_numpy(out).argmax(1) == model(_inputs(16, 3)).argmax(1)).float().mean())
    assert agree >= 0.75, agree


def test_the_exported_program_gives_the_class_s_integers(mynet):
    ep = _exported(mynet)
    x_calib, x_q = _inputs(32, 4), quantize_to_int8(_inputs(8, 5).numpy(), INPUT_SCALE)
    outs = []
    for model in (mynet, ep):
        image = build_image(model, 6)
        prog = calibrate(trace_program(model, True), model, x_calib, image=image)
        outs.append(run_integer(prog, x_q, image_codes(prog, image)))
    assert np.array_equal(outs[0], outs[1])


class _Odd(nn.Module):
    """Four layers integer mode cannot take: a dilated conv, a ReLU after a max pool, a padded average pool and the
    add of a constant."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=2, dilation=2), nn.BatchNorm2d(16), nn.MaxPool2d(2),
                                      nn.ReLU())
        self.pool = nn.AvgPool2d(3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head((self.pool(self.features(x)) + 1.0).mean((2, 3)))


@pytest.mark.parametrize("form", ["class", "exported program"])
def test_every_unsupported_layer_is_named_in_one_error(form):
    model = _Odd().eval() if form == "class" else _exported(_Odd())
    with pytest.raises(NfedgeError) as e:
        trace_program(model, True)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("integer mode cannot take 4 layers")
    assert re.search(r"features\.0 \(Conv2d, dilation=[\[(]2, 2[\])]: dilated\)", msg)
    assert "features.3 (ReLU: not directly after a conv, linear or add" in msg
    assert re.search(r"pool \(AvgPool2d, padding=[\[(]?1(, 1[\])])?: only without padding", msg)
    assert "(add of a constant)" in msg
    assert "supported: Conv2d" in msg and "mean over H,W" in msg and msg.endswith("build with --mode weight-only")
    # the BatchNorm after the refused conv belongs to it: not reported on its own
    assert "features.1" not in msg


def test_flatten_spellings_and_refused_means():
    class ViewNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 4, 3, stride=2, padding="valid"), nn.Linear(4 * 15 * 15, 3)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            return self.fc(y.view(y.size(0), -1))

    for model in (ViewNet().eval(), _exported(ViewNet())):
        prog = trace_program(model, True)
        assert [op.kind for op in prog.ops] == ["conv", "flatten", "linear"]
        assert prog.ops[0].activation == "relu" and prog.ops[0].attrs["padding"] == 0

    class ChannelMean(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return self.conv(x).mean(1)

    with pytest.raises(NfedgeError, match=r"mean \(mean over dims 1: only over H,W"):
        trace_program(ChannelMean().eval(), True)


def test_the_exported_mynet_exports_to_onnx_and_matches_the_reference(mynet, tmp_path):
    from nfedge.integer.onnx_export import compare_with_reference, export_integer_onnx

    model = _exported(mynet)
    image = build_image(model, 8)
    prog = calibrate(trace_program(model, True), model, _inputs(32, 6), image=image)
    export_integer_onnx(prog, tmp_path / "m.onnx", (1, 32, 32), image=image)
    rows = compare_with_reference(tmp_path / "m.onnx", prog, quantize_to_int8(_inputs(8, 7).numpy(), INPUT_SCALE),
                                  {"clean": image})
    assert (rows["clean"]["outputs"], rows["clean"]["max_diff"]) == (1.0, 0), rows
