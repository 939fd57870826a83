"""`nfedge plan`: how low the weight SRAM can go while an accuracy floor holds on nearly every chip, certified, and the
net energy saving there, for every option on one energy model (nfedge.analysis.options); and, at fixed voltages,
which option keeps the most chips above the floor (docs/PLANNER.md).

What is measured. A_o(v, c) is option o's host-simulated accuracy (analysis.evaluate.ImageScorer, the number
`nfedge evaluate` reports) on chip c at voltage v. The claim certified: at voltage v, at least a fraction (1 - q) of
chips keep A_o >= floor on the test images, with confidence c (nfedge.analysis.certify: the rank-k chip of n).

1. Search, on the validation split (training images no model trained on, nfedge.analysis.split) with search chips
   0..n-1: v meets the floor when the rank-k_n chip does (k_n = certificate_rank(n, q, c)). The floor there is the
   test floor shifted by CA(validation) - CA(test): the same drop below each split's clean accuracy. A chip's faults
   only grow as v falls (nfedge.sram.faults nests them); accuracy is not strictly monotone, so the search assumes only
   that the voltages meeting the floor form one interval at the resolution probed: a top-down scan of the table's
   points stops at the first miss, then bisection on the interpolated axis to `tolerance` V/Vmin.
2. Certification, on the test images with fresh chips n..n+m-1 (never used by the search): certified iff at most
   k_m - 1 of the m fresh chips miss the floor (0 of 59 at q = 0.05, c = 0.95). The fresh chips are independent of
   the voltage chosen, so the selection on search chips and validation images biases nothing here.
3. Fixed voltages (`voltages`): every option's rank-k_m fresh-chip accuracy on the test images at v (a lower bound on
   its q-quantile with confidence c) and its ES there, ranked.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from nfedge import __version__
from nfedge.analysis.certify import acceptance, order_statistic, rank_confidence, require_rank, standard_error
from nfedge.analysis.energy import EnergyConfig
from nfedge.analysis.evaluate import ImageScorer
from nfedge.analysis.options import BASE, ECC, Option, build_options, option_energy
from nfedge.analysis.plan_sim import Simulator as _Simulator
from nfedge.config import StageConfig, require
from nfedge.executor import Executor
from nfedge.progress import DEFAULT, Progress
from nfedge.quant import check_bits
from nfedge.sram.calibration import load_calibration
from nfedge.sram.ecc import UNCORRECTABLE_POLICIES
from nfedge.sram.image import WeightImage, build_image

PLAN_FORMAT = "nfedge-plan"
_DIGITS = 9  # voltages are rounded to 1e-9 V/Vmin: cache keys, and the exact value handed to inject_faults
__all__ = ["BASE", "ECC", "PLAN_FORMAT", "PlanConfig", "plan_operating_points", "rank_at_voltage", "search_voltage"]


@dataclasses.dataclass(frozen=True)
class PlanConfig(StageConfig):
    CONFIG_VERSION = 2  # 2: certification (confidence), validation split, protections, fixed voltages

    base: str = "cnn-s"  # for the energy count, as `nfedge energy --base`: a registered model or a checkpoint (.pt)
    classes: int = 10
    floor: float | None = None  # accuracy floor in % on the test images (absolute); None: CA minus floor_drop
    floor_drop: float = 2.0  # points below CA
    quantile: float = 0.05  # at least (1 - quantile) of chips must meet the floor ...
    confidence: float = 0.95  # ... with this confidence (order statistics, nfedge.analysis.certify)
    chips: int = 59  # search chips 0..chips-1 (the rank-k chip of them decides a voltage)
    confirm_chips: int = 59  # fresh chips chips..chips+confirm_chips-1: the acceptance test and the fixed voltages
    fault: str = "flip"  # flip | stuck-at
    stuck_at_one: float = 0.5
    calibration: str = "sram-14nm"
    v_min: float | None = None  # search range in V/Vmin; None: the table's lowest (highest) voltage
    v_max: float | None = None
    tolerance: float = 0.001  # bisection stops at a bracket this narrow (V/Vmin: 1 mV at Vmin = 1 V)
    ecc: bool = True  # base + SECDED (72,64)
    ecc_uncorrectable: str = "zero"  # a detected-uncorrectable word is zeroed, or kept as read
    parity: bool = True  # base + a parity bit per 64-bit word, a detected word zeroed
    msb: tuple[int, ...] = (1, 2)  # base + the top k bits of every code at nominal voltage, one option per k
    fewer_bits: tuple[int, ...] = (4,)  # base requantized to b' bits: at the searched voltage and at nominal
    generator_msb: int = 2  # each generator + MSB protection of this many bits (0: none)
    voltages: tuple[float, ...] = ()  # fixed voltages (V/Vmin): every option's certified accuracy and ES there
    curve: bool = False  # also the achievable ES against the floor (for the plot), over curve_chips search chips
    curve_step: float = 0.005  # the curve's voltage grid (V/Vmin)
    curve_drop: int = 20  # the curve's floors: CA, CA - 1, ..., CA - curve_drop
    curve_chips: int = 20  # the first (<= chips) search chips: an illustration, the ceil(q K)-th lowest, not certified
    batch_size: int = 256
    vela_bundle: str | None = None  # an Ethos-U bundle: ES from Vela's weight bytes read (nfedge energy --vela-bundle)

    def validate(self) -> None:
        EnergyConfig(base=self.base, generator=None, classes=self.classes, vela_bundle=self.vela_bundle)  # the same checks as `nfedge energy`
        if self.floor is not None:
            require(_number(self.floor) and 0.0 <= self.floor <= 100.0, f"floor must be an accuracy in % (0..100), got {self.floor!r}")
        require(_number(self.floor_drop) and 0.0 <= self.floor_drop <= 100.0,
                f"floor_drop must be 0..100 points below CA, got {self.floor_drop!r}")
        require(_number(self.quantile) and 0.0 < self.quantile < 1.0, f"quantile must be in (0, 1), got {self.quantile!r}")
        require(_number(self.confidence) and 0.0 < self.confidence < 1.0,
                f"confidence must be in (0, 1), got {self.confidence!r}")
        require(_integer(self.chips) and self.chips >= 1, f"chips must be an integer >= 1, got {self.chips!r}")
        require(_integer(self.confirm_chips) and self.confirm_chips >= 1,
                f"confirm_chips must be an integer >= 1, got {self.confirm_chips!r}")
        require_rank(self.chips, self.quantile, self.confidence, "search chips")
        require_rank(self.confirm_chips, self.quantile, self.confidence, "fresh chips")
        require(self.fault in ("flip", "stuck-at"), f"plan takes fault flip or stuck-at, got {self.fault!r}")
        require(0.0 <= self.stuck_at_one <= 1.0, f"stuck_at_one must be in [0, 1], got {self.stuck_at_one}")
        require(_number(self.tolerance) and self.tolerance > 0, f"tolerance must be positive (V/Vmin), got {self.tolerance!r}")
        require(self.ecc_uncorrectable in UNCORRECTABLE_POLICIES,
                f"ecc_uncorrectable must be one of {', '.join(UNCORRECTABLE_POLICIES)}, got {self.ecc_uncorrectable!r}")
        require(all(_integer(k) and 1 <= k <= 7 for k in self.msb), f"msb must be bit counts 1..7, got {self.msb!r}")
        require(all(_integer(b) for b in self.fewer_bits), f"fewer_bits must be bit counts, got {self.fewer_bits!r}")
        for b in self.fewer_bits:
            check_bits(b)
        require(_integer(self.generator_msb) and 0 <= self.generator_msb <= 7, "generator_msb must be 0..7")
        require(_number(self.curve_step) and self.curve_step > 0, f"curve_step must be positive, got {self.curve_step!r}")
        require(_integer(self.curve_drop) and 0 <= self.curve_drop <= 100, f"curve_drop must be 0..100, got {self.curve_drop!r}")
        require(_integer(self.curve_chips) and self.curve_chips >= 1, f"curve_chips must be >= 1, got {self.curve_chips!r}")
        require(_integer(self.batch_size) and self.batch_size >= 1, "batch_size must be >= 1")
        self.voltage_range()
        cal = load_calibration(self.calibration)
        for v in self.voltages:
            require(_number(v), f"a fixed voltage must be a number (V/Vmin), got {v!r}")
            cal.ber_at(v)  # inside the table, or a one-line error

    def voltage_range(self) -> tuple[float, float]:
        """The searched voltages: [v_min, v_max] clipped to the calibration table (an empty range is an error)."""
        cal = load_calibration(self.calibration)
        t_lo, t_hi = cal.voltage[0], cal.voltage[-1]
        for name in ("v_min", "v_max"):
            v = getattr(self, name)
            require(v is None or (_number(v) and math.isfinite(v)), f"{name} must be a voltage in V/Vmin, got {v!r}")
        if self.v_min is not None and self.v_max is not None:
            require(self.v_min <= self.v_max, f"empty voltage range: v_min {self.v_min} is above v_max {self.v_max}")
        require(self.v_min is None or self.v_min <= t_hi, f"empty voltage range: v_min {self.v_min} is above the highest "
                                                          f"voltage of calibration {cal.name!r} ({t_lo}..{t_hi} V/Vmin)")
        require(self.v_max is None or self.v_max >= t_lo, f"empty voltage range: v_max {self.v_max} is below the lowest "
                                                          f"voltage of calibration {cal.name!r} ({t_lo}..{t_hi} V/Vmin)")
        lo = t_lo if self.v_min is None else max(self.v_min, t_lo)
        hi = t_hi if self.v_max is None else min(self.v_max, t_hi)
        return round(float(lo), _DIGITS), round(float(hi), _DIGITS)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def search_voltage(meets, points: list[float], tol: float) -> dict[str, Any]:
    """The lowest voltage meeting the floor (`meets(v)`): coarse scan of `points`, highest first, then bisection."""
    if not meets(points[0]):
        return {"voltage": None, "bracket": None, "limited_by_range": False}
    hi = points[0]
    for v in points[1:]:
        if meets(v):
            hi = v
            continue
        lo = v  # invariant: lo fails, hi meets
        while hi - lo > tol:
            mid = round(0.5 * (lo + hi), _DIGITS)
            if mid in (lo, hi):
                break
            lo, hi = (lo, mid) if meets(mid) else (mid, hi)
        return {"voltage": hi, "bracket": [lo, hi], "limited_by_range": False}
    return {"voltage": hi, "bracket": None, "limited_by_range": True}  # met down to the range's bottom


def _stats(values: list[float], k: int, floor: float, q: float) -> dict[str, Any]:
    a = np.asarray(values, dtype=float)
    return {"rank": k, "chips": len(values), "accuracy_at_rank": order_statistic(values, k),
            "confidence": rank_confidence(len(values), q, k), "mean": float(a.mean()), "std": float(a.std()),
            "worst": float(a.min()), "per_chip": [float(v) for v in a], "chips_meeting_floor": int((a >= floor).sum())}


def _certify(sim: _Simulator, o: Option, v: float, confirm: list[int], floor: float, images: int) -> dict[str, Any]:
    """The acceptance test at v on the fresh chips (test images), stopped as soon as too many chips missed."""
    cfg, got = sim.cfg, []
    allowed = acceptance([], floor, len(confirm), cfg.quantile, cfg.confidence)["failures_allowed"]
    for i, c in enumerate(confirm):
        got.append(sim.values(o, "test", v, [c], confirm[i + 1:])[0])
        if sum(a < floor for a in got) > allowed:
            break
    res = acceptance(got, floor, len(confirm), cfg.quantile, cfg.confidence)
    a = np.asarray(got, dtype=float)
    res.update(chip_seeds=confirm[: len(got)], per_chip=[float(x) for x in a], mean=float(a.mean()), worst=float(a.min()),
               standard_error=standard_error(res["accuracy_at_rank"] if res["accuracy_at_rank"] is not None
                                             else float(a.min()), images))
    return res


def _trace(sim: _Simulator, o: Option, chips: list[int], floor: float, k: int) -> list[dict[str, Any]]:
    out = []  # every voltage searched; where it missed the floor, the chips measured until that was clear
    for u in sorted({u for (lab, s, u, c) in sim.acc if lab == o.label and s == "val"}, reverse=True):
        got = [a for c in chips if (a := sim.get(o, "val", u, c)) is not None]
        t: dict[str, Any] = {"voltage": u, "chips_measured": len(got), "chips_below_floor": sum(a < floor for a in got)}
        if len(got) == len(chips):
            t.update(accuracy_at_rank=order_statistic(got, k), mean=float(np.mean(got)))
        out.append({**t, "meets_floor": t["chips_below_floor"] < k})
    return out


def _curve(sim: _Simulator, options: list[Option], floors: list[float], shift: float, lo: float, hi: float,
           table: list[float], energy: dict[str, dict[str, Any]], b: int) -> dict[str, Any]:
    """Achievable ES against the floor, an illustration over the first curve_chips search chips (validation images,
    the ceil(q K)-th lowest chip, not certified): per floor, the lowest grid voltage down to which every grid voltage
    meets it."""
    cfg = sim.cfg
    chips = list(range(min(cfg.curve_chips, cfg.chips)))
    k = max(1, math.ceil(cfg.quantile * len(chips) - 1e-9))
    n = math.floor((hi - lo) / cfg.curve_step + 1e-9)
    grid = sorted({round(hi - i * cfg.curve_step, _DIGITS) for i in range(n + 1)} | {lo, *table}, reverse=True)
    cal = load_calibration(cfg.calibration)
    out: dict[str, Any] = {"floors": floors, "grid_step": cfg.curve_step, "chips": len(chips), "rank": k, "options": {}}
    for o in (o for o in options if not o.nominal_only):
        qs = []
        for v in grid:  # highest first; below the first miss of the lowest floor nothing can count
            if not sim.meets(o, "val", v, chips, floors[-1] + shift, k):
                qs.append(-math.inf)
                break
            qs.append(order_statistic(sim.values(o, "val", v, chips), k) - shift)
        e, (f_low, f_nom) = energy[o.label], o.fractions(b)
        gw, gm = e["generator_weight_accesses"] or 0, e["generator_macs"] or 0
        volts, es, mes = [], [], []
        for f in floors:
            i = next((j for j, q in enumerate(qs) if q < f), len(qs))  # the first grid voltage that misses f
            v = grid[i - 1] if i > 0 else None
            r = cal.energy_at(v) if v is not None else None
            volts.append(v)
            es.append(1.0 - f_low * r - f_nom - gw / e["base_weight_accesses"] if r is not None else None)
            mes.append(1.0 - f_low * r - f_nom - gm / e["base_macs"] if r is not None else None)
        out["options"][o.label] = {"voltage": volts, "energy_saving": es, "mac_energy_saving": mes}
    return out


def plan_operating_points(model: nn.Module, image: WeightImage, test: tuple[torch.Tensor, torch.Tensor], cfg: PlanConfig,
                          generators: dict[str, tuple[str, nn.Module]] | None = None, progress: Progress = DEFAULT,
                          score: ImageScorer | None = None, validation: tuple[torch.Tensor, torch.Tensor] | None = None,
                          val_score: ImageScorer | None = None, split_record: dict[str, Any] | None = None,
                          executor: Executor | None = None, floor_above_ca: bool = False) -> dict[str, Any]:
    """Every option's certified operating point at cfg's floor, quantile and confidence (module doc), and its
    certified accuracy at each of cfg.voltages.

    `generators` maps a label to (registered generator name, module). `validation` is the split the voltage is
    searched on (nfedge.analysis.split; None: the test images themselves, recorded as such: the search then sees the
    images it is judged on, though the fresh chips still certify). `score` / `val_score` share ImageScorers between
    plans of the same model, image sets and generators. `executor` (nfedge.executor; None: this process) scores
    the faulty images; the plan is the same. `floor_above_ca`: a floor above the base model's clean accuracy makes
    every option miss it instead of an error (a retrained model judged at the original's floor, plan_retrained).
    Accuracies in %, energy savings as fractions.
    """
    generators, (lo, hi), b = generators or {}, cfg.voltage_range(), image.manifest.bits
    per_channel = any(len(t.scales) > 1 for t in image.manifest.tensors)
    options = build_options(list(generators), cfg.ecc, cfg.parity, cfg.msb, cfg.fewer_bits, cfg.generator_msb, b)
    for label in generators:
        require(label not in {o.label for o in options if o.generator is None},
                f"a generator cannot be labelled {label!r} (an option's name)")
    images = {0: image, **{bb: build_image(model, bb, per_channel) for bb in cfg.fewer_bits if bb < b}}
    gmods = {label: g for label, (_, g) in generators.items()}
    if score is None:
        score = ImageScorer(model, test, gmods, cfg.batch_size)
    if validation is None:
        val_score = score
    elif val_score is None:
        val_score = ImageScorer(model, validation, gmods, cfg.batch_size)
    for s, data in ((score, test), (val_score, validation or test)):
        require(s.y is data[1] and set(s.inputs) == {None, *generators}, "a shared scorer must be made from this plan's "
                                                                         "image set and generators")
    scored = len(score) + (len(val_score) if val_score is not score else 0)
    sim = _Simulator({"test": score, "val": val_score}, images, cfg, progress, executor, model,
                     {"test": test, **({"val": validation} if validation is not None else {})}, gmods)
    clean = {o.label: score.accuracy(images[o.bits or 0], o.inputs) for o in options}
    clean_val = {o.label: val_score.accuracy(images[o.bits or 0], o.inputs) for o in options}
    ca, ca_val = clean[BASE], clean_val[BASE]
    floor = float(cfg.floor) if cfg.floor is not None else ca - cfg.floor_drop
    require(floor <= ca or floor_above_ca,
            f"accuracy floor {floor:.2f}% is above the base model's clean accuracy (CA {ca:.2f}%): "
            "no voltage can meet it")
    shift = ca_val - ca  # the search's floor: the same drop below the validation split's clean accuracy
    floor_val = floor + shift
    chips = list(range(cfg.chips))
    confirm = list(range(cfg.chips, cfg.chips + cfg.confirm_chips))
    k_s = require_rank(cfg.chips, cfg.quantile, cfg.confidence, "search chips")
    k_c = require_rank(cfg.confirm_chips, cfg.quantile, cfg.confidence, "fresh chips")
    cal = load_calibration(cfg.calibration)
    table = [round(float(v), _DIGITS) for v in cal.voltage if lo <= v <= hi]
    points = sorted({lo, hi, *table}, reverse=True)
    nominal = round(float(cal.nominal_voltage), _DIGITS)
    input_shape = "x".join(str(d) for d in test[0].shape[1:])
    n_val, n_test = len((validation or test)[0]), len(test[0])
    progress.info(f"plan: floor {floor:.2f}% (CA {ca:.2f}; validation CA {ca_val:.2f}, search floor {floor_val:.2f}); "
                  f"{1 - cfg.quantile:.0%} of chips at confidence {cfg.confidence}: rank {k_s} of {cfg.chips} search chips, "
                  f"at most {k_c - 1} of {cfg.confirm_chips} fresh chips below the floor; {len(options)} options")
    energy = {o.label: option_energy(o, cfg.base, cfg.classes, cfg.calibration, input_shape, hi, b,
                                     generators[o.generator][0] if o.generator else None, cfg.vela_bundle) for o in options}
    rows = []
    for o in options:
        if o.nominal_only:  # nothing faults: every chip reads the clean b'-bit image
            found = {"voltage": nominal if clean_val[o.label] >= floor_val else None, "bracket": None,
                     "limited_by_range": False}
        else:
            found = search_voltage(lambda v, o=o: sim.meets(o, "val", v, chips, floor_val, k_s), points, cfg.tolerance)
        v = found["voltage"]
        row: dict[str, Any] = {"option": o.label, "kind": o.kind, "protection": o.protection, "generator": o.generator,
                               "msb": o.msb, "bits": o.bits or b, "nominal_only": o.nominal_only,
                               "clean_accuracy": clean[o.label], "clean_accuracy_validation": clean_val[o.label],
                               "cells": o.cells(image.manifest.total_bytes, b), "feasible": v is not None, **found}
        if v is None:
            row.update(ber=None, r=None, energy_saving=None, mac_energy_saving=None, search=None, certificate=None,
                       certified=False)
        else:
            row.update(option_energy(o, cfg.base, cfg.classes, cfg.calibration, input_shape, v, b,
                                     generators[o.generator][0] if o.generator else None, cfg.vela_bundle))
            row["search"] = _stats(sim.values(o, "val", v, chips), k_s, floor_val, cfg.quantile)
            row["certificate"] = _certify(sim, o, v, confirm, floor, n_test)
            row["certified"] = row["certificate"]["certified"]
            audits = [sim.audits[(o.label, v, c)] for c in chips if (o.label, v, c) in sim.audits]
            if audits:
                row["audit"] = {k: float(np.mean([a[k] for a in audits])) for k in audits[0]
                                if isinstance(audits[0][k], (int, float)) and k not in ("chip", "voltage", "msb")}
        row["trace"] = _trace(sim, o, chips, floor_val, k_s)
        rows.append(row)
        progress.info(f"plan: {o.label}: " + ("meets the floor nowhere in range" if v is None else
                      f"{v:.4f} V/Vmin, ES {row['energy_saving']:+.3f}, "
                      + ("certified" if row["certified"] else "NOT certified")
                      + f" ({row['certificate']['failures']} of {row['certificate']['chips_measured']} fresh chips "
                        "below the floor)"))
    fixed = [_fixed(sim, [o for o in options if not o.nominal_only], v, confirm, floor, k_c, n_test, input_shape, b,
                    generators) for v in cfg.voltages]
    floors = [ca - d for d in range(cfg.curve_drop + 1)]
    curve = _curve(sim, options, floors, shift, lo, hi, table, energy, b) if cfg.curve else None
    sim.bar.close()
    certified, feasible = [r for r in rows if r["certified"]], [r for r in rows if r["feasible"]]
    best = max(certified, key=lambda r: r["energy_saving"]) if certified else None
    searched = max(feasible, key=lambda r: r["energy_saving"]) if feasible else None
    return {
        "format": PLAN_FORMAT, "version": 2, "config": cfg.to_dict(),
        "versions": {"nfedge": __version__, "torch": torch.__version__, "numpy": np.__version__},
        "seeds": {"search_chips": chips, "confirm_chips": confirm},
        "certification": {"quantile": cfg.quantile, "confidence": cfg.confidence, "search_rank": k_s,
                          "search_confidence": rank_confidence(cfg.chips, cfg.quantile, k_s), "fresh_rank": k_c,
                          "fresh_confidence": rank_confidence(cfg.confirm_chips, cfg.quantile, k_c),
                          "failures_allowed": k_c - 1},
        "images": {"validation": split_record if validation is not None else None, "validation_images": n_val,
                   "test_images": n_test, "search_split": "validation" if validation is not None else "test",
                   "standard_error_at_floor": standard_error(floor, n_test)},
        "samples": n_test, "image_sha256": image.manifest.image_sha256, "input": input_shape, "bits": b,
        "scored_images": sim.scored_images(scored, {(images[o.bits or 0].manifest.image_sha256,
                                                     images[o.bits or 0].manifest.bits, o.inputs) for o in options}),
        "clean": {"CA": ca, "CA_validation": ca_val,
                  "CA_NF": {o.label: clean[o.label] for o in options if o.kind == "generator" and o.protection == "none"}},
        "floor": floor, "floor_validation": floor_val,
        "floor_rule": "absolute" if cfg.floor is not None else f"CA - {cfg.floor_drop}",
        "voltage_range": [lo, hi], "table_points": table, "options": rows, "fixed_voltages": fixed,
        "winner": best["option"] if best else None,  # the certified option with the largest ES (Eq. 6)
        "winner_mac": max(certified, key=lambda r: r["mac_energy_saving"])["option"] if certified else None,
        # the best ES the search found, certified or not: shown only beside the word "not certified" when it differs
        "searched_winner": searched["option"] if searched else None,
        "searched_winner_certified": searched["certified"] if searched else None,
        "curve": curve,
    }


def _fixed(sim: _Simulator, options: list[Option], v: float, confirm: list[int], floor: float, k: int, images: int,
           input_shape: str, b: int, generators: dict[str, tuple[str, nn.Module]]) -> dict[str, Any]:
    """At fixed voltage v: each option's rank-k fresh-chip accuracy on the test images (a lower confidence bound on
    its q-quantile) and its ES, ranked by that accuracy, then by ES."""
    cfg, rows = sim.cfg, []
    v = round(float(v), _DIGITS)
    for o in options:
        s = _stats(sim.values(o, "test", v, confirm), k, floor, cfg.quantile)
        e = option_energy(o, cfg.base, cfg.classes, cfg.calibration, input_shape, v, b,
                          generators[o.generator][0] if o.generator else None, cfg.vela_bundle)
        rows.append({"option": o.label, "kind": o.kind, **s, "meets_floor": s["accuracy_at_rank"] >= floor,
                     "standard_error": standard_error(s["accuracy_at_rank"], images),
                     **{key: e[key] for key in ("ber", "r", "energy_saving", "mac_energy_saving")}})
    rows, best = rank_at_voltage(rows)
    return {"voltage": v, "ber": rows[0]["ber"] if rows else None, "options": rows, "best_meeting_floor": best}


def rank_at_voltage(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
    """A fixed voltage's rows ranked by certified accuracy, then ES; and the option with the largest ES of those
    meeting the floor (None: none does)."""
    rows = sorted(rows, key=lambda r: (-r["accuracy_at_rank"], -r["energy_saving"]))
    meeting = [r for r in rows if r["meets_floor"]]
    return rows, max(meeting, key=lambda r: r["energy_saving"])["option"] if meeting else None
