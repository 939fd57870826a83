"""`nfedge evaluate`: host-simulated accuracy of the quantized base model with and without NeuralFuse.

CA = clean accuracy (quantized, no faults); PA = accuracy with faults; CA(NF), PA(NF) the same behind
the generator (F(x) = clip(x + G(x), -1, 1)); RP = PA(NF) - PA in points. Faulty weights come from the
memory image bytes after inject_faults (the same bytes the target reads). Each of PA, PA(NF), RP is
reported as mean, population std and worst chip over K evaluation chips (0..K-1).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from nfedge.analysis.scoring import fast_scoring_copy, resumable_features, scoring_copy
from nfedge.analysis.sweep_work import evaluate_on
from nfedge.config import require
from nfedge.errors import NfedgeError
from nfedge.integer import MODES
from nfedge.integer.calibrate import INPUT_SCALE
from nfedge.integer.reference import image_codes, run_front, run_integer
from nfedge.integer.scheme import quantize_to_int8
from nfedge.models.generators import neuralfuse_transform
from nfedge.progress import DEFAULT, Progress
from nfedge.sram.image import WeightImage
from nfedge.sram.sweep import FaultSweep, faulty_images


@dataclasses.dataclass(frozen=True)
class EvaluateConfig(FaultSweep):
    """Which faulty images (nfedge.sram.sweep.FaultSweep: voltages or BERs x chips, a fault map, ready images)."""

    batch_size: int = 256  # images per forward pass; 256 ran 1.4x faster than 1000 on 2 cores (activations fit in cache)
    mode: str = "weight-only"  # weight-only: float layers on the image's codes (the paper); integer: docs/INTEGER.md

    def validate(self) -> None:
        super().validate()
        require(isinstance(self.batch_size, int) and self.batch_size >= 1, "batch_size must be >= 1")
        require(self.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")


@torch.no_grad()
def transform_inputs(generator: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """F(x) for every input, in chunks of `batch_size` (G runs at nominal voltage: the same on every chip)."""
    g = scoring_copy(generator)
    return torch.cat([neuralfuse_transform(g, x[i: i + batch_size]) for i in range(0, len(x), batch_size)])


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


def image_accuracy(model: nn.Module, image: WeightImage, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Accuracy in percent of `model` reading its weights from `image` (clean, faulty or ECC-decoded) on inputs `x`
    against labels `y`: the number evaluate reports for that image. Behind a generator pass x = transform_inputs(G, x),
    computed once for all chips (G runs at nominal voltage)."""
    return 100.0 * float((predict(model, image.dequantized_weights(), x, batch_size=batch_size) == y).float().mean())


class ImageScorer:
    """Accuracy (percent) of the base model reading one image, alone and behind each generator, in the
    configured arithmetic. Inputs are prepared once: F(x) does not depend on the chip (G runs at nominal
    voltage). Images are scored once per distinct content (sha256): at a high voltage most chips have no
    faulty cell, and every one of them is the clean image. Weight-only scoring runs fast_scoring_copy(model)
    (nfedge.analysis.scoring: the same logits bit for bit, faster max-pools, one-channel convs and pooled BatchNorms),
    checked against scoring_copy(model) on the first batch of every input set at construction: a platform whose
    kernels sum in another order falls back to scoring_copy. Passes run under torch.inference_mode (no autograd
    bookkeeping: the same values). Where the model opens with a reordered block (nfedge.analysis.scoring
    .resumable_features), that block's output per input set is kept for the block weights seen most often (the
    clean ones: cnn-s's first block is 288 weights, fault-free on most chips near a certified voltage), and a pass
    whose block weights are those starts after it (at most _HEAD_BYTES per scorer, cnn-s: 33 MB per 1,000 images
    and input set)."""

    def __init__(self, model: nn.Module, test: tuple[torch.Tensor, torch.Tensor], generators: dict[str, nn.Module],
                 batch_size: int, programs: dict[str, Any] | None = None) -> None:
        self.model, self.batch_size, self.programs = model.eval(), batch_size, programs
        self.fast: nn.Module | None = None
        self._prefix = None  # (ResumableSequential, the state-dict prefixes of the block it can skip) or None
        self._seen: collections.Counter = collections.Counter()  # (inputs, block weights digest): passes
        self._heads: dict[str | None, tuple[str, dict]] = {}  # inputs -> (block weights digest, output per batch)
        x, self.y = test
        for g in generators.values():
            g.eval()
        if programs is None:  # weight-only: float32 layers on the image's dequantized codes
            self.inputs = {None: x, **{n: transform_inputs(g, x, batch_size) for n, g in generators.items()}}
            self.fast = _checked_fast_copy(model, list(self.inputs.values()), batch_size)
            self._prefix = resumable_features(self.fast)
        else:  # integer mode: the exact integer reference, inputs quantized once
            missing = sorted(set(generators) - set(programs))
            if "base" not in programs or missing:
                raise NfedgeError(f"integer mode: no calibrated integer program for {missing or ['the base model']}")
            x_q = quantize_to_int8(x.numpy(), INPUT_SCALE)
            self.inputs = {None: x_q, **{n: run_front(programs[n], x_q) for n in generators}}
        # (image content, its bits, inputs): a requantized image's codes mean other weights than the same bytes at b
        self._cache: dict[tuple[str, int, str | None], float] = {}

    def __len__(self) -> int:
        """How many (image content, inputs) pairs were scored: each one forward pass over the test set."""
        return len(self._cache)

    def accuracy(self, image: WeightImage, name: str | None) -> float:
        key = (image.manifest.image_sha256, image.manifest.bits, name)
        if key not in self._cache:
            if self.programs is None:
                with torch.inference_mode():
                    pred = self._predict(image.dequantized_weights(), name)
                self._cache[key] = 100.0 * float((pred == self.y).float().mean())
            else:
                base = self.programs["base"]
                pred = torch.from_numpy(run_integer(base, self.inputs[name], image_codes(base, image)).argmax(1))
                self._cache[key] = 100.0 * float((pred == self.y).float().mean())
        return self._cache[key]


    def _predict(self, weights: dict[str, torch.Tensor], name: str | None) -> torch.Tensor:
        """predict(self.fast, weights, inputs), starting after the first block where its output is kept."""
        x, bs = self.inputs[name], self.batch_size
        if self._prefix is None:
            return predict(self.fast, weights, x, batch_size=bs)
        seq, prefixes = self._prefix
        h = hashlib.blake2b(digest_size=16)
        for k in sorted(k for k in weights if k.startswith(tuple(prefixes))):
            h.update(k.encode() + weights[k].numpy().tobytes())
        digest = h.hexdigest()
        self._seen[(name, digest)] += 1
        keys = [(x[i: i + bs].data_ptr(), tuple(x[i: i + bs].shape)) for i in range(0, len(x), bs)]
        kept, record = self._heads.get(name), None
        if kept is not None and kept[0] == digest:
            seq._resume = kept[1]
        elif kept is None or self._seen[(name, digest)] > self._seen[(name, kept[0])]:
            seq._resume, seq._record = dict.fromkeys(keys), (record := {})
        try:
            return predict(self.fast, weights, x, batch_size=bs)
        finally:
            seq._resume = seq._record = None
            others = sum(t.numel() * t.element_size() for n, (_, hs) in self._heads.items() if n != name
                         for t in hs.values())
            if record and len(record) == len(keys) and others + sum(
                    t.numel() * t.element_size() for t in record.values()) <= _HEAD_BYTES:
                self._heads[name] = (digest, record)


_HEAD_BYTES = 512 * 2 ** 20  # kept first-block outputs per scorer, bytes (cnn-s: 4 input sets x 1,000 images = 131 MB)


@torch.no_grad()
def _checked_fast_copy(model: nn.Module, inputs: list[torch.Tensor], batch_size: int) -> nn.Module:
    """fast_scoring_copy(model) if its logits equal scoring_copy(model)'s bit for bit on the first batch of every
    input set (the model's own weights: the kernels' order of summation does not depend on the values), else
    scoring_copy(model)."""
    fast, plain = fast_scoring_copy(model), scoring_copy(model)
    same = all(torch.equal(fast(x[:batch_size]), plain(x[:batch_size])) for x in inputs if len(x))
    if not same:  # the same numbers either way, but the speed-up is lost: say so, by name
        warnings.warn(f"scorer: the fast copy of {type(model).__name__} (pool before BatchNorm, unfold first conv) "
                      "gives other logits on this CPU; scoring with the plain copy (same numbers, slower)", stacklevel=2)
    return fast if same else plain


def evaluate(model: nn.Module, image: WeightImage, test: tuple[torch.Tensor, torch.Tensor], cfg: EvaluateConfig,
             generators: dict[str, nn.Module] | None = None, progress: Progress = DEFAULT,
             programs: dict[str, Any] | None = None, executor: Any = None) -> dict[str, Any]:
    """Accuracies in percent, the base model alone and behind each generator, on the same faulty chips:

    {"clean": {"CA", "CA_NF": {gen: ...}}, "conditions": [{"voltage", "ber", "PA": stats,
      "generators": {gen: {"PA_NF": stats, "RP": stats}}}, ...]}   (stats = mean, std, worst, per_chip)
    Integer mode (cfg.mode "integer") needs `programs`: the calibrated integer programs, "base" and one per
    generator name (nfedge.integer.calibrate). `executor` (nfedge.executor; None: this process) scores the
    faulty images: the same numbers.
    """
    generators = generators or {}
    if cfg.mode == "integer" and programs is None:
        raise NfedgeError("integer mode: evaluate needs the calibrated integer programs")
    score = ImageScorer(model, test, generators, cfg.batch_size, programs if cfg.mode == "integer" else None)
    result: dict[str, Any] = {"config": cfg.to_dict(), "mode": cfg.mode, "samples": len(test[0]),
                              "image_sha256": image.manifest.image_sha256,
                              "clean": {"CA": score.accuracy(image, None),
                                        "CA_NF": {n: score.accuracy(image, n) for n in generators}}}
    # One faulty image at a time (host memory); the images of one condition come one after another.
    conds: list[dict[str, Any]] = []
    total = len(cfg.conditions()) * len(cfg.chip_labels()) + len(cfg.images)
    bar = progress.manual("evaluate", total=total, unit="image")
    if executor is None or executor.inline:
        scored = ((i, cond, chip, score.accuracy(f, None), {n: score.accuracy(f, n) for n in generators})
                  for i, cond, chip, f in faulty_images(image, cfg))
    else:  # the images are made and scored by the executor's workers (nfedge.analysis.sweep_work)
        scored = evaluate_on(executor, ImageScorer, model, image, test, cfg, generators,
                             programs if cfg.mode == "integer" else None, bar)
    for _, group in itertools.groupby(scored, key=lambda item: item[0]):
        pa, pa_nf, chips = [], {n: [] for n in generators}, []
        for _, cond, chip, acc, acc_nf in group:
            chips.append(chip)
            pa.append(acc)
            for n in generators:
                pa_nf[n].append(acc_nf[n])
            if executor is None or executor.inline:
                bar.update(1)
        conds.append({**cond, "chips": chips, "PA": summarize(pa), "generators": {
            n: {"PA_NF": summarize(v), "RP": summarize([b - a for a, b in zip(pa, v)])} for n, v in pa_nf.items()}})
    bar.close()
    result["conditions"] = conds
    return result
