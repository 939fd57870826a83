"""The accelerator dataflow model: per-layer geometry, MACs and weight-memory accesses (TWMA) of a model.

Dataflow model (what `weight_memory_accesses` computes)
-------------------------------------------------------
TWMA follows the NeuralFuse paper (REFERENCE section 8): SCALE-SIM, output-stationary (OS) dataflow on
an R x C (default 32 x 32) systolic array, "SRAM Filter Reads" summed over layers and divided by 8.
nfedge does not run SCALE-SIM; it evaluates SCALE-SIM's OS filter-read count in closed form, layer by
layer, exactly as SCALE-SIM v3's `systolic_compute_os` builds it (a fold reads every filter-operand
element of its column block once):

    each layer is one SCALE-SIM topology row (ifmap H x W, filter KH x KW, channels Cin, filters Cout,
    stride), ofmap = ceil((ifmap - filter + stride) / stride) per axis (SCALE-SIM's formula);
    Sr = ofmap_h * ofmap_w (output pixels: the array's rows), T = KH * KW * Cin, Sc = Cout (columns);
    filter SRAM reads = ceil(Sr / R) * T * Sc     (ceil(Sc / C) column folds split Sc exactly, so C
                                                    does not change the filter reads);
    TWMA = ceil(sum of filter reads / 8)          (the paper's /8; read as 8 one-byte weights a word).

How a PyTorch layer becomes a topology row (batch 1):
- Conv2d: ifmap = the layer's input plus its padding on both sides (SCALE-SIM has no padding field:
  its own topologies list padded ifmaps). With stride 2 SCALE-SIM's ceil formula can give one more
  output row/column than PyTorch (3x3, pad 1, stride 2 on 32x32: ifmap 34 -> 17x17, PyTorch 16x16);
  we keep SCALE-SIM's count, because that is what TWMA measures. Dilation: the ofmap uses the dilated
  extent, T the real taps. groups = g: g independent convs of Cin/g channels and Cout/g filters.
- Linear: a 1x1 conv on a 1 x N map, N = input elements / in_features (N = 1 for a classifier head).
- ConvTranspose2d: its equivalent direct convolution, which is how a systolic array runs it: the
  input is zero-inserted (stride - 1 zeros between pixels) and padded by dilation*(K-1) - padding per
  side (+ output_padding), then convolved at stride 1 with the same KxK taps; ifmap =
  (H-1)*s + 1 + 2*(d*(K-1) - p) + output_padding, so the ofmap is exactly PyTorch's output size.
  SCALE-SIM streams the inserted zeros like any operand, so the filter reads do not shrink for them.
- Anything else (BatchNorm, pooling, activations, upsampling, add/concat, UIP's additive tensor) has
  no filter operand and is not counted; Conv1d/Conv3d/ConvTranspose1d/3d are refused (not modelled).

Against the paper's Table 6 at 3x32x32 (tests/analysis/test_energy.py pins these): ResNet18, ResNet50, VGG11,
VGG16, VGG19, ConvL and ConvS are reproduced exactly; DeConvL +0.07%, DeConvS +0.22%, UNetL -3.84%,
UNetS -3.81%. The gaps are in the paper's topology rows for transposed and 1x1 convs, not in the
dataflow: Table 6 is matched to the access if a ConvTranspose is written as a stride-1 conv over an
(s*H + 2)-sized map and UNet's final 1x1 conv is given a 34x34 (padded) ifmap. We keep the
equivalent-convolution mapping above rather than copy those rows.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nfedge.config import require
from nfedge.errors import NfedgeError

aten = torch.ops.aten

DEFAULT_ARRAY = (32, 32)
WEIGHTS_PER_ACCESS = 8  # the paper divides SCALE-SIM's filter reads by 8
DEFAULT_VOLTAGE = 0.833  # V/Vmin: 1.115% BER, r = 0.6944 in the 14 nm table

_UNSUPPORTED = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose3d, nn.Bilinear)


def dataflow_description(array: tuple[int, int] = DEFAULT_ARRAY, weights_per_access: int = WEIGHTS_PER_ACCESS) -> str:
    rows, cols = array
    return (f"SCALE-SIM output-stationary {rows}x{cols} systolic array, closed form: per conv/linear layer "
            f"ceil(OH*OW/{rows}) * KH*KW*Cin * Cout filter SRAM reads (SCALE-SIM ofmap = ceil((padded ifmap - K + s)/s); "
            f"transposed conv as its zero-inserted stride-1 equivalent); TWMA = sum / {weights_per_access}")


# ------------------------------------------------------------------------------------ layer geometry


@dataclasses.dataclass(frozen=True)
class LayerGeometry:
    """One SCALE-SIM topology row (a conv as SCALE-SIM sees it), plus the layer it came from."""

    name: str
    kind: str  # conv | linear | conv_transpose
    ifmap_h: int
    ifmap_w: int
    filter_h: int  # taps (T = filter_h * filter_w * channels)
    filter_w: int
    channels: int  # per group
    num_filters: int  # per group
    stride_h: int
    stride_w: int
    extent_h: int  # filter extent on the ifmap (dilation * (K - 1) + 1); = filter_h without dilation
    extent_w: int
    groups: int = 1

    @property
    def ofmap_h(self) -> int:
        return max(0, math.ceil((self.ifmap_h - self.extent_h + self.stride_h) / self.stride_h))

    @property
    def ofmap_w(self) -> int:
        return max(0, math.ceil((self.ifmap_w - self.extent_w + self.stride_w) / self.stride_w))

    @property
    def sr(self) -> int:
        """Output pixels: the operand rows mapped onto the array's rows (OS)."""
        return self.ofmap_h * self.ofmap_w

    @property
    def t(self) -> int:
        """Reduction length: filter taps times input channels."""
        return self.filter_h * self.filter_w * self.channels

    def filter_reads(self, array: tuple[int, int] = DEFAULT_ARRAY) -> int:
        """SCALE-SIM OS 'SRAM Filter Reads' of this layer: ceil(Sr / rows) * T * Sc, for every group."""
        rows = array[0]
        return self.groups * math.ceil(self.sr / rows) * self.t * self.num_filters

    def topology_row(self) -> list[Any]:
        """SCALE-SIM conv topology columns (name, ifmap h, w, filter h, w, channels, filters, stride)."""
        return [self.name, self.ifmap_h, self.ifmap_w, self.filter_h, self.filter_w, self.channels,
                self.num_filters, self.stride_h]


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _geometry(name: str, mod: nn.Module, x: torch.Tensor) -> LayerGeometry:
    if isinstance(mod, nn.Linear):
        n = max(1, x.numel() // x.shape[0] // mod.in_features)  # rows of the GEMM for one sample
        return LayerGeometry(name, "linear", 1, n, 1, 1, mod.in_features, mod.out_features, 1, 1, 1, 1)
    kh, kw = _pair(mod.kernel_size)
    dh, dw = _pair(mod.dilation)
    ext_h, ext_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    g = int(mod.groups)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if isinstance(mod, nn.ConvTranspose2d):
        sh, sw = _pair(mod.stride)
        ph, pw = _pair(mod.padding)
        oph, opw = _pair(mod.output_padding)
        ih = (h - 1) * sh + 1 + 2 * (ext_h - 1 - ph) + oph
        iw = (w - 1) * sw + 1 + 2 * (ext_w - 1 - pw) + opw
        return LayerGeometry(name, "conv_transpose", ih, iw, kh, kw, mod.in_channels // g, mod.out_channels // g,
                             1, 1, ext_h, ext_w, g)
    sh, sw = _pair(mod.stride)
    # [left, right, top, bottom] for int and for "same"/"valid" padding alike
    pl, pr, pt, pb = (int(v) for v in mod._reversed_padding_repeated_twice)
    return LayerGeometry(name, "conv", h + pt + pb, w + pl + pr, kh, kw, mod.in_channels // g, mod.out_channels // g,
                         sh, sw, ext_h, ext_w, g)


class _GraphGeometry(torch.fx.Interpreter):
    """Runs a torch.export graph (ExportedProgram.module()) and records a LayerGeometry for every
    aten.conv2d / aten.linear node, as the forward hooks do for Conv2d / Linear modules."""

    def __init__(self, gm: torch.fx.GraphModule, layers: list[LayerGeometry]) -> None:
        super().__init__(gm)
        self.layers = layers

    def run_node(self, n: torch.fx.Node) -> Any:
        if n.op == "call_function" and n.target in (aten.conv2d.default, aten.conv2d.padding, aten.linear.default):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            w_node = n.args[1]
            name = w_node.target.rsplit(".", 1)[0] if isinstance(w_node, torch.fx.Node) and w_node.op == "get_attr" else n.name
            self.layers.append(_op_geometry(name, n.target, args, kwargs))
        return super().run_node(n)


def _op_geometry(name: str, op: Any, args: tuple, kwargs: dict) -> LayerGeometry:
    x, w = args[0], args[1]
    if op is aten.linear.default:
        n = max(1, x.numel() // x.shape[0] // w.shape[1])
        return LayerGeometry(name, "linear", 1, n, 1, 1, int(w.shape[1]), int(w.shape[0]), 1, 1, 1, 1)
    rest = dict(zip(("stride", "padding", "dilation", "groups"), args[3:])) | kwargs
    kh, kw = int(w.shape[2]), int(w.shape[3])
    dh, dw = _pair(rest.get("dilation", 1))
    ext_h, ext_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    g = int(rest.get("groups", 1))
    sh, sw = _pair(rest.get("stride", 1))
    pad = rest.get("padding", 0)
    if isinstance(pad, str):  # "same": total padding = extent - 1 (PyTorch puts the odd one at the end); "valid": 0
        th, tw = (ext_h - 1, ext_w - 1) if pad == "same" else (0, 0)
    else:
        ph, pw = _pair(pad)
        th, tw = 2 * ph, 2 * pw
    return LayerGeometry(name, "conv", int(x.shape[-2]) + th, int(x.shape[-1]) + tw, kh, kw, int(w.shape[1]),
                         int(w.shape[0]) // g, sh, sw, ext_h, ext_w, g)


def as_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in input_shape)
    except (TypeError, ValueError):
        raise NfedgeError(f"input shape must be a sequence of integers (C, H, W), got {input_shape!r}") from None
    if not shape or any(v < 1 for v in shape):
        raise NfedgeError(f"input shape must be positive integers (C, H, W), got {input_shape!r}")
    return shape


def profile_model(model: nn.Module, input_shape: Sequence[int], *, macs: bool = True,
             geometry: bool = True) -> tuple[int | None, list[LayerGeometry] | None]:
    """One forward pass of a batch-1 zero input: MACs (flop counter) and the layer geometry (hooks)."""
    shape = as_shape(input_shape)
    names = {m: n or type(m).__name__ for n, m in model.named_modules()}
    layers: list[LayerGeometry] = []
    handles = []
    if geometry:
        for n, m in model.named_modules():
            if isinstance(m, _UNSUPPORTED):
                raise NfedgeError(f"layer {n or type(m).__name__} ({type(m).__name__}) is not modelled by the "
                                  "weight-access model (Conv2d, ConvTranspose2d and Linear are)")
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                handles.append(m.register_forward_hook(
                    lambda mod, inp, out: layers.append(_geometry(names[mod], mod, inp[0]))))
    run = model
    if geometry and not handles and isinstance(model, torch.fx.GraphModule):
        run = _GraphGeometry(model, layers).run  # an exported graph: no layer modules to hook
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        p = next(model.parameters(), None)
        x = torch.zeros(1, *shape, dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32,
                        device=p.device if p is not None else "cpu")
        counter = FlopCounterMode(display=False) if macs else None
        with torch.no_grad():
            if counter is not None:
                with counter:
                    run(x)
            else:
                run(x)
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NfedgeError(f"model does not run on input {'x'.join(map(str, shape))}: {msg}") from None
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:  # leave every submodule's train/eval mode as it was
            m.training = mode
    return (counter.get_total_flops() // 2 if counter is not None else None), (layers if geometry else None)


def layer_geometry(model: nn.Module, input_shape: Sequence[int]) -> list[LayerGeometry]:
    """The SCALE-SIM topology rows of `model` at `input_shape` (C, H, W; batch 1), in execution order."""
    return profile_model(model, input_shape, macs=False)[1] or []


def scalesim_topology_csv(layers: Sequence[LayerGeometry]) -> str:
    """A SCALE-SIM conv topology file for `layers` (grouped convs become one row per group), for
    cross-checking this model against SCALE-SIM itself; nfedge never runs SCALE-SIM."""
    out = ["Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,"]
    for lg in layers:
        if lg.extent_h != lg.filter_h or lg.extent_w != lg.filter_w:
            raise NfedgeError(f"layer {lg.name}: dilated convs have no SCALE-SIM topology row")
        if lg.stride_h != lg.stride_w:
            raise NfedgeError(f"layer {lg.name}: SCALE-SIM topology rows take one stride")
        for gi in range(lg.groups):
            row = lg.topology_row()
            row[0] = (lg.name if lg.groups == 1 else f"{lg.name}_g{gi}").replace(",", "_").replace(".", "_")
            out.append(", ".join(str(v) for v in row) + ",")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------- counting


def count_params(model: nn.Module) -> int:
    """All parameters (trainable or not; shared tensors once); buffers such as BN statistics excluded."""
    return int(sum(p.numel() for p in model.parameters()))


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass at `input_shape` (C, H, W; batch 1), from
    torch.utils.flop_counter.FlopCounterMode (MACs = FLOPs / 2; conv, transposed conv, matmul/linear)."""
    return int(profile_model(model, input_shape, geometry=False)[0] or 0)


def weight_memory_accesses(model: nn.Module, input_shape: Sequence[int], array: tuple[int, int] = DEFAULT_ARRAY,
                           *, weights_per_access: int = WEIGHTS_PER_ACCESS) -> int:
    """TWMA: SCALE-SIM output-stationary filter SRAM reads on a rows x cols array, summed over the
    Conv2d/ConvTranspose2d/Linear layers of one batch-1 forward pass, divided by `weights_per_access`
    (8, as the paper) and rounded up. See the module docstring for the dataflow model."""
    rows, cols = _check_array(array)
    require(isinstance(weights_per_access, int) and weights_per_access >= 1, "weights_per_access must be an integer >= 1")
    reads = sum(lg.filter_reads((rows, cols)) for lg in layer_geometry(model, input_shape))
    return -(-reads // weights_per_access)


def _check_array(array: Any) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in array)
    except (TypeError, ValueError):
        raise NfedgeError(f"array must be (rows, cols), got {array!r}") from None
    require(rows >= 1 and cols >= 1, f"array rows and cols must be >= 1, got {rows}x{cols}")
    return rows, cols
