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

SUPPORTED = ("Conv2d and ConvTranspose2d (groups=1, no dilation), Linear, BatchNorm2d/ReLU/Tanh directly after one of "
             "those, MaxPool2d (stride = kernel, no padding), AdaptiveAvgPool2d(1) or mean over H,W, nearest Upsample by "
             "an integer factor, torch.cat on channels, flatten (or view/reshape to (batch, -1))")

A = torch.ops.aten
# What an exported program's module runs besides the model: checks of its input's shape (no users, no effect here).
GUARDS = {torch._assert, A._assert_scalar.default, A._assert_tensor_metadata.default, A.sym_constrain_range_for_size.default}
_RELU = {torch.relu, F.relu, A.relu.default, "relu"}
_TANH = {torch.tanh, F.tanh, A.tanh.default, "tanh"}
_ADD = {operator.add, operator.iadd, torch.add, A.add.Tensor, "add", "add_"}
_MEAN = {torch.mean, A.mean.dim, "mean"}
_GLOBAL_POOL = {F.adaptive_avg_pool2d, A.adaptive_avg_pool2d.default, A._adaptive_avg_pool2d.default}
_FLATTEN = {torch.flatten, A.flatten.using_ints, "flatten"}
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
    if groups != 1:
        raise Refused(f"{what}, groups={groups}: depthwise/grouped")
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
    return {"module": path, "transposed": transposed, "stride": s, "padding": p, "output_padding": op_}


def _maxpool(what: str, kernel, stride, padding, dilation) -> dict:
    k = _uniform(kernel)
    stride = kernel if stride is None or stride == [] else stride
    if k is None or _uniform(stride) != k or _uniform(padding) != 0 or _uniform(dilation) != 1:
        raise Refused(f"{what}, kernel={kernel} stride={stride} padding={padding}: overlapping or padded pooling")
    return {"kernel": k}


def _factor(scale: Any) -> int | None:
    s = scale[0] if isinstance(scale, (tuple, list)) and len(scale) and len(set(scale)) == 1 else scale
    return int(s) if isinstance(s, (int, float)) and not isinstance(s, bool) and float(s).is_integer() and s >= 1 else None


def module_op(m: nn.Module, what: str, path: str) -> tuple[str, dict]:
    """(kind, attributes) of a torch.nn layer called as a module (torch.fx keeps torch.nn layers as calls)."""
    if isinstance(m, nn.BatchNorm2d):
        if not (m.affine and m.track_running_stats):
            raise Refused(f"{what} without affine parameters or running statistics")
        return "bn", {"bn": path, "eps": float(m.eps)}
    if isinstance(m, (nn.ReLU, nn.Tanh)):
        return ("relu" if isinstance(m, nn.ReLU) else "tanh"), {}
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        return "conv", _conv(what, path, isinstance(m, nn.ConvTranspose2d), m.stride, m.padding, m.dilation, m.groups,
                             m.output_padding, m.kernel_size)
    if isinstance(m, nn.Linear):
        return "linear", {"module": path}
    if isinstance(m, nn.MaxPool2d):
        return "maxpool", _maxpool(what, m.kernel_size, m.stride, m.padding, m.dilation)
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
    if t in _RELU or t in _TANH:
        return ("relu" if t in _RELU else "tanh"), {}
    if t in (F.relu6, A.relu6.default) or (t is A.hardtanh.default and tuple(args[1:3]) == (0.0, 6.0)):
        raise Refused("ReLU6")
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
        return "maxpool", _maxpool(what, args[1], arg(node, 2, "stride"), arg(node, 3, "padding", 0),
                                   arg(node, 4, "dilation", 1))
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
        both = sum(isinstance(v, torch.fx.Node) for v in args[:2]) == 2
        raise Refused("add of two tensors: residual" if both else "add of a constant")
    raise Refused(what)
