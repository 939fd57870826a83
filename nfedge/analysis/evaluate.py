"""`nfedge evaluate`: host-simulated accuracy of the quantized base model with and without NeuralFuse.

CA = clean accuracy (quantized, no faults); PA = accuracy with faults; CA(NF), PA(NF) the same behind
the generator (F(x) = clip(x + G(x), -1, 1)); RP = PA(NF) - PA in points. Faulty weights come from the
memory image bytes after inject_faults (the same bytes the target reads). Each of PA, PA(NF), RP is
reported as mean, population std and worst chip over K evaluation chips (0..K-1).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from nfedge.config import StageConfig, require
from nfedge.models.generators import neuralfuse_transform
from nfedge.progress import DEFAULT, Progress
from nfedge.sram.calibration import load_calibration
from nfedge.sram.faults import FAULT_MODELS, InjectConfig
from nfedge.sram.image import WeightImage
from nfedge.train.perturb import perturbed_weights


@dataclasses.dataclass(frozen=True)
class EvaluateConfig(StageConfig):
    voltages: tuple[float, ...] = ()  # V/Vmin; or give bers
    bers: tuple[float, ...] = ()  # fractions
    chips: int = 10  # evaluation chips 0..chips-1
    fault: str = "flip"
    stuck_at_one: float = 0.5
    calibration: str = "sram-14nm"
    batch_size: int = 256  # images per forward pass; 256 ran 1.4x faster than 1000 on 2 cores (activations fit in cache)

    def validate(self) -> None:
        require(bool(self.voltages) != bool(self.bers), "give voltages or BERs (one of the two)")
        require(self.chips >= 1, "chips must be at least 1")
        require(self.fault in FAULT_MODELS and self.fault != "map", f"evaluate takes fault flip or stuck-at, got {self.fault!r}")
        for b in self.bers:
            require(0 <= b <= 0.5, f"BER must be in [0, 0.5], got {b}")

    def conditions(self) -> list[dict[str, float | None]]:
        cal = load_calibration(self.calibration)
        if self.voltages:
            return [{"voltage": v, "ber": cal.ber_at(v)} for v in self.voltages]
        return [{"voltage": None, "ber": b} for b in self.bers]

    def inject_config(self, cond: dict[str, float | None], chip: int) -> InjectConfig:
        return InjectConfig(fault=self.fault, ber=None if cond["voltage"] is not None else cond["ber"],
                            voltage=cond["voltage"], chip=chip, stuck_at_one=self.stuck_at_one,
                            calibration=self.calibration)


@torch.no_grad()
def transform_inputs(generator: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """F(x) for every input, in chunks of `batch_size` (G runs at nominal voltage: the same on every chip)."""
    return torch.cat([neuralfuse_transform(generator, x[i: i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def predict(model: nn.Module, weights: dict[str, torch.Tensor], x: torch.Tensor, generator: nn.Module | None = None,
            batch_size: int = 256) -> torch.Tensor:
    """Predicted classes of `model` with `weights` substituted, behind `generator` when given."""
    if generator is not None:
        x = transform_inputs(generator, x, batch_size)
    return torch.cat([torch.func.functional_call(model, weights, (x[i: i + batch_size],)).argmax(1)
                      for i in range(0, len(x), batch_size)])


def summarize(values: list[float]) -> dict[str, Any]:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std()), "worst": float(a.min()), "per_chip": [float(v) for v in a]}


def evaluate(model: nn.Module, image: WeightImage, test: tuple[torch.Tensor, torch.Tensor], cfg: EvaluateConfig,
             generators: dict[str, nn.Module] | None = None, progress: Progress = DEFAULT) -> dict[str, Any]:
    """Accuracies in percent, the base model alone and behind each generator, on the same faulty chips:

    {"clean": {"CA", "CA_NF": {gen: ...}}, "conditions": [{"voltage", "ber", "PA": stats,
      "generators": {gen: {"PA_NF": stats, "RP": stats}}}, ...]}   (stats = mean, std, worst, per_chip)
    """
    generators = generators or {}
    model.eval()
    for g in generators.values():
        g.eval()
    x, y = test
    # The generator's output does not depend on the chip, so F(x) is computed once per generator.
    inputs = {None: x, **{n: transform_inputs(g, x, cfg.batch_size) for n, g in generators.items()}}

    def acc(weights, name):
        return 100.0 * float((predict(model, weights, inputs[name], batch_size=cfg.batch_size) == y).float().mean())

    clean_w = image.dequantized_weights()
    result: dict[str, Any] = {"config": cfg.to_dict(), "samples": len(x), "image_sha256": image.manifest.image_sha256,
                              "clean": {"CA": acc(clean_w, None), "CA_NF": {n: acc(clean_w, n) for n in generators}}}
    conds = []
    for cond in cfg.conditions():
        pa, pa_nf = [], {n: [] for n in generators}
        for chip in progress.bar(range(cfg.chips), desc=f"evaluate BER {cond['ber']:.3g}", total=cfg.chips, unit="chip"):
            w = perturbed_weights(image, cfg.inject_config(cond, chip))
            pa.append(acc(w, None))
            for n in generators:
                pa_nf[n].append(acc(w, n))
        conds.append({**cond, "PA": summarize(pa), "generators": {
            n: {"PA_NF": summarize(v), "RP": summarize([b - a for a, b in zip(pa, v)])} for n, v in pa_nf.items()}})
    result["conditions"] = conds
    return result
