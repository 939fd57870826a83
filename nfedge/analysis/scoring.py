"""Fast host scoring of many weight images of one model on fixed inputs (analysis.evaluate.ImageScorer), bit for bit
the logits of functional_call(model, weights):
- scoring_copy: 2x2 max-pools as elementwise maxima (CPU max_pool2d also writes every window's argmax index);
- fast_scoring_copy (the base model in ImageScorer): also one-input-channel convs as unfold + bmm (UnfoldConv2d), and
  Conv -> BatchNorm -> ReLU -> MaxPool blocks with the pool moved in front of the BatchNorm (SignedConv2d,
  PooledBatchNorm2d), so BatchNorm and ReLU touch a quarter of the elements;
- resumable_features: a pass can start after the first such block, from that block's output kept for the same block
  weights on the same inputs (ResumableSequential).
Measured on cnn-s, 1,000 images, 1 thread: docs/BENCHMARKS.md "Plan scorer speed (issues #25, #26)".

A restart after every layer an image leaves unchanged (torch.fx cuts, the reference image's activations kept) was
tried and removed: side by side it saved nothing on the main job's evaluate sweep (43.2 s against 42.8 s without it,
docs/BENCHMARKS.md "Host evaluation sweep"), whose voltages (0.875 V/Vmin and below, BER >= 1.3e-3) fault nearly every
layer. A plan's voltages are higher (BER 1e-5..2e-4 where the options certify): there cnn-s's first block (288
weights, 2,304 bits) reads fault-free on 69-98% of chips, and it is the costliest block per MAC (32x32 maps).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


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


class UnfoldConv2d(nn.Conv2d):
    """A one-input-channel, bias-free nn.Conv2d as unfold + one matmul per batch: the same values bit for bit where
    oneDNN and MKL both sum a 3x3 (or k x k) window's products as one ordered chain of fused multiply-adds (measured on
    this CPU: tests/analysis/test_scoring.py, and ImageScorer checks it on its own inputs), about 2x faster: oneDNN's
    direct kernel for one input channel is memory-bound (98 ms of a 411 ms cnn-s pass over 1,000 images, 1 thread)."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if bias is not None or x.dim() != 4:
            return super()._conv_forward(x, weight, bias)
        n, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        oh, ow = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        cols = nn.functional.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (n, kh kw, oh ow)
        # bmm over the batch, spelled out: torch.matmul may fold the batch into one (n oh ow, k) x (k, out) product
        # (it does for a weight that requires grad), a different MKL kernel that sums in another order
        w2 = weight.reshape(self.out_channels, -1).expand(n, -1, -1)
        return torch.bmm(w2, cols).view(n, self.out_channels, oh, ow)


def _unfoldable(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.in_channels == 1 and m.groups == 1 and m.bias is None
            and m.padding_mode == "zeros" and not isinstance(m.padding, str))


def _channel_signs(bn: nn.BatchNorm2d) -> torch.Tensor | None:
    """+1 / -1 per channel: the sign of the BatchNorm scale (weight / sqrt(var + eps) has the weight's sign); None
    where a weight is 0, -0 or not finite (a zero scale maps every input to beta, the sign of a zero result would
    then depend on the input's sign: the reordered pass is not used)."""
    w = bn.weight
    if not bool(torch.isfinite(w).all()) or bool((w == 0).any()):
        return None
    return torch.where(w < 0, -1.0, 1.0).to(w.dtype)


class SignedConv2d(nn.Conv2d):
    """The conv of a Conv -> BatchNorm -> ReLU -> MaxPool block (PooledBatchNorm2d): output channels whose
    BatchNorm scale is negative come out negated. Negating a filter negates every product and partial sum exactly
    (round-to-nearest is symmetric), so the channel is -z bit for bit."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = _channel_signs(self._bn[0])
        w = self.weight if s is None else self.weight * s.view(-1, *([1] * (self.weight.dim() - 1)))
        return self._conv_forward(x, w, self.bias if s is None or self.bias is None else self.bias * s)


class PooledBatchNorm2d(nn.BatchNorm2d):
    """The BatchNorm of a Conv -> BatchNorm -> ReLU -> MaxPool block, the pool moved before it: pool(relu(bn(z)))
    = relu(bn'(pool(s z))) bit for bit, bn' with weight s w and mean s m (s = the scale's sign per channel, the conv
    in front made s z). CPU eval BatchNorm is y = fl(fl(x alpha) + beta), alpha = w / sqrt(var + eps), beta =
    b - m alpha: with s w and s m, alpha' = s alpha and beta' = beta exactly, so bn'(s z) = bn(z) element for element;
    bn' is then non-decreasing (alpha' >= 0, rounding is monotone) and ReLU is, so both commute with a maximum.
    BatchNorm and ReLU then touch a quarter of the elements (2x2 pools: 41 of 411 ms per cnn-s pass, 1 thread)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = _channel_signs(self)
        if s is None:  # the original order (ReLU after a max-pool is still exact: both are maxima)
            return self._pool[0](super().forward(x))
        return nn.functional.batch_norm(self._pool[0](x), self.running_mean * s, self.running_var, self.weight * s,
                                        self.bias, False, 0.0, self.eps)


def _reorderable(seq: nn.Module, i: int) -> bool:
    kids = list(seq.children())
    if i + 3 >= len(kids):
        return False
    conv, bn, act, pool = kids[i: i + 4]
    return (type(conv) in (nn.Conv2d, UnfoldConv2d) and type(bn) is nn.BatchNorm2d and bn.affine
            and bn.track_running_stats and bn.running_mean is not None and bn.num_features == conv.out_channels
            and type(act) is nn.ReLU and type(pool) in (nn.MaxPool2d, MaxPool2x2)
            and not getattr(pool, "return_indices", False))


class _SignedUnfoldConv2d(SignedConv2d, UnfoldConv2d):
    """SignedConv2d's signs, UnfoldConv2d's arithmetic (its _conv_forward)."""


def _retype(m: nn.Module, cls: type) -> nn.Module:
    """`m` (a module of the private copy) as subclass `cls`: the same parameters, buffers and state-dict names."""
    m.__class__ = cls
    return m


def fast_scoring_copy(model: nn.Module) -> nn.Module:
    """scoring_copy(model) with two more rewrites, each the same values bit for bit (tests/analysis/test_scoring.py):
    one-input-channel convs as UnfoldConv2d, and in every nn.Sequential a Conv2d -> BatchNorm2d -> ReLU -> MaxPool2d
    run as conv -> pool -> BatchNorm -> ReLU (SignedConv2d, PooledBatchNorm2d; the ReLU stays, the pool's slot becomes
    nn.Identity). State-dict names are unchanged, so functional_call substitutes the same weights."""
    fast = scoring_copy(model)
    for parent in list(fast.modules()):
        for name, child in list(parent.named_children()):
            if _unfoldable(child):
                setattr(parent, name, _retype(child, UnfoldConv2d))
    for seq in [m for m in fast.modules() if isinstance(m, nn.Sequential)]:
        names = [n for n, _ in seq.named_children()]
        i = 0
        while i < len(names):
            if not _reorderable(seq, i):
                i += 1
                continue
            conv, bn, _, pool = list(seq.children())[i: i + 4]
            signed = _retype(bn, PooledBatchNorm2d)
            # lists, not attributes: the referenced modules stay out of this module's state dict (no duplicate names)
            signed._pool = [pool]
            sconv = _retype(conv, _SignedUnfoldConv2d if type(conv) is UnfoldConv2d else SignedConv2d)
            sconv._bn = [signed]  # functional_call swaps the BatchNorm's tensors in place: read at call time
            setattr(seq, names[i + 3], nn.Identity())
            i += 4
    return fast


class ResumableSequential(nn.Sequential):
    """An nn.Sequential that can skip its first `cut` children on an input whose output there is known: `_resume`
    (set by the caller around one pass, None otherwise) maps (data_ptr, shape) of an input batch to that output
    (skip them) or to None (run them and record the output into `_record`). The skipped children are the same
    computation on the same tensor, so the rest of the pass is the same bit for bit."""

    cut = 0
    _resume: dict | None = None
    _record: dict | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.data_ptr(), tuple(x.shape))
        if self._resume is None or key not in self._resume:
            return super().forward(x)
        kids = list(self)
        h = self._resume[key]
        if h is None:
            h = x
            for m in kids[: self.cut]:
                h = m(h)
            if self._record is not None:
                self._record[key] = h
        for m in kids[self.cut:]:
            h = m(h)
        return h


def resumable_features(fast: nn.Module) -> tuple[ResumableSequential, list[str]] | None:
    """When `fast` (a fast_scoring_copy) has a `features` nn.Sequential opening with a reordered block (conv, pooled
    BatchNorm, ReLU, the pool's Identity), that Sequential as a ResumableSequential cut after the block, and the
    state-dict prefixes of the block's tensors; else None. The block's output is a quarter of its conv's (the pool
    is inside), and its weights are few (cnn-s: 288 of 93,728): at the voltages a plan certifies most chips read
    them fault-free (0.7 at BER 1.6e-4)."""
    seq = getattr(fast, "features", None)
    if type(seq) is not nn.Sequential or len(seq) < 5:
        return None
    kids, names = list(seq), [n for n, _ in seq.named_children()]
    if not (isinstance(kids[0], SignedConv2d) and type(kids[1]) is PooledBatchNorm2d and type(kids[2]) is nn.ReLU
            and type(kids[3]) is nn.Identity and isinstance(kids[4], nn.Conv2d)):
        return None
    seq.__class__ = ResumableSequential
    seq.cut = 4
    return seq, [f"features.{n}." for n in names[:4]]
