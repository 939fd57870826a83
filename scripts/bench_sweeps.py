"""Scaling of one plan over executors (docs/BENCHMARKS.md "Sweeps on Ray (issue #26)"), and the scorer's forward
throughput of a model (for the cost of a 1,000-chip certification, docs/SWEEPS.md).

    .venv/bin/python scripts/bench_sweeps.py plan --images 500 --runs inline processes:1 local:2 ray:1 ray:2
    .venv/bin/python scripts/bench_sweeps.py forward --model resnet18 --images 256

plan: an untrained cnn-s (3x32x32, labels = its own predictions, so CA = 100%), seeded; the same PlanConfig on every
executor; prints per run the wall seconds, the chips measured (the plan's progress bar), chips per second, and the
speed-up and efficiency (speed-up / workers) against the same executor with one worker (processes:1 is one local
worker process, for local:2). Each run checks its plan JSON equals the first run's. ray:N starts a local Ray of N
CPUs for that run. Worker processes compute with one thread each; inline is this process with torch's default. forward: images per second of ImageScorer.accuracy on one faulty
image (the work of one chip), best of --repeat.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings

import torch

from nfedge.analysis.evaluate import ImageScorer
from nfedge.analysis.plan import PlanConfig, plan_operating_points
from nfedge.executor import ProcessExecutor, open_executor
from nfedge.models import create_base_model
from nfedge.progress import Progress
from nfedge.sram.faults import InjectConfig, inject_faults
from nfedge.sram.image import build_image


@dataclasses.dataclass
class _Bar:
    n: int = 0

    def update(self, k: int = 1) -> None:
        self.n += k

    def close(self) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class _Count(Progress):
    opened: list = dataclasses.field(default_factory=list)

    def manual(self, desc, total=None, unit="it"):
        self.opened.append(_Bar())
        return self.opened[-1]

    def info(self, message):
        pass


def _data(model, n: int, shape: tuple[int, ...]):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, *shape, generator=g) * 2 - 1
    with torch.no_grad():
        y = torch.cat([model(x[i: i + 256]).argmax(1) for i in range(0, n, 256)])
    return x, y


def bench_plan(args) -> None:
    torch.manual_seed(0)
    model = create_base_model(args.model, in_channels=3, num_classes=10).eval()
    image = build_image(model, 8)
    test = _data(model, args.images, (3, 32, 32))
    cfg = PlanConfig(base=args.model, chips=args.chips, confirm_chips=args.chips, quantile=0.2, confidence=0.6,
                     floor_drop=args.floor_drop, msb=(2,), fewer_bits=(), generator_msb=0)
    ref, t_one = None, {}
    for run in args.runs:
        kind, _, n = run.partition(":")
        if kind == "ray":
            import ray

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                ray.init(num_cpus=int(n or 2), object_store_memory=200 * 2**20, include_dashboard=False,
                         logging_level="ERROR")
        progress = _Count()
        t0 = time.perf_counter()  # worker start-up included (the user waits for it); ray.init above is not
        with (ProcessExecutor(int(n)) if kind == "processes" else
              open_executor(None if run == "inline" else ("ray" if kind == "ray" else run))) as ex:
            r = plan_operating_points(model, image, test, cfg, progress=progress, executor=ex)
        dt = time.perf_counter() - t0
        if kind == "ray":
            ray.shutdown()
        out = json.dumps(r, sort_keys=True)
        ref = out if ref is None else ref
        workers = 1 if run == "inline" else int(n or 2)
        group = "local" if kind == "processes" else kind  # processes:1 is local:2's one-worker run
        one = t_one.setdefault(group, dt) if workers == 1 else t_one.get(group)  # this executor's 1-worker time
        chips = progress.opened[0].n
        scaling = f"speed-up {one / dt:4.2f}  efficiency {one / dt / workers:4.2f}" if one else ""
        print(f"{run:12s} workers {workers}  {dt:7.1f} s  {chips} chips  {chips / dt:6.2f} chips/s  {scaling}  "
              f"same plan: {out == ref}", flush=True)


def bench_forward(args) -> None:
    torch.manual_seed(0)
    model = create_base_model(args.model, in_channels=3, num_classes=10).eval()
    image = build_image(model, 8)
    x, y = _data(model, args.images, (3, 32, 32))
    score = ImageScorer(model, (x, y), {}, args.batch_size)
    best = None
    for chip in range(args.repeat):  # a new chip each time: the scorer scores each distinct image once
        faulty = inject_faults(image, InjectConfig(voltage=0.85, chip=chip))[0]
        t0 = time.perf_counter()
        score.accuracy(faulty, None)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    print(f"{args.model}: {args.images} images in {best:.2f} s (best of {args.repeat}): {args.images / best:.1f} "
          f"images/s with {torch.get_num_threads()} threads", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("plan")
    a.add_argument("--model", default="cnn-s")
    a.add_argument("--images", type=int, default=1000)
    a.add_argument("--chips", type=int, default=5)
    a.add_argument("--floor-drop", type=float, default=4.0)
    a.add_argument("--runs", nargs="+", default=["inline", "processes:1", "local:2", "ray:1", "ray:2"])
    f = sub.add_parser("forward")
    f.add_argument("--model", default="resnet18")
    f.add_argument("--images", type=int, default=256)
    f.add_argument("--batch-size", type=int, default=256)
    f.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    (bench_plan if args.what == "plan" else bench_forward)(args)


if __name__ == "__main__":
    main()
