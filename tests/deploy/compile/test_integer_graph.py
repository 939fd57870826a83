"""The integer Relax graphs, compiled by TVM for this CPU, equal the host integer reference bit for bit:
clean and faulty images, several widths, base model and the NeuralFuse front."""

import numpy as np
import pytest
import torch
from conftest import cnn_xs_with_bn_stats

from nfedge.deploy.compile.integer_graph import integer_relax_graphs
from nfedge.errors import NfedgeError
from nfedge.integer.calibrate import INPUT_SCALE, calibrate
from nfedge.integer.program import trace_program
from nfedge.integer.reference import image_codes, run_front, run_integer
from nfedge.integer.scheme import quantize_to_int8
from nfedge.models import create_generator
from nfedge.sram.faults import InjectConfig, inject_faults
from nfedge.sram.image import build_image

pytestmark = pytest.mark.slow


def _vm(mod):
    import tvm
    from tvm import relax

    return relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())


def _x(n, seed):
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("bits, generator", [(8, "ConvT"), (4, "UNetT"), (2, None)])
def test_tvm_integer_build_is_bit_exact_with_the_reference(bits, generator):
    import tvm

    model = cnn_xs_with_bn_stats(bits)
    image = build_image(model, bits, per_channel=bits == 4)
    prog = calibrate(trace_program(model, True), model, _x(32, 1), image=image)
    gprog = None
    if generator:
        torch.manual_seed(bits)
        gen = create_generator(generator, in_channels=1).eval()
        gprog = calibrate(trace_program(gen, False), gen, _x(32, 2))
    mods = integer_relax_graphs(prog, (1, 32, 32), image, gprog, batch=4)
    x_q = quantize_to_int8(_x(4, 3).numpy(), INPUT_SCALE)
    dev = tvm.cpu()
    base = _vm(mods["base"])
    for ber in (0.0, 0.01, 0.2):
        img = inject_faults(image, InjectConfig(ber=ber, chip=7))[0] if ber else image
        out = base["main"](tvm.runtime.tensor(x_q.astype(np.int8), dev), tvm.runtime.tensor(img.codes.copy(), dev))
        assert np.array_equal(out.numpy().astype(np.int64), run_integer(prog, x_q, image_codes(prog, img))), ber
    if gprog is not None:
        fx = _vm(mods["generator"])["main"](tvm.runtime.tensor(x_q.astype(np.int8), dev)).numpy()
        assert fx.dtype == np.int8 and np.array_equal(fx.astype(np.int64), run_front(gprog, x_q))


def test_uncalibrated_programs_are_refused():
    model = cnn_xs_with_bn_stats(0)
    with pytest.raises(NfedgeError, match="calibrate"):
        integer_relax_graphs(trace_program(model, True), (1, 32, 32), build_image(model, 8))
