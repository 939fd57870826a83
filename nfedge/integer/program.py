"""An integer program: a model as a list of integer operators over named tensors (docs/INTEGER.md).

    prog = trace_program(model, weights_from_image=True)     # structure, from torch.fx
    prog = calibrate(prog, model, calibration_images, image)  # nfedge.integer.calibrate: scales, multipliers
The program is what every integer back end runs: the exact int64 reference (nfedge.integer.reference), its
fake-quantized float twin for training (nfedge.integer.simulate) and, later, the TVM integer build.

Tensors are int8 activations at one real scale each (symmetric), except the classifier's output (int32
logits). Weights are named by their state-dict key: a base model's come from the memory image (read on
every inference, so faulty codes flow through), a generator's are constants quantized at build time.
A BatchNorm after a conv is folded into the conv's per-channel rescale factor and bias, never into the
codes: the codes stay exactly as the image stores them.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

import numpy as np
import torch
import torch.fx
from torch import nn

from nfedge.errors import NfedgeError

ACTIVATIONS = ("none", "relu", "tanh")
INPUT = "input"


@dataclasses.dataclass
class Op:
    kind: str  # conv | linear | maxpool | avgpool | upsample | concat | flatten
    inputs: list[str]
    output: str
    module: str = ""  # the torch module path (conv/linear: its weight is `module + ".weight"`)
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)  # stride, padding, transposed, kernel, ...
    activation: str = "none"  # fused after the op: relu (clamp at 0) or tanh (a 256-entry table)
    # filled in by calibration (numpy arrays, per output channel where it applies):
    params: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Program:
    ops: list[Op]
    output: str
    weights_from_image: bool  # True: base model (weights = image codes); False: generator (constant codes)
    scales: dict[str, float] = dataclasses.field(default_factory=dict)  # tensor -> real scale (after calibration)
    constants: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # weight key -> int8 codes (generator)
    weight_scales: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # weight key -> per-channel scales
    ranges: dict[str, float] = dataclasses.field(default_factory=dict)  # tensor -> max|x| the scales came from

    @property
    def calibrated(self) -> bool:
        return bool(self.scales)

    def weight_key(self, op: Op) -> str:
        return f"{op.module}.weight" if op.module else "weight"


def _const_int(v: Any, what: str) -> int:
    v = v[0] if isinstance(v, (tuple, list)) and len(set(v)) == 1 else v
    if not isinstance(v, int):
        raise NfedgeError(f"integer mode: {what} must be one integer for both axes, got {v!r}")
    return v


def trace_program(model: nn.Module, weights_from_image: bool) -> Program:
    """The operator structure of `model` (eval mode): conv/linear (+ BatchNorm, + ReLU/Tanh fused), max and
    global-average pooling, nearest upsampling, channel concat, flatten. Anything else is a one-line error
    naming the layer: integer mode supports what nfedge's registered small models and generators use."""
    try:
        gm = torch.fx.symbolic_trace(model.eval())
    except Exception as e:  # noqa: BLE001 - torch.fx raises many types for untraceable code
        raise NfedgeError(f"integer mode: {type(model).__name__} cannot be traced by torch.fx "
                          f"({type(e).__name__}); the weight-only mode still works") from None
    mods = dict(gm.named_modules())
    ops: list[Op] = []
    name_of: dict[torch.fx.Node, str] = {}
    producer: dict[str, Op] = {}
    users = {n: len(n.users) for n in gm.graph.nodes}

    def src(n) -> str:
        if not isinstance(n, torch.fx.Node) or n not in name_of:
            raise NfedgeError(f"integer mode: unsupported operand {n!r}")
        return name_of[n]

    def emit(node, kind, inputs, module="", **attrs) -> None:
        op = Op(kind, inputs, node.name, module, attrs)
        ops.append(op)
        name_of[node] = node.name
        producer[node.name] = op

    def fuse(node, into: str) -> bool:
        """Fold this node (BatchNorm / ReLU / Tanh) into the op producing `into`, when it is that op's only user."""
        op = producer.get(into)
        if op is None or op.kind not in ("conv", "linear") or users[node.args[0]] != 1:
            return False
        m = mods.get(node.target) if node.op == "call_module" else None
        if isinstance(m, nn.BatchNorm2d) and op.activation == "none" and "bn" not in op.attrs:
            op.attrs["bn"] = node.target
        elif (isinstance(m, nn.ReLU) or node.target in (torch.relu, torch.nn.functional.relu)) and op.activation == "none":
            op.activation = "relu"
        elif (isinstance(m, nn.Tanh) or node.target is torch.tanh) and op.activation == "none":
            op.activation = "tanh"
        else:
            return False
        name_of[node] = into
        return True

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if name_of:
                raise NfedgeError("integer mode: models take one input")
            name_of[node] = INPUT
        elif node.op == "output":
            out = src(node.args[0])
        elif node.op == "call_module":
            m = mods[node.target]
            what = f"layer {node.target} ({type(m).__name__})"
            if isinstance(m, (nn.BatchNorm2d, nn.ReLU, nn.Tanh)):
                if not fuse(node, src(node.args[0])):
                    raise NfedgeError(f"integer mode: {what} must directly follow a conv or linear layer")
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                if m.groups != 1 or _const_int(m.dilation, f"{what} dilation") != 1:
                    raise NfedgeError(f"integer mode: {what}: grouped or dilated convolutions are not supported yet")
                transposed = isinstance(m, nn.ConvTranspose2d)
                emit(node, "conv", [src(node.args[0])], node.target, transposed=transposed,
                     stride=_const_int(m.stride, f"{what} stride"), padding=_const_int(m.padding, f"{what} padding"),
                     output_padding=_const_int(m.output_padding, f"{what} output_padding") if transposed else 0)
            elif isinstance(m, nn.Linear):
                emit(node, "linear", [src(node.args[0])], node.target)
            elif isinstance(m, nn.MaxPool2d):
                k = _const_int(m.kernel_size, f"{what} kernel")
                if _const_int(m.stride, f"{what} stride") != k or _const_int(m.padding, f"{what} padding") != 0:
                    raise NfedgeError(f"integer mode: {what}: only non-overlapping pooling (stride = kernel, no padding)")
                emit(node, "maxpool", [src(node.args[0])], kernel=k)
            elif isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
                emit(node, "avgpool", [src(node.args[0])])
            elif isinstance(m, nn.Upsample) and m.mode == "nearest" and isinstance(m.scale_factor, (int, float)) \
                    and float(m.scale_factor).is_integer():
                emit(node, "upsample", [src(node.args[0])], factor=int(m.scale_factor))
            elif isinstance(m, nn.Flatten):
                emit(node, "flatten", [src(node.args[0])])
            else:
                raise NfedgeError(f"integer mode: {what} is not supported")
        elif node.op == "call_method" and node.target == "flatten":
            emit(node, "flatten", [src(node.args[0])])
        elif node.op == "call_function" and node.target is torch.flatten:
            emit(node, "flatten", [src(node.args[0])])
        elif node.op == "call_function" and node.target is torch.cat:
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
            if dim != 1:
                raise NfedgeError("integer mode: torch.cat is supported along channels (dim=1) only")
            emit(node, "concat", [src(a) for a in node.args[0]])
        elif node.op == "call_function" and node.target in (torch.relu, torch.nn.functional.relu, torch.tanh):
            if not fuse(node, src(node.args[0])):
                raise NfedgeError(f"integer mode: {node.name} must directly follow a conv or linear layer")
        elif node.op == "call_function" and node.target is operator.getitem:
            raise NfedgeError("integer mode: tuple outputs are not supported")
        else:
            raise NfedgeError(f"integer mode: operation {node.target} ({node.op}) is not supported")
    return Program(ops=ops, output=out, weights_from_image=weights_from_image)


PROGRAM_FORMAT, PROGRAM_VERSION = "nfedge-integer-program", 1


def _plain(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return {"__array__": v.tolist(), "dtype": str(v.dtype)}
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _unplain(v: Any) -> Any:
    if isinstance(v, dict) and "__array__" in v:
        return np.asarray(v["__array__"], dtype=v["dtype"])
    if isinstance(v, dict):
        return {k: _unplain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_unplain(x) for x in v]
    return v


def program_to_dict(prog: Program) -> dict[str, Any]:
    """JSON-ready: every number exact (ints as ints, floats by repr), arrays with their dtype."""
    return {"format": PROGRAM_FORMAT, "version": PROGRAM_VERSION, "output": prog.output,
            "weights_from_image": prog.weights_from_image, "scales": _plain(prog.scales),
            "constants": _plain(prog.constants), "weight_scales": _plain(prog.weight_scales),
            "ranges": _plain(prog.ranges),
            "ops": [_plain(dataclasses.asdict(op)) for op in prog.ops]}


def program_from_dict(d: dict[str, Any], what: str = "integer program") -> Program:
    if not isinstance(d, dict) or d.get("format") != PROGRAM_FORMAT or d.get("version") != PROGRAM_VERSION:
        raise NfedgeError(f"{what}: not an {PROGRAM_FORMAT} version {PROGRAM_VERSION}")
    try:
        ops = []
        for o in d["ops"]:
            params = _unplain(o["params"])
            if "mults" in params:
                params["mults"] = [tuple(int(v) for v in m) for m in params["mults"]]
            ops.append(Op(kind=str(o["kind"]), inputs=[str(i) for i in o["inputs"]], output=str(o["output"]),
                          module=str(o["module"]), attrs=dict(o["attrs"]), activation=str(o["activation"]), params=params))
        return Program(ops=ops, output=str(d["output"]), weights_from_image=bool(d["weights_from_image"]),
                       scales={k: float(v) for k, v in d["scales"].items()}, constants=_unplain(d["constants"]),
                       weight_scales=_unplain(d["weight_scales"]),
                       ranges={k: float(v) for k, v in d.get("ranges", {}).items()})
    except (KeyError, TypeError, ValueError) as e:
        raise NfedgeError(f"{what}: malformed ({type(e).__name__}: {e})") from None
