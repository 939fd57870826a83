"""Benchmark: where the plan stage's time goes, on a run's trained models (the main job's by default).

Runs `plan_operating_points` once with the plan stage's RunPlanConfig (or --options-off to leave protections out) on
--images test images, and splits the wall time into forward passes (ImageScorer.accuracy calls that scored a new
image), fault sampling and decoding (Option.inject), and the rest (dedupe hits, bookkeeping, energy counts). With
--old it first runs the previous planner (`git show <commit>:nfedge/analysis/plan.py`, 20 + 20 chips, worst of 20)
on the same models and images, side by side in this process.

    .venv/bin/python bench/bench_plan.py [--run runs/default] [--images 1000] [--chips 59] [--old 8f9fa90]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from nfedge.analysis import options as options_mod
from nfedge.analysis.evaluate import ImageScorer
from nfedge.analysis.plan import plan_operating_points
from nfedge.data import DataConfig, load_dataset
from nfedge.progress import QUIET
from nfedge.sram.image import read_image
from nfedge.stages import RunPlanConfig
from nfedge.train.checkpoint import load_checkpoint
from nfedge.train.eopm import load_generator


class Timer:
    def __init__(self) -> None:
        self.forward = self.inject = 0.0
        self.passes = 0


def _instrument(t: Timer) -> None:
    acc, inj = ImageScorer.accuracy, options_mod.Option.inject

    def accuracy(self, image, name):
        n = len(self._cache)
        s = time.perf_counter()
        out = acc(self, image, name)
        if len(self._cache) > n:
            t.forward += time.perf_counter() - s
            t.passes += 1
        return out

    def inject(self, *a, **k):
        s = time.perf_counter()
        out = inj(self, *a, **k)
        t.inject += time.perf_counter() - s
        return out

    ImageScorer.accuracy, options_mod.Option.inject = accuracy, inject


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="runs/default")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--chips", type=int, default=59)
    ap.add_argument("--old", default=None, help="a commit whose nfedge/analysis/plan.py to time first (20 + 20 chips)")
    a = ap.parse_args()
    # stages.json read directly: a run made before the plan stage's config version 2 still has usable models
    record = json.loads((Path(a.run) / "stages.json").read_text())
    stage = {s["variant"] or s["stage"]: Path(a.run) / s["dir"] for s in record["stages"]}
    rc = record["config"]
    model, meta = load_checkpoint(stage["base"] / "base.pt")
    image = read_image(stage["image"] / "image")
    gens = {g: (g, load_generator(stage[g] / "generator.pt")[0]) for g in rc["generators"]}
    _, test, _ = load_dataset(DataConfig.from_dict({**rc["base"]["data"], "test_limit": a.images}))
    xy = test.tensors
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(xy[0])} test images")
    if a.old:
        src = subprocess.run(["git", "show", f"{a.old}:nfedge/analysis/plan.py"], capture_output=True, text=True,
                             check=True).stdout
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "plan_old.py"
            p.write_text(src)
            spec = importlib.util.spec_from_file_location("plan_old", p)
            old = importlib.util.module_from_spec(spec)
            sys.modules["plan_old"] = old
            spec.loader.exec_module(old)
            s = time.perf_counter()
            r = old.plan_operating_points(model, image, xy, old.PlanConfig(chips=20, confirm_chips=20, curve=True,
                                                                           curve_step=0.01), generators=gens,
                                          progress=QUIET)
            print(f"old planner ({a.old}, 20 + 20 chips, 5 options, curve 0.01): {time.perf_counter() - s:.1f} s, "
                  f"{r['scored_images']} forward passes")
    t = Timer()
    _instrument(t)
    pcfg = RunPlanConfig(chips=a.chips, confirm_chips=a.chips).planner(base=rc["base"]["model"], fault=rc["fault"])
    s = time.perf_counter()
    r = plan_operating_points(model, image, xy, pcfg, generators=gens, progress=QUIET)
    total = time.perf_counter() - s
    print(f"new planner ({a.chips} + {a.chips} chips, {len(r['options'])} options, fixed {pcfg.voltages}, curve "
          f"{pcfg.curve_step} over {pcfg.curve_chips} chips): {total:.1f} s")
    print(f"  forward passes: {t.passes} in {t.forward:.1f} s ({1e3 * t.forward / max(t.passes, 1):.0f} ms each)")
    print(f"  fault sampling + decoding: {t.inject:.1f} s; the rest (dedupe, energy, bookkeeping): "
          f"{total - t.forward - t.inject:.1f} s")
    for o in r["options"]:
        print(f"  {o['option']}: {o['voltage']} certified={o['certified']} ES={o['energy_saving']}")
    print(f"  winner {r['winner']}, searched winner {r['searched_winner']}")


if __name__ == "__main__":
    main()
