"""Which torch layers integer mode takes: every node of a model's torch.fx graph (traced from a module, or an
exported program's graph of aten operators) classified as an integer operator kind with its attributes, or
refused with a description in the user's terms (the layer's path and type). nfedge.integer.program.trace_program
builds the program from these and reports every refused layer in one error.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from nfedge.models.tiny import keras_pool_window, keras_same_pad

SUPPORTED = ("Conv2d (any groups: depthwise, grouped) and ConvTranspose2d (groups=1), no dilation; Linear; "
             "BatchNorm2d directly after a conv; ReLU, ReLU6/Hardtanh/clamp and the tables Tanh, Sigmoid, SiLU, "
             "Hardswish, Hardsigmoid, GELU directly after a conv, linear or add; the "
             "add of two tensors (residual); Identity and Dropout; MaxPool2d (any stride and padding); AvgPool2d "
             "without padding; AdaptiveAvgPool2d(1) or mean over H,W; zero padding (F.pad, Keras 'same'); nearest "
             "Upsample by an integer factor; torch.cat on channels; flatten (or view/reshape to (batch, -1))")

A = torch.ops.aten
# What an exported program's module runs besides the model: checks of its input's shape (no users, no effect here).
GUARDS = {torch._assert, A._assert_scalar.default, A._assert_tensor_metadata.default, A.sym_constrain_range_for_size.default}
_RELU = {torch.relu, F.relu, A.relu.default, "relu"}
# table activations (nfedge.integer.tables) by the functions and methods that call them
_TABLE_FNS = {torch.tanh: "tanh", F.tanh: "tanh", A.tanh.default: "tanh", "tanh": "tanh",
              torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", A.sigmoid.default: "sigmoid", "sigmoid": "sigmoid",
              F.silu: "silu", A.silu.default: "silu", F.hardswish: "hardswish", A.hardswish.default: "hardswish",
              F.hardsigmoid: "hardsigmoid", A.hardsigmoid.default: "hardsigmoid"}
_TABLE_MODULES = {nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SiLU: "silu", nn.Hardswish: "hardswish",
                  nn.Hardsigmoid: "hardsigmoid"}
_IDENTITY = {A.clone.default, A.alias.default, A.dropout.default, F.dropout, "clone", "contiguous"}
_ADD = {operator.add, operator.iadd, torch.add, A.add.Tensor, "add", "add_"}
_MEAN = {torch.mean, A.mean.dim, "mean"}
_GLOBAL_POOL = {F.adaptive_avg_pool2d, A.adaptive_avg_pool2d.default, A._adaptive_avg_pool2d.default}
_FLATTEN = {torch.flatten, A.flatten.using_ints, "flatten"}
_AVG_POOL = {F.avg_pool2d, A.avg_pool2d.default}
_VIEW = {A.view.default, A.reshape.default, A._unsafe_view.default, torch.reshape, "view", "reshape"}
SIZE = {A.sym_size.int, "size"}
_CONTAINERS = ("Sequential", "ModuleList", "ModuleDict")


class Refused(Exception):
    """One layer integer mode cannot take (the message describes it); trace_program reports all of them at once."""


def _uniform(v: Any) -> Any:
    """One integer for both axes (an int, or equal ints), else None."""
    v = v[0] if isinstance(v, (tuple, list)) and len(v) and len(set(v)) == 1 else v
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def arg(node: torch.fx.Node, i: int, name: str, default: Any = None) -> Any:
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _rank(n: Any) -> int | None:
    """The rank of a node's tensor where the graph records it (an exported program's does; torch.fx tracing not)."""
    val = n.meta.get("val") if isinstance(n, torch.fx.Node) else None
    return val.dim() if isinstance(val, torch.Tensor) else None


def _dims(dims: Any, rank: int | None) -> set | None:
    dims = [dims] if isinstance(dims, int) else dims
    if not isinstance(dims, (list, tuple)) or not all(isinstance(d, int) for d in dims):
        return None
    return {d % rank if rank else d for d in dims}


def layer_of(node: torch.fx.Node, mods: dict[str, nn.Module]) -> tuple[str, str]:
    """(where, what) for messages, in the user's terms: a torch.nn layer's path and type (a module call, or an aten
    op of an exported program, which records the layer it came from); else the enclosing module's path (or the node's
    name) and the operation's name."""
    if node.op == "call_module":
        return node.target, type(mods[node.target]).__name__
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    path, typ = stack[-1] if stack else ("", "")
    typ = typ if isinstance(typ, str) else f"{typ.__module__}.{typ.__qualname__}"
    short = typ.rsplit(".", 1)[-1]
    if path and typ.startswith("torch.nn.") and short not in _CONTAINERS:
        return path, short
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return path or node.name, name.split(".")[0]


def _conv(what: str, path: str, transposed: bool, stride, padding, dilation, groups, output_padding, kernel) -> dict:
    if groups != 1 and transposed:
        raise Refused(f"{what}, groups={groups}: grouped transposed")
    if _uniform(dilation) != 1:
        raise Refused(f"{what}, dilation={dilation}: dilated")
    s, k = _uniform(stride), _uniform(kernel)
    if padding == "valid":
        padding = 0
    elif padding == "same":  # (torch allows it at stride 1 only) an odd kernel pads both sides alike, an even one not
        if k is None or k % 2 == 0:
            raise Refused(f"{what}, padding='same' with kernel {kernel}: padded more on one side")
        padding = (k - 1) // 2
    p, op_ = _uniform(padding), _uniform(output_padding) if transposed else 0
    if None in (s, p, op_):
        raise Refused(f"{what}, stride={stride}, padding={padding}: different per axis")
    attrs = {"module": path, "transposed": transposed, "stride": s, "padding": p, "output_padding": op_}
    return attrs | ({"groups": int(groups)} if groups != 1 else {})


def _pool(what: str, kernel, stride, padding, dilation=1, ceil_mode=False) -> dict:
    """kernel, stride, padding of a square max or average pool (stride None: the kernel, torch's default)."""
    k = _uniform(kernel)
    stride = kernel if stride is None or stride == [] else stride
    s, p = _uniform(stride), _uniform(padding)
    if None in (k, s, p) or _uniform(dilation) != 1 or ceil_mode:
        raise Refused(f"{what}, kernel={kernel} stride={stride} padding={padding}: only square, undilated, floor mode")
    return {"kernel": k, "stride": s, "padding": p}


def _avgpool(what: str, kernel, stride, padding, ceil_mode, divisor_override) -> dict:
    attrs = _pool(what, kernel, stride, padding, 1, ceil_mode)
    if attrs["padding"] or divisor_override is not None:
        raise Refused(f"{what}, padding={padding}: only without padding or divisor_override")
    return {"kernel": attrs["kernel"], "stride": attrs["stride"]}


def _clamp(what: str, lo: Any, hi: Any) -> tuple[str, dict]:
    """A clamp activation (ReLU6, Hardtanh, clamp): both bounds real numbers (None: unbounded on that side)."""
    if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in (lo, hi)):
        raise Refused(f"{what} with tensor bounds")
    if lo is not None and hi is not None and lo >= hi:
        raise Refused(f"{what}({lo}, {hi}): empty range")
    return "clamp", {"clamp": [None if lo is None else float(lo), None if hi is None else float(hi)]}


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _factor(scale: Any) -> int | None:
    s = scale[0] if isinstance(scale, (tuple, list)) and len(scale) and len(set(scale)) == 1 else scale
    return int(s) if isinstance(s, (int, float)) and not isinstance(s, bool) and float(s).is_integer() and s >= 1 else None


def module_op(m: nn.Module, what: str, path: str) -> tuple[str, dict]:
    """(kind, attributes) of a torch.nn layer called as a module (torch.fx keeps torch.nn layers as calls)."""
    if isinstance(m, nn.BatchNorm2d):
        if not (m.affine and m.track_running_stats):
            raise Refused(f"{what} without affine parameters or running statistics")
        return "bn", {"bn": path, "eps": float(m.eps)}
    if isinstance(m, nn.ReLU6):
        return _clamp(what, 0.0, 6.0)
    if isinstance(m, nn.Hardtanh):
        return _clamp(what, m.min_val, m.max_val)
    if isinstance(m, nn.ReLU):
        return "relu", {}
    if type(m) in _TABLE_MODULES:
        return "table", {"fn": _TABLE_MODULES[type(m)]}
    if isinstance(m, nn.GELU):
        if m.approximate != "none":
            raise Refused(f"{what}(approximate={m.approximate!r}): only the exact GELU")
        return "table", {"fn": "gelu"}
    if isinstance(m, (nn.Identity, nn.Dropout)):
        return "identity", {}
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        return "conv", _conv(what, path, isinstance(m, nn.ConvTranspose2d), m.stride, m.padding, m.dilation, m.groups,
                             m.output_padding, m.kernel_size)
    if isinstance(m, nn.Linear):
        return "linear", {"module": path}
    if isinstance(m, nn.MaxPool2d):
        return "maxpool", _pool(what, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
    if isinstance(m, nn.AvgPool2d):
        return "avgpool", _avgpool(what, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.divisor_override)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        if _uniform(m.output_size) != 1:
            raise Refused(f"{what}({m.output_size}): only output size 1")
        return "avgpool", {"keepdim": True}
    if isinstance(m, nn.Upsample):
        if m.mode != "nearest" or m.size is not None or _factor(m.scale_factor) is None:
            raise Refused(f"{what} mode={m.mode} scale_factor={m.scale_factor}: only nearest by an integer factor")
        return "upsample", {"factor": _factor(m.scale_factor)}
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise Refused(f"{what}(start_dim={m.start_dim}, end_dim={m.end_dim}): only from dim 1 to the end")
        return "flatten", {}
    raise Refused(what)


def _weight_module(w: Any, b: Any) -> str:
    """The module path whose `.weight` (and `.bias`) a graph's conv or linear reads: integer mode names weights by
    their state-dict key (the memory image's), so they must be the model's own parameters, not computed tensors."""
    target = w.target if isinstance(w, torch.fx.Node) and w.op == "get_attr" else ""
    path = target[: -len(".weight")] if target.endswith(".weight") else None if target != "weight" else ""
    if path is None:
        raise Refused("weights computed in the graph")
    if b is not None and not (isinstance(b, torch.fx.Node) and b.op == "get_attr" and b.target == f"{path}.bias".lstrip(".")):
        raise Refused("a bias computed in the graph")
    return path


def _bn_module(w: Any, b: Any, mean: Any, var: Any) -> str:
    names = [n.target if isinstance(n, torch.fx.Node) and n.op == "get_attr" else "" for n in (w, b, mean, var)]
    path = names[0].rpartition(".")[0]
    if names != [f"{path}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]:
        raise Refused("BatchNorm2d without its own affine parameters and running statistics")
    return path


def function_op(node: torch.fx.Node, what: str, params: dict, sizes: dict) -> tuple[str, dict]:
    """(kind, attributes) of a function or method call: torch functions in a traced module, aten operators in an
    exported program. `params`: the graph's parameters and buffers; `sizes`: nodes that are a tensor's size."""
    t, args = node.target, node.args
    if t in _RELU:
        return "relu", {}
    if t in _TABLE_FNS:
        return "table", {"fn": _TABLE_FNS[t]}
    if t in (F.gelu, A.gelu.default):
        if arg(node, 1, "approximate", "none") != "none":
            raise Refused(f"{what}(approximate={arg(node, 1, 'approximate')!r}): only the exact GELU")
        return "table", {"fn": "gelu"}
    if t in (F.relu6, A.relu6.default):
        return _clamp(what, 0.0, 6.0)
    if t in (F.hardtanh, A.hardtanh.default):
        return _clamp(what, arg(node, 1, "min_val", -1.0), arg(node, 2, "max_val", 1.0))
    if t in (torch.clamp, A.clamp.default, "clamp", "clip"):
        return _clamp(what, arg(node, 1, "min"), arg(node, 2, "max"))
    if t in _IDENTITY:
        return "identity", {}
    if t is keras_same_pad:
        return "pad", {"same": [*_pair(args[1]), *_pair(args[2])]}
    if t is keras_pool_window:
        return "crop", {"like": args[1]}
    if t is A.slice.Tensor:  # an exported keras_pool_window: the first `end` rows or columns
        dim, start, end, step = arg(node, 1, "dim", 0), arg(node, 2, "start"), arg(node, 3, "end"), arg(node, 4, "step", 1)
        dims = _dims(dim, _rank(args[0]) or 4)
        if dims == {0} and start in (0, None) and step == 1 and (end is None or end >= 2**62):
            return "identity", {}
        if dims not in ({2}, {3}) or start not in (0, None) or step != 1 or not isinstance(end, int) or end < 1:
            raise Refused(f"{what}(dim={dim}, {start}:{end}:{step}): only the first rows or columns of a map")
        return "crop", {"rows" if dims == {2} else "cols": int(end)}
    if t in (F.pad, A.pad.default, A.constant_pad_nd.default):
        pads, value = arg(node, 1, "pad"), arg(node, 2 if t is A.constant_pad_nd.default else 3, "value", 0)
        mode = arg(node, 2, "mode", "constant") if t is F.pad else "constant"
        if mode != "constant" or value not in (0, 0.0, None) or not isinstance(pads, (list, tuple)) or len(pads) != 4:
            raise Refused(f"{what}({pads}, mode={mode}, value={value}): only zero padding of H and W")
        if not all(isinstance(v, int) and v >= 0 for v in pads):
            raise Refused(f"{what}({pads}): only non-negative padding")
        return "pad", {"pads": [int(v) for v in pads]}  # F.pad order: left, right, top, bottom
    if t in (torch.conv2d, A.conv2d.default, A.conv2d.padding, A.conv_transpose2d.input):
        path = _weight_module(args[1], arg(node, 2, "bias"))
        weight = params.get(f"{path}.weight".lstrip("."))
        kernel = tuple(weight.shape[2:]) if weight is not None else None
        if t is A.conv_transpose2d.input:
            return "conv", _conv(what, path, True, arg(node, 3, "stride", 1), arg(node, 4, "padding", 0),
                                 arg(node, 7, "dilation", 1), arg(node, 6, "groups", 1), arg(node, 5, "output_padding", 0),
                                 kernel)
        return "conv", _conv(what, path, False, arg(node, 3, "stride", 1), arg(node, 4, "padding", 0),
                             arg(node, 5, "dilation", 1), arg(node, 6, "groups", 1), 0, kernel)
    if t in (A.linear.default, F.linear):
        return "linear", {"module": _weight_module(args[1], arg(node, 2, "bias"))}
    if t is A.batch_norm.default or t is A._native_batch_norm_legit_no_training.default:
        legit = t is A._native_batch_norm_legit_no_training.default
        if not legit and args[5]:
            raise Refused(f"{what} in training mode (export the model in eval mode)")
        return "bn", {"bn": _bn_module(*args[1:5]), "eps": float(args[6 if legit else 7]), "tuple": legit}
    if t in (A.max_pool2d.default, F.max_pool2d):
        return "maxpool", _pool(what, args[1], arg(node, 2, "stride"), arg(node, 3, "padding", 0),
                                arg(node, 4, "dilation", 1), arg(node, 5, "ceil_mode", False))
    if t in _AVG_POOL:
        return "avgpool", _avgpool(what, args[1], arg(node, 2, "stride"), arg(node, 3, "padding", 0),
                                   arg(node, 4, "ceil_mode", False), arg(node, 6, "divisor_override"))
    if t in _MEAN:
        dims = arg(node, 1, "dim")
        if _dims(dims, _rank(args[0])) != {2, 3}:
            raise Refused(f"mean over dims {dims}: only over H,W (2, 3), as global average pooling")
        return "avgpool", {"keepdim": bool(arg(node, 2, "keepdim", False))}
    if t in _GLOBAL_POOL:
        if _uniform(arg(node, 1, "output_size")) != 1:
            raise Refused(f"{what}: only output size 1")
        return "avgpool", {"keepdim": True}
    if t in (A.upsample_nearest2d.vec, F.interpolate):
        size, scale = arg(node, 1, "size" if t is F.interpolate else "output_size"), arg(node, 2, "scale_factor")
        scale = arg(node, 2, "scale_factors") if t is A.upsample_nearest2d.vec else scale
        if size is not None or _factor(scale) is None or arg(node, 3, "mode", "nearest") != "nearest":
            raise Refused(f"{what}: only nearest upsampling by an integer factor")
        return "upsample", {"factor": _factor(scale)}
    if t in _FLATTEN:
        start, end = arg(node, 1, "start_dim", 0), arg(node, 2, "end_dim", -1)
        if start != 1 or end not in (-1, (_rank(args[0]) or 0) - 1):
            raise Refused(f"flatten(start_dim={start}, end_dim={end}): only from dim 1 to the end")
        return "flatten", {}
    if t in _VIEW:  # x.view(x.size(0), -1): flatten written by hand
        shape = list(args[1:]) or list(node.kwargs.get("shape", node.kwargs.get("size", [])))
        shape = list(shape[0]) if len(shape) == 1 and isinstance(shape[0], (list, tuple)) else shape
        if len(shape) != 2 or shape[1] != -1 or sizes.get(shape[0]) != 0:
            raise Refused(f"{what} to {shape}: only to (batch, -1) as a flatten")
        return "flatten", {}
    if t in (torch.cat, A.cat.default):
        tensors, dim = args[0], arg(node, 1, "dim", 0)
        if _dims(dim, _rank(tensors[0])) != {1}:
            raise Refused(f"cat along dim {dim}: only along channels (dim 1)")
        return "concat", {"tensors": list(tensors)}
    if t in _ADD:
        if sum(isinstance(v, torch.fx.Node) for v in args[:2]) != 2:
            raise Refused("add of a constant")
        if node.kwargs.get("alpha", args[2] if len(args) > 2 else 1) != 1:
            raise Refused(f"{what} with alpha != 1")
        return "add", {"tensors": list(args[:2])}
    raise Refused(what)
