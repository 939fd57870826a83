"""Benchmark: the plan's host scorer, old code against this tree's, on the same plan, side by side in one run.

The old side runs this tree with the scorer files (nfedge/analysis/scoring.py, nfedge/analysis/evaluate.py) taken
from --old <commit> (read from a temporary `git worktree add` under /tmp, removed afterwards), so both sides run
the same planner and differ only in the scorer. Each side is a child process (the two packages share one name);
the sides alternate, the order swapped each round, or with --concurrent run at the same time, so that both see the
same load (the machine is shared: only ratios measured side by side count).
Two measurements per side:
  passes  --passes distinct faulty images of the base model (chips 0.. at 0.9 V/Vmin) scored on --images test
          images: seconds per forward pass (ImageScorer.accuracy on an image it has not seen)
  plan    `plan_operating_points` with the plan stage's RunPlanConfig defaults (nfedge.stages; --chips overrides
          the 59 + 59 chips) on --images test images, the search on those images too (no validation split)
The script checks that both sides report the same accuracies (every per-chip number of every option, trace,
certificate, fixed voltage and curve) before it prints a ratio.

    .venv/bin/python bench/bench_scorer.py --old HEAD [--models runs/default] [--images 1000] [--passes 12]
        [--chips 59] [--rounds 1] [--threads 1] [--no-plan] [--concurrent]
--models: a run folder (its stages.json names the stages) or a folder holding base-*/base.pt, image-*/image and
gen-<G>-*/generator.pt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCORER_FILES = ("nfedge/analysis/scoring.py", "nfedge/analysis/evaluate.py")
ROOT = Path(__file__).resolve().parents[1]


def _stages(models: Path) -> tuple[Path, Path, dict[str, Path]]:
    """(base.pt, image folder, {generator: generator.pt})."""
    rec = models / "stages.json"
    if rec.exists():
        st = json.loads(rec.read_text())["stages"]
        d = {s["variant"] or s["stage"]: models / s["dir"] for s in st}
        gens = {s["variant"]: models / s["dir"] / "generator.pt" for s in st if s["stage"] == "gen"}
        return d["base"] / "base.pt", d["image"] / "image", gens
    one = lambda pat: sorted(models.glob(pat))[0]  # noqa: E731
    gens = {p.parent.name.split("-")[1]: p for p in sorted(models.glob("gen-*/generator.pt"))}
    return one("base-*/base.pt"), one("image-*/image"), gens


def child(a: argparse.Namespace) -> None:
    import torch

    from nfedge.analysis.evaluate import ImageScorer
    from nfedge.analysis.plan import plan_operating_points
    from nfedge.data import DataConfig, load_dataset
    from nfedge.progress import QUIET
    from nfedge.sram.faults import InjectConfig, inject_faults
    from nfedge.sram.image import read_image
    from nfedge.stages import RunPlanConfig
    from nfedge.train.checkpoint import load_checkpoint
    from nfedge.train.eopm import load_generator

    torch.set_num_threads(a.threads)
    base, image_dir, gen_paths = _stages(Path(a.models))
    model, _ = load_checkpoint(base)
    image = read_image(image_dir)
    gens = {g: (g, load_generator(p)[0]) for g, p in gen_paths.items()}
    _, test, _ = load_dataset(DataConfig(dataset=a.dataset, pad_to_32=True, test_limit=a.images))
    xy = test.tensors
    out: dict = {"nfedge_file": sys.modules["nfedge"].__file__}
    score = ImageScorer(model, xy, {}, 256)
    score.accuracy(image, None)  # warm-up: one-off kernel selection and allocations
    faulty = [inject_faults(image, InjectConfig(voltage=0.9, chip=c))[0] for c in range(a.passes)]
    s = time.perf_counter()
    acc = [score.accuracy(f, None) for f in faulty]
    out["pass_seconds"] = (time.perf_counter() - s) / max(a.passes, 1)
    out["pass_accuracies"] = acc
    if a.plan:
        rc = RunPlanConfig(chips=a.chips, confirm_chips=a.chips)
        pcfg = rc.planner(base=a.base)
        s = time.perf_counter()
        r = plan_operating_points(model, image, xy, pcfg, generators=gens, progress=QUIET)
        out["plan_seconds"] = time.perf_counter() - s
        out["scored_images"] = r["scored_images"]
        keep = ("option", "voltage", "bracket", "search", "certificate", "trace", "energy_saving", "clean_accuracy")
        out["plan"] = {"options": [{k: o.get(k) for k in keep} for o in r["options"]], "fixed": r["fixed_voltages"],
                       "curve": r["curve"], "winner": r["winner"], "floor": r["floor"]}
    print(json.dumps(out))


def _overlay(commit: str, dest: Path) -> None:
    """This tree's nfedge package with the scorer files of `commit` (from a temporary git worktree)."""
    wt = Path(tempfile.mkdtemp(prefix="nfedge-old-", dir="/tmp")) / "wt"
    subprocess.run(["git", "worktree", "add", "--detach", str(wt), commit], cwd=ROOT, check=True, capture_output=True)
    try:
        shutil.copytree(ROOT / "nfedge", dest / "nfedge", ignore=shutil.ignore_patterns("__pycache__"))
        for f in SCORER_FILES:
            shutil.copy(wt / f, dest / f)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=ROOT, check=True, capture_output=True)
        shutil.rmtree(wt.parent, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", default="HEAD", help="the commit whose scorer files the old side runs")
    ap.add_argument("--models", default="runs/default")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--base", default="cnn-s", help="the registered base model (the plan's energy count)")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--passes", type=int, default=12)
    ap.add_argument("--chips", type=int, default=59)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per side (1: the clean measurement on a "
                                                            "shared 2-core machine)")
    ap.add_argument("--no-plan", dest="plan", action="store_false")
    ap.add_argument("--concurrent", action="store_true", help="run the two sides at the same time (each its threads)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a)
        return
    args = [sys.executable, str(Path(__file__).resolve()), "--child", "--models", str(Path(a.models).resolve()),
            "--dataset", a.dataset, "--base", a.base, "--images", str(a.images), "--passes", str(a.passes),
            "--chips", str(a.chips), "--threads", str(a.threads)] + ([] if a.plan else ["--no-plan"])
    with tempfile.TemporaryDirectory(prefix="nfedge-old-tree-", dir="/tmp") as d:
        _overlay(a.old, Path(d))
        paths = {"old": d, "new": str(ROOT)}
        res: dict[str, list[dict]] = {"old": [], "new": []}
        for r in range(a.rounds):
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            envs = {side: {**os.environ, "PYTHONPATH": paths[side], "OMP_WAIT_POLICY": "PASSIVE"} for side in order}
            if a.concurrent:  # both sides at once: on a machine whose load changes by the minute they share it
                procs = {side: subprocess.Popen(args, env=envs[side], cwd=ROOT, stdout=subprocess.PIPE, text=True)
                         for side in order}
                outs = {side: p.communicate()[0] for side, p in procs.items()}
                assert all(p.returncode == 0 for p in procs.values()), "a side failed"
            else:
                outs = {side: subprocess.run(args, env=envs[side], cwd=ROOT, capture_output=True, text=True,
                                             check=True).stdout for side in order}
            for side in order:
                res[side].append(json.loads(outs[side].strip().splitlines()[-1]))
                print(f"round {r}, {side}: pass {res[side][-1]['pass_seconds']:.3f} s"
                      + (f", plan {res[side][-1]['plan_seconds']:.1f} s" if a.plan else ""), flush=True)
    old, new = res["old"][0], res["new"][0]
    assert old["nfedge_file"].startswith(paths["old"]) and new["nfedge_file"].startswith(paths["new"]), \
        (old["nfedge_file"], new["nfedge_file"])
    assert old["pass_accuracies"] == new["pass_accuracies"], "the sides' accuracies differ"
    if a.plan:
        assert old["plan"] == new["plan"], "the sides' plans differ"
        assert old["scored_images"] == new["scored_images"]
    med = {s: {k: statistics.median(x[k] for x in res[s]) for k in (("pass_seconds", "plan_seconds") if a.plan
                                                                      else ("pass_seconds",))} for s in res}
    load = os.getloadavg()
    print(f"\n# scorer, old ({a.old}) vs new: {platform.machine()}, {os.cpu_count()} cores, torch threads {a.threads}, "
          f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min), {a.images} images, "
          f"median of {a.rounds} round(s); identical accuracies on both sides")
    print("| measurement | old s | new s | new / old |\n|---|---|---|---|")
    print(f"| one forward pass ({a.passes} distinct faulty images) | {med['old']['pass_seconds']:.3f} | "
          f"{med['new']['pass_seconds']:.3f} | {med['new']['pass_seconds'] / med['old']['pass_seconds']:.2f} |")
    if a.plan:
        print(f"| plan, RunPlanConfig defaults, {a.chips} + {a.chips} chips ({new['scored_images']} forward passes) | "
              f"{med['old']['plan_seconds']:.1f} | {med['new']['plan_seconds']:.1f} | "
              f"{med['new']['plan_seconds'] / med['old']['plan_seconds']:.2f} |")


if __name__ == "__main__":
    main()
