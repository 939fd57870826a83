"""`nfedge plan`: how low the weight SRAM can go while an accuracy floor holds on nearly every chip, and the net
energy saving there: the base model alone (raise the voltage), behind SECDED ECC, and behind each generator.

What is measured. A_o(v, c) is option o's host-simulated test accuracy (analysis.evaluate.ImageScorer, the
number `nfedge evaluate` reports) on chip c at voltage v, over the search chips 0..K-1. Q_o(v) is the k-th lowest
of the K values, k = ceil(q K) (q = 0.05: the worst of 20 chips, the 5th worst of 100), and v meets the floor when
Q_o(v) >= floor (default: the base model's clean accuracy CA minus 2 points).

The search. A chip's faults only grow as the voltage falls (nfedge.sram.faults nests them), so Q_o falls with v in
the large, but not strictly: one more fault can fix a prediction. The search assumes only that the voltages meeting
the floor form one interval [v*, v_max] at the resolution it probes: (1) it scans the calibration table's points
inside the range (and the range's ends) from the top down and stops at the first that fails, so a lucky point
below a failing one never counts; (2) it bisects the interpolated voltage axis between that point and the last
that met, down to `tolerance` V/Vmin. The answer was measured to meet the floor, and a voltage at most `tolerance`
below it was measured to fail; where accuracy wiggles inside the bracket, bisection finds one crossing, not
necessarily the lowest. The voltage is chosen on chips 0..K-1, so it is re-measured on fresh chips K..K+C-1
("confirm"); both use the same test images (DESIGN "Operating points": pick on a validation split to remove that).

Energy (nfedge.analysis.energy.estimate_energy at the voltage found, r = e(v) / e(nominal)):
  base alone         ES = 1 - r                         MAC-ES = 1 - r
  base + generator   ES = 1 - r - TWMA_G / TWMA_base    MAC-ES = 1 - r - MACs_G / MACs_base   (Eq. 6, Eq. 7)
  base + SECDED      ES = 1 - (72/64) r                 MAC-ES = 1 - (72/64) r
The ECC line is Eq. 6 with the base model's accesses scaled by 72/64 at the low voltage: one access reads a 64-bit
word (8 weights of 8 bits) and its 8 check bits, so against the unprotected base model at nominal voltage the
saving is (TWMA_base - (72/64) r TWMA_base) / TWMA_base. Encoder/decoder logic and the extra SRAM area are not
counted. ECC costs 12.5% at nominal voltage and pays only where r < 64/72 (below about 0.943 V/Vmin in sram-14nm).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from nfedge import __version__
from nfedge.analysis.energy import EnergyConfig, energy_saving, estimate_energy, mac_energy_saving
from nfedge.analysis.evaluate import ImageScorer
from nfedge.config import StageConfig, require
from nfedge.progress import DEFAULT, Progress
from nfedge.sram.calibration import load_calibration
from nfedge.sram.ecc import CELL_OVERHEAD, UNCORRECTABLE_POLICIES, inject_ecc_faults
from nfedge.sram.faults import InjectConfig, inject_faults
from nfedge.sram.image import WeightImage

PLAN_FORMAT = "nfedge-plan"
BASE, ECC = "base", "base+ECC"  # option labels; generators are labelled by their names
MIN_CHIPS = 5
_DIGITS = 9  # voltages are rounded to 1e-9 V/Vmin: cache keys, and the exact value handed to inject_faults


@dataclasses.dataclass(frozen=True)
class PlanConfig(StageConfig):
    base: str = "cnn-s"  # for the energy count, as `nfedge energy --base`: a registered model or a checkpoint (.pt)
    classes: int = 10
    floor: float | None = None  # accuracy floor in % (absolute); None: the base's CA minus floor_drop
    floor_drop: float = 2.0  # points below CA
    quantile: float = 0.05  # the chip quantile that must meet the floor (0.05: the 5th-percentile chip)
    chips: int = 20  # search chips 0..chips-1
    confirm_chips: int = 20  # fresh chips chips..chips+confirm_chips-1, re-measured at the voltage found (0: none)
    fault: str = "flip"  # flip | stuck-at
    stuck_at_one: float = 0.5
    calibration: str = "sram-14nm"
    v_min: float | None = None  # search range in V/Vmin; None: the table's lowest (highest) voltage
    v_max: float | None = None
    tolerance: float = 0.001  # bisection stops at a bracket this narrow (V/Vmin: 1 mV at Vmin = 1 V)
    ecc: bool = True  # plan the base model behind SECDED (72,64) too
    ecc_uncorrectable: str = "zero"  # a detected-uncorrectable word is zeroed, or kept as read
    curve: bool = False  # also the achievable ES against the floor (for the plot)
    curve_step: float = 0.005  # the curve's voltage grid (V/Vmin)
    curve_drop: int = 20  # the curve's floors: CA, CA - 1, ..., CA - curve_drop
    batch_size: int = 256

    def validate(self) -> None:
        EnergyConfig(base=self.base, generator=None, classes=self.classes)  # the same checks as `nfedge energy`
        if self.floor is not None:
            require(_number(self.floor) and 0.0 <= self.floor <= 100.0, f"floor must be an accuracy in % (0..100), got {self.floor!r}")
        require(_number(self.floor_drop) and 0.0 <= self.floor_drop <= 100.0,
                f"floor_drop must be 0..100 points below CA, got {self.floor_drop!r}")
        require(_number(self.quantile) and 0.0 < self.quantile < 1.0, f"quantile must be in (0, 1), got {self.quantile!r}")
        require(_integer(self.chips) and self.chips >= MIN_CHIPS,
                f"chips must be an integer >= {MIN_CHIPS} (a quantile over fewer chips says little), got {self.chips!r}")
        require(_integer(self.confirm_chips) and self.confirm_chips >= 0, f"confirm_chips must be >= 0, got {self.confirm_chips!r}")
        require(self.fault in ("flip", "stuck-at"), f"plan takes fault flip or stuck-at, got {self.fault!r}")
        require(0.0 <= self.stuck_at_one <= 1.0, f"stuck_at_one must be in [0, 1], got {self.stuck_at_one}")
        require(_number(self.tolerance) and self.tolerance > 0, f"tolerance must be positive (V/Vmin), got {self.tolerance!r}")
        require(self.ecc_uncorrectable in UNCORRECTABLE_POLICIES,
                f"ecc_uncorrectable must be one of {', '.join(UNCORRECTABLE_POLICIES)}, got {self.ecc_uncorrectable!r}")
        require(_number(self.curve_step) and self.curve_step > 0, f"curve_step must be positive, got {self.curve_step!r}")
        require(_integer(self.curve_drop) and 0 <= self.curve_drop <= 100, f"curve_drop must be 0..100, got {self.curve_drop!r}")
        require(_integer(self.batch_size) and self.batch_size >= 1, "batch_size must be >= 1")
        self.voltage_range()

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


def quantile_rank(q: float, k: int) -> int:
    """1-based rank of the q-quantile among k sorted values: the k-th lowest, k = ceil(q K) (at least 1)."""
    return max(1, math.ceil(q * k - 1e-9))


def chip_quantile(values: list[float], q: float) -> float:
    return float(sorted(values)[quantile_rank(q, len(values)) - 1])


@dataclasses.dataclass
class _Option:
    label: str
    kind: str  # base | ecc | generator
    generator: str | None  # registered generator name (energy count)
    inputs: str | None  # the scorer's inputs the base model sees: None for x, the label for F(x) behind the generator
    acc: dict[tuple[float, int], float] = dataclasses.field(default_factory=dict)  # (voltage, chip) -> %
    audits: dict[tuple[float, int], dict[str, Any]] = dataclasses.field(default_factory=dict)  # ECC only


class _Simulator:
    """Accuracies per (option, voltage, chip), each measured once. Scoring is evaluate's ImageScorer: plain options
    share one faulty image per chip, and an image is scored once per distinct content, so at a high voltage the
    chips without a faulty cell (and ECC images decoded back to the clean bytes) cost nothing."""

    def __init__(self, score: ImageScorer, image: WeightImage, cfg: PlanConfig, progress: Progress):
        self.score, self.image, self.cfg = score, image, cfg
        self.bar = progress.manual("plan", unit="chip")

    def measure(self, options: list[_Option], v: float, chips: list[int]) -> None:
        cfg = self.cfg
        for chip in chips:
            need = [o for o in options if (v, chip) not in o.acc]
            if not need:
                continue
            icfg = InjectConfig(fault=cfg.fault, voltage=v, chip=chip, stuck_at_one=cfg.stuck_at_one,
                                calibration=cfg.calibration)  # the config nfedge evaluate builds: the same bytes
            plain = [o for o in need if o.kind != "ecc"]
            if plain:
                faulty, _ = inject_faults(self.image, icfg)
                for o in plain:
                    o.acc[(v, chip)] = self.score.accuracy(faulty, o.inputs)
            for o in need:
                if o.kind == "ecc":
                    decoded, audit = inject_ecc_faults(self.image, icfg, cfg.ecc_uncorrectable)
                    o.acc[(v, chip)] = self.score.accuracy(decoded, o.inputs)
                    o.audits[(v, chip)] = audit.to_dict()
            self.bar.update(1)

    def quantile(self, o: _Option, v: float, chips: list[int]) -> float:
        self.measure([o], v, chips)
        return chip_quantile([o.acc[(v, c)] for c in chips], self.cfg.quantile)

    def meets(self, o: _Option, v: float, chips: list[int], floor: float) -> bool:
        """quantile(o, v, chips) >= floor, measuring only the chips that decide it: the k-th lowest of K values
        misses the floor iff k of them do, so measuring stops at the k-th chip below the floor. The chips worst at
        the nearest voltage measured above go first (faults nest: they are the likeliest to miss). A voltage that
        meets the floor has every chip measured."""
        def prior(c: int) -> float:  # the chip's accuracy at the nearest voltage above v where it was measured
            us = [u for u, cc in o.acc if cc == c and u > v]
            return o.acc[(min(us), c)] if us else math.inf

        k = quantile_rank(self.cfg.quantile, len(chips))
        below = 0
        for c in sorted(chips, key=prior):
            self.measure([o], v, [c])
            below += o.acc[(v, c)] < floor
            if below >= k:
                return False
        return True


def search_voltage(sim: _Simulator, o: _Option, floor: float, points: list[float], tol: float,
                   chips: list[int]) -> dict[str, Any]:
    """The lowest voltage meeting `floor` (coarse scan of `points`, highest first, then bisection; module doc)."""
    def meets(v: float) -> bool:
        return sim.meets(o, v, chips, floor)

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


def _energy(cfg: PlanConfig, o: _Option, input_shape: str, v: float) -> dict[str, Any]:
    """`nfedge energy` at voltage v for this option; ECC scales the base model's accesses by 72/64 (module doc)."""
    e = estimate_energy(EnergyConfig(base=cfg.base, generator=o.generator, input=input_shape, classes=cfg.classes,
                                     voltage=v, calibration=cfg.calibration))
    out = {k: e[k] for k in ("ber", "r", "energy_saving", "mac_energy_saving", "base_weight_accesses",
                             "generator_weight_accesses", "base_macs", "generator_macs")}
    if o.kind == "ecc":
        out["energy_saving"] = energy_saving(0, e["base_weight_accesses"], CELL_OVERHEAD * e["r"])
        out["mac_energy_saving"] = mac_energy_saving(0, e["base_macs"], CELL_OVERHEAD * e["r"])
        out["ecc_access_factor"] = CELL_OVERHEAD
    return out


def _stats(values: list[float], q: float, floor: float) -> dict[str, Any]:
    a = np.asarray(values, dtype=float)
    return {"quantile": chip_quantile(values, q), "mean": float(a.mean()), "std": float(a.std()),
            "worst": float(a.min()), "per_chip": [float(v) for v in a], "chips": len(values),
            "quantile_rank": quantile_rank(q, len(values)), "chips_meeting_floor": int((a >= floor).sum())}


def _option_result(sim: _Simulator, o: _Option, found: dict[str, Any], floor: float, clean: float, input_shape: str,
                   chips: list[int], confirm: list[int]) -> dict[str, Any]:
    cfg, v = sim.cfg, found["voltage"]
    row: dict[str, Any] = {"option": o.label, "kind": o.kind, "generator": o.generator, "clean_accuracy": clean,
                           "feasible": v is not None, **found}
    if v is None:
        row.update(ber=None, r=None, energy_saving=None, mac_energy_saving=None, accuracy=None, confirm=None)
    else:
        row.update(_energy(cfg, o, input_shape, v))
        row["accuracy"] = _stats([o.acc[(v, c)] for c in chips], cfg.quantile, floor)
        if confirm:
            sim.measure([o], v, confirm)
            s = _stats([o.acc[(v, c)] for c in confirm], cfg.quantile, floor)
            row["confirm"] = {**s, "chip_seeds": confirm, "meets_floor": s["quantile"] >= floor}
        else:
            row["confirm"] = None
        if o.kind == "ecc":
            audits = [o.audits[(v, c)] for c in chips]
            row["ecc"] = {"words": audits[0]["words"], "cells": audits[0]["cells"], "uncorrectable": cfg.ecc_uncorrectable,
                          **{f"mean_{k}": float(np.mean([a[k] for a in audits]))
                             for k in ("faulty_cells", "error_words", "corrected_words", "detected_words", "silent_words")}}
    row["trace"] = []  # every voltage searched; where it missed the floor, the chips measured until it was clear
    for u in sorted({u for u, c in o.acc if c in chips}, reverse=True):
        got = [o.acc[(u, c)] for c in chips if (u, c) in o.acc]
        t: dict[str, Any] = {"voltage": u, "chips_measured": len(got), "chips_below_floor": sum(a < floor for a in got)}
        if len(got) == len(chips):
            t.update(quantile=chip_quantile(got, cfg.quantile), mean=float(np.mean(got)))
        row["trace"].append({**t, "meets_floor": t["chips_below_floor"] < quantile_rank(cfg.quantile, len(chips))})
    return row


def _curve(sim: _Simulator, options: list[_Option], ca: float, lo: float, hi: float, table: list[float],
           input_shape: str, chips: list[int]) -> dict[str, Any]:
    """Achievable ES against the floor: for floors CA, CA - 1, ..., CA - curve_drop, the lowest voltage of a grid
    (curve_step apart, plus the table's points) down to which every grid voltage meets the floor."""
    cfg = sim.cfg
    floors = [ca - d for d in range(cfg.curve_drop + 1)]
    n = math.floor((hi - lo) / cfg.curve_step + 1e-9)
    grid = sorted({round(hi - i * cfg.curve_step, _DIGITS) for i in range(n + 1)} | {lo, *table}, reverse=True)
    cal = load_calibration(cfg.calibration)
    out: dict[str, Any] = {"floors": floors, "grid_step": cfg.curve_step, "options": {}}
    for o in options:
        qs = []
        for v in grid:  # highest first; below the first miss of the lowest floor nothing can count
            if not sim.meets(o, v, chips, floors[-1]):  # every floor missed: the chips that decide it suffice
                qs.append(-math.inf)
                break
            qs.append(sim.quantile(o, v, chips))
        counts = _energy(cfg, o, input_shape, hi)
        factor = CELL_OVERHEAD if o.kind == "ecc" else 1.0
        gw, gm = counts["generator_weight_accesses"] or 0, counts["generator_macs"] or 0
        volts, es, mes = [], [], []
        for f in floors:
            i = next((j for j, q in enumerate(qs) if q < f), len(qs))  # the first grid voltage that misses f
            v = grid[i - 1] if i > 0 else None
            r = factor * cal.energy_at(v) if v is not None else None
            volts.append(v)
            es.append(energy_saving(gw, counts["base_weight_accesses"], r) if r is not None else None)
            mes.append(mac_energy_saving(gm, counts["base_macs"], r) if r is not None else None)
        out["options"][o.label] = {"voltage": volts, "energy_saving": es, "mac_energy_saving": mes}
    return out


def plan_operating_points(model: nn.Module, image: WeightImage, test: tuple[torch.Tensor, torch.Tensor], cfg: PlanConfig,
                          generators: dict[str, tuple[str, nn.Module]] | None = None,
                          progress: Progress = DEFAULT, score: ImageScorer | None = None) -> dict[str, Any]:
    """The operating point of each option (base, base+ECC, base behind each generator) at cfg's floor and quantile.

    `generators` maps a label to (registered generator name, module). Accuracies in %, energy savings as fractions;
    the winner is the feasible option with the largest ES (Eq. 6), winner_mac the largest MAC-ES (Eq. 7). `score`
    shares one ImageScorer (its scores, by image content) between plans of the same model, test set and generators
    (other floors or fault models); by default each plan makes its own.
    """
    generators = generators or {}
    lo, hi = cfg.voltage_range()
    x = test[0]
    options = [_Option(BASE, "base", None, None)] + ([_Option(ECC, "ecc", None, None)] if cfg.ecc else [])
    for label, (arch, _) in generators.items():
        require(label not in (BASE, ECC), f"a generator cannot be labelled {label!r} (an option's name)")
        options.append(_Option(label, "generator", arch, label))
    if score is None:
        score = ImageScorer(model, test, {label: g for label, (_, g) in generators.items()}, cfg.batch_size)
    require(score.y is test[1] and set(score.inputs) == {None, *generators}, "a shared scorer must be made from this "
            "plan's test set and generators")
    scored = len(score)
    # An ECC-decoded clean image is the clean image: its clean accuracy is CA.
    clean = {o.label: score.accuracy(image, o.inputs) for o in options}
    ca = clean[BASE]
    floor = float(cfg.floor) if cfg.floor is not None else ca - cfg.floor_drop
    require(floor <= ca, f"accuracy floor {floor:.2f}% is above the base model's clean accuracy (CA {ca:.2f}%): "
                         "no voltage can meet it")
    chips = list(range(cfg.chips))
    confirm = list(range(cfg.chips, cfg.chips + cfg.confirm_chips))
    cal = load_calibration(cfg.calibration)
    table = [round(float(v), _DIGITS) for v in cal.voltage if lo <= v <= hi]
    points = sorted({lo, hi, *table}, reverse=True)
    input_shape = "x".join(str(d) for d in x.shape[1:])
    progress.info(f"plan: floor {floor:.2f}% (CA {ca:.2f}), chip quantile {cfg.quantile} = rank "
                  f"{quantile_rank(cfg.quantile, cfg.chips)} of {cfg.chips}; search chip seeds 0..{cfg.chips - 1}"
                  + (f", confirm chip seeds {confirm[0]}..{confirm[-1]}" if confirm else "")
                  + f"; voltages {lo}..{hi} V/Vmin, tolerance {cfg.tolerance}")
    sim = _Simulator(score, image, cfg, progress)
    sim.measure(options, points[0], chips)  # the top of the range for every option from one faulty image per chip
    rows = []
    for o in options:
        found = search_voltage(sim, o, floor, points, cfg.tolerance, chips)
        rows.append(_option_result(sim, o, found, floor, clean[o.label], input_shape, chips, confirm))
        progress.info(f"plan: {o.label}: " + (f"{found['voltage']:.4f} V/Vmin, ES {rows[-1]['energy_saving']:+.3f}"
                                               if found["voltage"] is not None else "meets the floor nowhere in range"))
    curve = _curve(sim, options, ca, lo, hi, table, input_shape, chips) if cfg.curve else None
    sim.bar.close()
    feasible = [r for r in rows if r["feasible"]]
    winner = max(feasible, key=lambda r: r["energy_saving"]) if feasible else None
    return {
        "format": PLAN_FORMAT, "version": 1, "config": cfg.to_dict(),
        "versions": {"nfedge": __version__, "torch": torch.__version__, "numpy": np.__version__},
        "seeds": {"search_chips": chips, "confirm_chips": confirm},
        "samples": len(x), "scored_images": len(score) - scored, "image_sha256": image.manifest.image_sha256, "input": input_shape,
        "clean": {"CA": ca, "CA_NF": {o.label: clean[o.label] for o in options if o.kind == "generator"}},
        "floor": floor, "floor_rule": "absolute" if cfg.floor is not None else f"CA - {cfg.floor_drop}",
        "voltage_range": [lo, hi], "table_points": table,
        "options": rows,
        "winner": winner["option"] if winner else None,
        # whether the winner's voltage still meets the floor on the fresh chips (None: no winner or no fresh chips)
        "winner_confirmed": winner["confirm"]["meets_floor"] if winner and winner["confirm"] else None,
        "winner_mac": max(feasible, key=lambda r: r["mac_energy_saving"])["option"] if feasible else None,
        "curve": curve,
    }


def plan_markdown(result: dict[str, Any]) -> str:
    """The plan as a Markdown table (savings in %, accuracies in %)."""
    cfg = result["config"]
    lines = [(f"Floor {result['floor']:.2f}% ({result['floor_rule']}, CA {result['clean']['CA']:.2f}%), chip quantile "
              f"{cfg['quantile']} over {cfg['chips']} chips, fault {cfg['fault']}, {result['samples']} test images, "
              f"voltages {result['voltage_range'][0]}..{result['voltage_range'][1]} V/Vmin ({cfg['calibration']})"), "",
             ("| option | V/Vmin | BER | ES (Eq. 6) | MAC-ES (Eq. 7) | acc @ quantile (rank/chips) | mean acc | "
              "chips >= floor | fresh chips: acc @ q / mean |"), "|---|---|---|---|---|---|---|---|---|"]
    for r in result["options"]:
        if not r["feasible"]:
            lines.append(f"| {r['option']} | - | - | - | - | misses the floor at {result['voltage_range'][1]} V/Vmin "
                         f"(clean {r['clean_accuracy']:.2f}) | - | - | - |")
            continue
        a, c = r["accuracy"], r["confirm"]
        v = f"{r['voltage']:.4f}" + (" (range bottom)" if r["limited_by_range"] else "")
        fresh = f"{c['quantile']:.2f} / {c['mean']:.2f}" + ("" if c["meets_floor"] else " (below floor)") if c else "-"
        lines.append(f"| {r['option']} | {v} | {r['ber']:.3g} | {100 * r['energy_saving']:.1f}% | "
                     f"{100 * r['mac_energy_saving']:.1f}% | {a['quantile']:.2f} ({a['quantile_rank']}/{a['chips']}) | "
                     f"{a['mean']:.2f} | {a['chips_meeting_floor']}/{a['chips']} | {fresh} |")
    lines += ["", f"Winner (ES, Eq. 6): {result['winner'] or 'none'}; by MAC-ES (Eq. 7): {result['winner_mac'] or 'none'}"]
    if result.get("winner_confirmed") is False:
        lines.append("The winner misses the floor on the fresh chips: the search chips were lucky; plan with more chips.")
    return "\n".join(lines)
