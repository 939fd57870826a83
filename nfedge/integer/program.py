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
from nfedge.integer.layers import GUARDS, SIZE, SUPPORTED, Refused, arg, function_op, layer_of, module_op
from nfedge.integer.tables import TABLES
from nfedge.models.tiny import keras_same_padding

ACTIVATIONS = ("none", "relu", "clamp", *TABLES)  # clamp: attrs["clamp"] = [lo, hi] (real; None: open); else a table
INPUT = "input"
_FUSES_INTO = ("conv", "linear", "add")  # ops an activation (and, for conv, a BatchNorm) is folded into


@dataclasses.dataclass
class Op:
    kind: str  # conv | linear | add | maxpool | avgpool | pad | crop | upsample | concat | flatten
    inputs: list[str]
    output: str
    module: str = ""  # the torch module path (conv/linear: its weight is `module + ".weight"`)
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)  # stride, padding, transposed, kernel, ...
    activation: str = "none"  # fused after the op: relu (clamp at 0), clamp, or a table (nfedge.integer.tables)
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


def pad_amounts(op: Op, in_shape: tuple[int, ...]) -> list[int]:
    """[left, right, top, bottom] zeros of a pad op on an [N, C, H, W] input: given (F.pad), or Keras
    padding='same' for the conv behind it (attrs["same"] = [kH, kW, sH, sW]), which depends on H and W."""
    if "pads" in op.attrs:
        return [int(v) for v in op.attrs["pads"]]
    kh, kw, sh, sw = op.attrs["same"]
    return [*keras_same_padding(in_shape[3], kw, sw), *keras_same_padding(in_shape[2], kh, sh)]


def crop_size(op: Op, shapes: list[tuple[int, ...]]) -> tuple[int, int]:
    """(rows, cols) of its first input [N, C, H, W] that a crop op keeps, from the top left: attrs "rows" / "cols"
    (a slice of an exported program), or with a second input, its H//2 x W//2 (the network input's: ds-cnn's
    average-pool window, nfedge.models.tiny.keras_pool_window); never more than the input has."""
    h, w = int(shapes[0][2]), int(shapes[0][3])
    if len(shapes) > 1:
        return min(h, int(shapes[1][2]) // 2), min(w, int(shapes[1][3]) // 2)
    return min(h, int(op.attrs.get("rows") or h)), min(w, int(op.attrs.get("cols") or w))


def batchnorm_eps(op: Op, bn: nn.Module) -> float:
    """The eps of the BatchNorm fused into `op`: the one traced with the program (an exported program's BatchNorm is
    a plain module holding the tensors, its eps an argument in the graph), else the module's (an older program)."""
    return op.attrs["bn_eps"] if "bn_eps" in op.attrs else bn.eps


class _Trace:
    """One trace's state: the operators so far, the program tensor each graph node is, and the refused layers."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        self.mods = dict(gm.named_modules())
        self.params = {**dict(gm.named_parameters()), **dict(gm.named_buffers())}
        self.users = {n: len(n.users) for n in gm.graph.nodes}
        self.names = {n.name for n in gm.graph.nodes}
        self.ops: list[Op] = []
        self.name_of: dict[torch.fx.Node, str] = {}
        self.producer: dict[str, Op] = {}
        self.bad: set[str] = set()  # outputs of refused layers: the layers after them are still checked
        self.sizes: dict[torch.fx.Node, int | None] = {}  # nodes that are a tensor's size (dim, or None: all)
        self.tuples: set[torch.fx.Node] = set()  # BatchNorms returning (y, stats): their item 0 is y
        self.problems: list[str] = []
        self.output: str | None = None

    def src(self, n: Any) -> str:
        if isinstance(n, torch.fx.Node) and n in self.name_of:
            return self.name_of[n]
        if n in self.sizes:
            raise Refused("uses a tensor's size as a value")
        what = n.target if isinstance(n, torch.fx.Node) and n.op == "get_attr" else repr(n)
        raise Refused(f"reads {what} as an input tensor")

    def emit(self, node: torch.fx.Node, kind: str, inputs: list[str], module: str = "", output: str = "", **attrs) -> None:
        op = Op(kind, inputs, output or node.name, module, attrs)
        self.ops.append(op)
        self.name_of[node] = op.output
        self.producer[op.output] = op

    def fresh(self, base: str) -> str:
        while base in self.names:
            base += "_"
        self.names.add(base)
        return base

    def fuse(self, node: torch.fx.Node, kind: str, info: dict) -> bool:
        """Fold a BatchNorm into the conv, or an activation into the conv, linear or add producing its input, when it
        is that op's only user."""
        into = self.name_of[node]
        op = self.producer.get(into)
        if op is None or op.kind not in _FUSES_INTO or self.users[node.args[0]] != 1:
            return False
        if kind == "bn" and op.kind != "add" and op.activation == "none" and "bn" not in op.attrs:
            op.attrs.update(bn=info["bn"], bn_eps=info["eps"])
        elif kind in ("relu", "clamp", "table") and op.activation == "none":
            op.activation = info["fn"] if kind == "table" else kind
            if kind == "clamp":
                op.attrs["clamp"] = info["clamp"]
        else:
            return False
        return True

    def node(self, node: torch.fx.Node, what: str) -> None:
        t = node.target
        if node.op == "placeholder":
            if self.name_of:
                raise NfedgeError("integer mode: models take one input")
            self.name_of[node] = INPUT
            return
        if node.op == "get_attr" or t in GUARDS or (node.op == "call_module" and t == "_guards_fn" and not node.users):
            return  # parameters are read by the layers that use them; guards only check the input's shape
        if node.op == "output":
            out = node.args[0]
            out = out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out
            if not isinstance(out, torch.fx.Node):
                raise Refused("returns several tensors: integer mode takes one output")
            self.output = self.src(out)
            return
        if t in SIZE or (t is getattr and node.args[1] == "shape"):
            self.sizes[node] = arg(node, 1, "dim") if t in SIZE else None
            return
        if t is operator.getitem:
            a, i = node.args
            if a in self.sizes and self.sizes[a] is None:
                self.sizes[node] = i
            elif a in self.tuples and i == 0:
                self.name_of[node] = self.name_of[a]
            elif isinstance(a, torch.fx.Node) and self.name_of.get(a) in self.bad:
                self.name_of[node] = self.name_of[a]
            else:
                raise Refused("takes an item of a tuple: integer mode takes single tensors")
            return
        kind, info = (module_op(self.mods[t], what, t) if node.op == "call_module"
                      else function_op(node, what, self.params, self.sizes))
        if kind == "identity":
            self.name_of[node] = self.src(node.args[0])
        elif kind in ("bn", "relu", "clamp", "table"):
            self.name_of[node] = self.src(node.args[0])
            if info.get("tuple"):
                self.tuples.add(node)
            if self.name_of[node] not in self.bad and not self.fuse(node, kind, info):
                after = "a conv" if kind == "bn" else "a conv, linear or add"
                raise Refused(f"{what}: not directly after {after} whose only user it is")
        elif kind in ("concat", "add"):
            self.emit(node, kind, [self.src(a) for a in info["tensors"]])
        elif kind == "crop" and "like" in info:  # the top-left H//2 x W//2 of the first input, H x W the second's
            self.emit(node, "crop", [self.src(node.args[0]), self.src(info["like"])])
        elif kind == "avgpool" and not info.get("keepdim", True):  # x.mean((2, 3)): global average pooling, then flatten
            pooled = self.fresh(f"{node.name}_pool")
            self.emit(node, "avgpool", [self.src(node.args[0])], output=pooled)
            self.emit(node, "flatten", [pooled])
        else:
            module = info.pop("module", "")
            info.pop("keepdim", None)
            self.emit(node, kind, [self.src(node.args[0])], module, **info)


def trace_program(model: nn.Module, weights_from_image: bool) -> Program:
    """The operator structure of `model` (eval mode): conv (also depthwise and grouped) and linear with BatchNorm
    and an activation fused (ReLU, a clamp, a table), residual adds (an activation fused), max and average pooling,
    zero padding, nearest upsampling, channel concat, flatten; Identity and Dropout vanish (layers.SUPPORTED).
    A module is traced with torch.fx; an exported program's module (nfedge.train.model_source.load_program) is a
    graph of aten operators already and is read as it is. Every layer outside that set is named in one error."""
    model = model.eval()
    if isinstance(model, torch.fx.GraphModule):
        gm = model  # tracing it again would turn its input guards into size computations
    else:
        try:
            gm = torch.fx.symbolic_trace(model)
        except Exception as e:  # noqa: BLE001 - torch.fx raises many types for untraceable code
            raise NfedgeError(f"integer mode: {type(model).__name__} cannot be traced by torch.fx "
                              f"({type(e).__name__}); the weight-only mode still works") from None
    tr = _Trace(gm)
    for node in gm.graph.nodes:
        where, what = layer_of(node, tr.mods) if node.op.startswith("call_") else (node.name, node.op)
        try:
            tr.node(node, what)
        except Refused as e:
            tr.problems.append(f"{where} ({e})")
            tr.name_of[node] = node.name
            tr.bad.add(node.name)
    if tr.problems:
        n = len(tr.problems)
        raise NfedgeError(f"integer mode cannot take {n} layer{'s' if n > 1 else ''} of this model: "
                          f"{', '.join(tr.problems)}; supported: {SUPPORTED}; build with --mode weight-only")
    return Program(ops=tr.ops, output=tr.output, weights_from_image=weights_from_image)


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
