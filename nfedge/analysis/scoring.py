"""Fast host scoring of many weight images of one model on fixed inputs (analysis.evaluate.ImageScorer), bit for bit
the logits of functional_call(model, weights):

- scoring_copy: 2x2 max-pools as elementwise maxima (CPU max_pool2d also writes every window's argmax index);
- PrefixForward: the layers before the first weight an image changes compute, batch by batch, what they computed
  for the reference image (the first one scored), so their output is kept and the pass restarts there.

PrefixForward traces the model with torch.fx. Its restart points are cuts of the graph (nodes every later node
reaches the input through: between the blocks of a chain or of a ResNet), the last one before each layer whose
weight the image holds; an image whose first changed tensor (in graph order) is t restarts at t's point from the
reference's activations there. The same kernels run on the same batches, and the activations are copies taken as
they were computed (no later in-place operation touches them), so the logits are the whole pass's
(tests/analysis/test_evaluate.py checks it). A model fx cannot trace runs whole; the activations kept stay within
`max_bytes` (the later, smaller points first).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx, nn


class MaxPool2x2(nn.Module):
    """nn.MaxPool2d(2) as two elementwise maxima over strided views: the same values bit for bit (a maximum rounds
    nothing), 7x faster on 2 cores, where CPU max_pool2d also writes every window's argmax index
    (docs/BENCHMARKS.md "Host evaluation sweep"). Odd sizes and non-contiguous inputs take max_pool2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-2] % 2 or x.shape[-1] % 2 or not x.is_contiguous():
            return nn.functional.max_pool2d(x, 2)
        n, c, h, w = x.shape
        rows = x.view(n, c, h // 2, 2 * w)  # each row holds an input row pair side by side
        pairs = torch.maximum(rows[..., :w], rows[..., w:]).view(n, c, h // 2, w // 2, 2)
        return torch.maximum(pairs[..., 0], pairs[..., 1])


def _is_pool2x2(m: nn.Module) -> bool:
    def pair(v: Any) -> tuple:
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    return (type(m) is nn.MaxPool2d and not m.return_indices and not m.ceil_mode and pair(m.kernel_size) == (2, 2)
            and pair(m.stride) == (2, 2) and pair(m.padding) == (0, 0) and pair(m.dilation) == (1, 1))


def scoring_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` for host scoring, every 2x2/stride-2 nn.MaxPool2d replaced by MaxPool2x2: the
    same logits bit for bit (tests/analysis/test_evaluate.py), the same state-dict names (functional_call works)."""
    fast = copy.deepcopy(model).eval()
    pools = [(parent, name) for parent in fast.modules() for name, child in parent.named_children() if _is_pool2x2(child)]
    for parent, name in pools:
        setattr(parent, name, MaxPool2x2())
    return fast


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, MaxPool2x2) or super().is_leaf_module(m, qualname)


def _sub_graph(gm: fx.GraphModule, start: fx.Node | None, capture: list[fx.Node],
               uses_input: dict[fx.Node, bool]) -> fx.GraphModule:
    """The graph from `start` (then its one placeholder; None: from the input) to the output, returning
    (output, *clones of the `capture` nodes' values taken right after each is computed)."""
    g, env, copies = fx.Graph(), {}, {}
    nodes = list(gm.graph.nodes)
    begin = -1 if start is None else nodes.index(start)
    for i, n in enumerate(nodes):
        if n.op == "output":
            g.output((fx.map_arg(n.args[0], lambda a: env[a]), *(copies[c] for c in capture)))
        elif n is start:
            env[n] = g.placeholder("h")
        elif i > begin or not uses_input[n]:  # after the cut, or a constant the rest may read
            env[n] = g.node_copy(n, lambda a: env[a])
            if n in capture:
                copies[n] = g.call_function(torch.clone, (env[n],))
    return fx.GraphModule(gm, g)


class PrefixForward:
    """Logits of `model` (a scoring_copy) under weight dicts that differ from the first one it sees (the reference)
    in a few of `tensor_names`, over input sets named by a key, restarting at the last unchanged activation."""

    def __init__(self, model: nn.Module, tensor_names: list[str], batch_size: int, max_bytes: int = 1 << 30):
        self.model, self.batch_size, self.budget = model, batch_size, max_bytes
        self.restart: dict[str, fx.Node] = {}  # image tensor -> the cut its layer's pass restarts from
        self.order: list[str] = []  # image tensors in graph order
        self.last_restart: str | None = None  # the node the last logits() call restarted from (None: whole pass)
        self._ref: dict[str, torch.Tensor] | None = None
        self._cache: dict[Any, tuple[list[torch.Tensor], dict[fx.Node, list[torch.Tensor]]]] = {}
        try:
            self.gm = fx.GraphModule(model, _Tracer().trace(model))
        except Exception:  # noqa: BLE001 - whatever fx cannot trace runs whole
            self.gm = None
            return
        nodes = list(self.gm.graph.nodes)
        pos = {n: i for i, n in enumerate(nodes)}
        self.uses_input: dict[fx.Node, bool] = {}
        for n in nodes:
            self.uses_input[n] = n.op == "placeholder" or any(self.uses_input[a] for a in n.all_input_nodes)
        cuts, live_until = [], 0  # n is a cut when no input-dependent value defined before it is used after it
        for n in nodes:
            if self.uses_input[n] and n.op not in ("placeholder", "output") and live_until <= pos[n]:
                cuts.append(n)
            if self.uses_input[n]:
                live_until = max([live_until, *(pos[u] for u in n.users)])
        first_use: dict[str, int] = {}
        for n in nodes:
            names = ([f"{n.target}.{p}" for p, _ in self.gm.get_submodule(n.target).named_parameters()]
                     if n.op == "call_module" else [n.target] if n.op == "get_attr" else [])
            for t in names:
                first_use.setdefault(t, pos[n])
        self.order = sorted((t for t in tensor_names if t in first_use), key=first_use.get)
        for t in self.order:
            before = [c for c in cuts if pos[c] < first_use[t]]
            if before:
                self.restart[t] = before[-1]
        self.points = sorted(set(self.restart.values()), key=pos.get)
        self._tails = {c: _sub_graph(self.gm, c, [], self.uses_input) for c in self.points}
        self._names = {c: {k for k, _ in g.named_parameters()} for c, g in self._tails.items()}

    def logits(self, weights: dict[str, torch.Tensor], x: torch.Tensor, key: Any) -> torch.Tensor:
        """functional_call(model, weights) over x in batches of batch_size; `key` names the input set x."""
        self.last_restart = None
        if self.gm is None or not self.points:
            return self._whole(weights, x)
        if self._ref is None:
            self._ref = dict(weights)
        if key not in self._cache:
            self._cache[key] = self._fill(x)
        out, acts = self._cache[key]
        changed = [t for t in self.order if not torch.equal(weights[t], self._ref[t])]
        if not changed:
            self.last_restart = "output"
            return torch.cat(out)
        point = self.restart.get(changed[0])
        if point not in acts:
            return self._whole(weights, x)
        self.last_restart, tail = point.name, self._tails[point]
        w = {k: v for k, v in weights.items() if k in self._names[point]}  # the tail holds only its own layers
        return torch.cat([torch.func.functional_call(tail, w, (h.clone(),))[0] for h in acts[point]])

    def _whole(self, weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.func.functional_call(self.model, weights, (x[i: i + self.batch_size],))
                          for i in range(0, len(x), self.batch_size)])

    def _fill(self, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[fx.Node, list[torch.Tensor]]]:
        """The reference pass over x, keeping the activations at the restart points that fit the budget."""
        probe = _sub_graph(self.gm, None, self.points, self.uses_input)
        per_input = [a.numel() * a.element_size() for a in torch.func.functional_call(probe, self._ref, (x[:1],))[1:]]
        keep = []
        for c, b in reversed(list(zip(self.points, per_input))):
            if b * len(x) <= self.budget:
                keep.insert(0, c)
                self.budget -= b * len(x)
        head = _sub_graph(self.gm, None, keep, self.uses_input)
        out, acts = [], {c: [] for c in keep}
        for i in range(0, len(x), self.batch_size):
            res = torch.func.functional_call(head, self._ref, (x[i: i + self.batch_size],))
            out.append(res[0])
            for c, a in zip(keep, res[1:]):
                acts[c].append(a)
        return out, acts
