"""Elementwise activations that integer mode runs as 256-entry int8 tables (docs/INTEGER.md "Tables").

A table activation f after a conv, linear or add: the op rescales its accumulators to an int8 pre-activation q at
`pre_scale` (max|pre-activation| / 127 on the calibration set), and the output is lut[q + 128], where
lut[i] = round_half_up(f((i - 128) * pre_scale) / s_out), saturated to int8. s_out is the function's fixed grid where
its range is known ([-1, 1] for tanh, [0, 1] for sigmoid: 1/127), otherwise max|f| observed / 127.

Adding a function is one entry in TABLES: its float definition (torch, float64 on the host: the table and the
float twin use the same one) and its fixed output scale or None.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F


class Table(NamedTuple):
    fn: Callable[[torch.Tensor], torch.Tensor]  # the real function, elementwise
    out_scale: float | None  # a fixed output grid (real per step), or None: observed max|f(x)| / 127


TABLES: dict[str, Table] = {
    "tanh": Table(torch.tanh, 1.0 / 127),
    "sigmoid": Table(torch.sigmoid, 1.0 / 127),
    "silu": Table(F.silu, None),
    "hardswish": Table(F.hardswish, None),
    "hardsigmoid": Table(F.hardsigmoid, 1.0 / 127),
    "gelu": Table(F.gelu, None),  # the exact (erf) form; GELU(approximate='tanh') is another table, not added
}
