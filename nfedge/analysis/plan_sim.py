"""The planner's accuracy table A_o(v, c) (nfedge.analysis.plan), measured on demand, in this process or on an
executor (nfedge.executor, docs/SWEEPS.md).

The search asks for one chip at a time (it stops at the k-th miss), so an executor would idle. With one, the table
measures ahead: the chips the search will ask for next are scored together, one task per chip, and kept aside. A cell
enters the table only when the search asks for it, in the order it asks, so the plan (its trace, its counts, its
audits) is the one the in-process search computes; what was measured ahead and never asked for only cost time (at
most workers - 1 cells per voltage where the search stopped early).
"""

from __future__ import annotations

import math
from typing import Any

from nfedge.analysis.evaluate import ImageScorer
from nfedge.analysis.options import Option
from nfedge.analysis.sweep_work import ScoringWork, build_context, plan_cell, portable_calibration
from nfedge.executor import Executor
from nfedge.progress import Progress
from nfedge.sram.faults import InjectConfig
from nfedge.sram.image import WeightImage

Cell = tuple[str, str, float, int]  # (option label, split, voltage, chip)


class Simulator:
    """Accuracies per (option, split, voltage, chip), each measured once. Options reading the same layout (the base
    model and its generators) share one faulty image per chip; the scorers score an image once per distinct content,
    so chips without a faulty cell (and decoded images equal to the clean one) cost nothing."""

    def __init__(self, scores: dict[str, ImageScorer], images: dict[int, WeightImage], cfg, progress: Progress,
                 executor: Executor | None = None, model=None, splits=None, generators=None):
        self.scores, self.images, self.cfg = scores, images, cfg
        self.acc: dict[Cell, float] = {}
        self.audits: dict[tuple[str, float, int], dict[str, Any]] = {}
        self.keys: dict[Cell, tuple] = {}  # executor: the image each asked-for cell scored (sha256, bits, inputs)
        self.ahead: dict[Cell, tuple[float, tuple, dict[str, Any] | None]] = {}  # executor: measured, not yet asked
        self.executor = None if executor is None or executor.inline else executor
        self.shared = None
        if self.executor is not None:
            work = ScoringWork(ImageScorer, model, splits, generators, cfg.batch_size, images, cfg.calibration,
                               portable_calibration(cfg.calibration))
            self.shared = self.executor.share(work, build_context)
        self.bar = progress.manual("plan", unit="chip")

    def get(self, o: Option, split: str, v: float, chip: int) -> float | None:
        return self.acc.get((o.label, split, v, chip))

    def measure(self, options: list[Option], split: str, v: float, chips: list[int], ahead: list[int] = ()) -> None:
        """Every option's accuracy on `chips`; with an executor, also (aside) on the first of `ahead`, the chips the
        caller will likely ask for next."""
        cfg = self.cfg
        for i, chip in enumerate(chips):
            need = [o for o in options if (o.label, split, v, chip) not in self.acc]
            if not need:
                continue
            if self.executor is not None:
                if any((o.label, split, v, chip) not in self.ahead for o in need):
                    self._fetch(options, split, v, list(chips[i:]), list(ahead))
                for o in need:
                    cell = (o.label, split, v, chip)
                    self.acc[cell], self.keys[cell], audit = self.ahead.pop(cell)
                    if audit is not None:
                        self.audits[(o.label, v, chip)] = audit
                self.bar.update(1)
                continue
            icfg = InjectConfig(fault=cfg.fault, voltage=v, chip=chip, stuck_at_one=cfg.stuck_at_one,
                                calibration=cfg.calibration)  # the config nfedge evaluate builds: the same bytes
            made: dict[tuple, tuple[WeightImage, dict[str, Any] | None]] = {}
            for o in need:
                if o.image_key() not in made:
                    made[o.image_key()] = o.inject(self.images, icfg, cfg.ecc_uncorrectable)
                img, audit = made[o.image_key()]
                self.acc[(o.label, split, v, chip)] = self.scores[split].accuracy(img, o.inputs)
                if audit is not None:
                    self.audits[(o.label, v, chip)] = audit
            self.bar.update(1)

    def _fetch(self, options: list[Option], split: str, v: float, chips: list[int], ahead: list[int]) -> None:
        """One task per chip: every chip of `chips` still missing, then chips of `ahead` until every worker has one."""
        def missing(c: int) -> tuple[Option, ...]:
            return tuple(o for o in options if (o.label, split, v, c) not in self.acc
                         and (o.label, split, v, c) not in self.ahead)

        settings = (self.cfg.fault, self.cfg.stuck_at_one, self.cfg.ecc_uncorrectable)
        batch = [(split, v, c, m, settings) for c in chips if (m := missing(c))]
        for c in ahead:
            if len(batch) >= self.executor.workers:
                break
            if c not in chips and (m := missing(c)):
                batch.append((split, v, c, m, settings))
        for (_, _, c, opts, _), res in zip(batch, self.executor.map(plan_cell, self.shared, batch)):
            for o, r in zip(opts, res):
                self.ahead[(o.label, split, v, c)] = r

    def values(self, o: Option, split: str, v: float, chips: list[int], ahead: list[int] = ()) -> list[float]:
        self.measure([o], split, v, chips, ahead)
        return [self.acc[(o.label, split, v, c)] for c in chips]

    def meets(self, o: Option, split: str, v: float, chips: list[int], floor: float, k: int) -> bool:
        """The k-th lowest of the chips' accuracies >= floor, measuring only the chips that decide it: it misses iff k
        chips miss, so measuring stops at the k-th miss. The chips worst at the nearest voltage measured above go
        first (faults nest: they are the likeliest to miss). A voltage that meets the floor has every chip measured."""
        def prior(c: int) -> float:
            us = [u for (lab, s, u, cc) in self.acc if lab == o.label and s == split and cc == c and u > v]
            return self.acc[(o.label, split, min(us), c)] if us else math.inf

        below = 0
        order = sorted(chips, key=prior)
        for j, c in enumerate(order):
            self.measure([o], split, v, [c], order[j + 1:])
            below += self.acc[(o.label, split, v, c)] < floor
            if below >= k:
                return False
        return True

    def scored_images(self, before: int, clean: set[tuple]) -> int:
        """Forward passes over an image set this plan made: (image content, inputs) pairs first scored, per image
        set. In-process: what the scorers' caches grew by since `before`. With an executor: the distinct pairs of the
        asked-for cells and of the clean images (`clean`), as fresh scorers would count them."""
        test, val = self.scores["test"], self.scores["val"]
        if self.executor is None:
            return len(test) + (len(val) if val is not test else 0) - before
        keys = {s: {k for (_, split, _, _), k in self.keys.items() if split == s} for s in ("test", "val")}
        if val is test:
            return len(clean | keys["test"] | keys["val"])
        return len(clean | keys["test"]) + len(clean | keys["val"])
