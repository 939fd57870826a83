"""Benchmark: host (x86-64) latency of the same quantized model in torch, onnxruntime and TVM (untuned, tuned).

One process, one model: `--base` (random weights, seeded) quantized to 8 bits by nfedge's quantize path,
then
  torch eager       the base model with the image's dequantized float weights loaded
  torch eager+image ImageWeightedModel(x, image): decodes the weights from the image on every call,
                    like the ONNX and TVM graphs
  onnxruntime       the ONNX nfedge exports (nfedge.deploy.compile.export.export_base_onnx), CPU provider
  TVM untuned       nfedge build --target host (what a build does without a tuning database)
  TVM tuned         the same build with a MetaSchedule database from nfedge.deploy.compile.tune (reused when --db exists)
Outputs are checked against onnxruntime before anything is timed. Timing: interleaved rounds (every
implementation once per round, in a rotating order), each round times `--calls` back-to-back calls;
the table shows the median over rounds of the per-call time. With --generator, the NeuralFuse front
F(x) is measured the same way. All runtimes use `--threads` threads.

    .venv/bin/python bench/bench_host_latency.py [--base cnn-s] [--generator ConvT] [--trials 256]
        [--db build/tune-cnn-s] [--rounds 30] [--calls 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# torch's OpenMP threads spin-wait after each parallel region; in one process with two other runtimes on
# 2 cores that spinning stole the cores from whatever ran next (torch itself measured 117 ms instead of
# 1 ms at --threads 2). Must be set before torch loads libgomp.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nfedge.deploy.compile.build import BuildConfig, build_for_target  # noqa: E402
from nfedge.deploy.compile.export import (  # noqa: E402
    ImageWeightedModel,
    NeuralFuseFront,
    export_base_onnx,
    export_generator_onnx,
    image_tensor,
)
from nfedge.deploy.compile.tune import TuneConfig, tune_for_target  # noqa: E402
from nfedge.deploy.compile.tuning_db import load_tuning_db  # noqa: E402
from nfedge.models import create_base_model, create_generator  # noqa: E402
from nfedge.progress import DEFAULT  # noqa: E402
from nfedge.sram.image import QuantizeConfig, quantize_to_image  # noqa: E402

SHAPE = (1, 32, 32)


def _aligned(a: np.ndarray) -> np.ndarray:
    """A 64-byte-aligned copy (TVM may crash on a numpy array handed to a VM function otherwise)."""
    raw = np.empty(a.nbytes + 64, dtype=np.uint8)
    off = (-raw.ctypes.data) % 64
    out = raw[off: off + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _tvm_runner(so: Path, args: list[np.ndarray]):
    import tvm
    from tvm import relax

    dev = tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(so)), dev)
    targs = [tvm.runtime.tensor(_aligned(a), dev) for a in args]
    f = vm["main"]

    def call():
        out = f(*targs)
        out = out[0] if type(out).__name__ == "Array" or isinstance(out, (list, tuple)) else out
        return out.numpy()

    return call


def _per_sample(so: Path, xb: np.ndarray, img: np.ndarray):
    calls = [_tvm_runner(so, [np.ascontiguousarray(xb[i: i + 1]), img]) for i in range(xb.shape[0])]
    return lambda: np.concatenate([c() for c in calls])


def _ort_runner(path: Path, feeds: dict[str, np.ndarray], threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, feeds)[0]


def _torch_runner(module, args):
    def call():
        with torch.inference_mode():
            return module(*args).numpy()

    return call


def _time(runners: dict[str, callable], rounds: int, calls: int) -> dict[str, float]:
    """Median over rounds of the per-call seconds; the order rotates each round so no runner always
    follows the same neighbour (caches, frequency)."""
    names = list(runners)
    for f in runners.values():  # warm-up
        for _ in range(max(3, calls // 4)):
            f()
    per_call: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[: r % len(names)]:
            f = runners[n]
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            per_call[n].append((time.perf_counter() - t0) / calls)
    return {n: statistics.median(v) for n, v in per_call.items()}


def _check_agree(outs: dict[str, np.ndarray], ref: str, what: str, tol: float = 1e-4) -> float:
    worst = 0.0
    for n, o in outs.items():
        d = float(np.max(np.abs(o - outs[ref]))) / max(1.0, float(np.max(np.abs(outs[ref]))))
        if not np.isfinite(d) or d > tol:
            sys.exit(f"{what}: {n} disagrees with {ref} (relative max difference {d:.2e})")
        worst = max(worst, d)
    return worst


def _graph_rows(title: str, runners: dict[str, callable], ref: str, rounds: int, calls: int) -> list[str]:
    worst = _check_agree({n: f() for n, f in runners.items()}, ref, title)
    t = _time(runners, rounds, calls)
    lines = [f"### {title} (outputs agree with {ref} to {worst:.1e} relative)", "",
             "| implementation | median ms/call | / onnxruntime |", "|---|---|---|"]
    for n, s in t.items():
        lines.append(f"| {n} | {1e3 * s:.4f} | {s / t[ref]:.2f}x |")
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="cnn-s")
    ap.add_argument("--generator", default="none", help="generator name (e.g. ConvT) or none")
    ap.add_argument("--trials", type=int, default=256, help="MetaSchedule trials when the database is tuned here")
    ap.add_argument("--db", default=None, help="tuning database directory (reused when it exists)")
    ap.add_argument("--trials-per-round", type=int, default=TuneConfig.trials_per_round)
    ap.add_argument("--population", type=int, default=TuneConfig.population)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--calls", type=int, default=20, help="back-to-back calls timed per round")
    ap.add_argument("--threads", type=int, default=2, help="runtime threads of torch, onnxruntime and TVM "
                    "(the schedules are tuned for all usable cores)")
    ap.add_argument("--batch", type=int, nargs="*", default=[8], help="extra batch sizes for torch and onnxruntime")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    os.environ["TVM_NUM_THREADS"] = str(a.threads)  # read when TVM starts its thread pool (first call)
    torch.manual_seed(a.seed)
    base = create_base_model(a.base, in_channels=SHAPE[0], num_classes=10).eval()
    gen = None if a.generator.lower() == "none" else create_generator(a.generator, in_channels=SHAPE[0]).eval()
    image = quantize_to_image(base, QuantizeConfig(bits=8))
    deq = create_base_model(a.base, in_channels=SHAPE[0], num_classes=10).eval()
    deq.load_state_dict(base.state_dict())
    with torch.no_grad():
        for name, w in ImageWeightedModel(base, image.manifest).decode(image_tensor(image)).items():
            deq.get_parameter(name).copy_(w)
    x = (np.random.default_rng(a.seed).random((1, *SHAPE), dtype=np.float32) * 2 - 1)
    img = image.codes.astype(np.int8)

    work = Path(tempfile.mkdtemp(prefix="bench_host_"))
    db = Path(a.db) if a.db else work / "db"
    cmd = " ".join([".venv/bin/python", "bench/bench_host_latency.py", *sys.argv[1:]])
    runs_before = len(load_tuning_db(db).manifest["runs"]) if db.exists() else 0
    tdb = tune_for_target(TuneConfig(trials=a.trials, trials_per_round=a.trials_per_round, population=a.population,
                                     seed=a.seed, input_shape=SHAPE), base, image, gen, db, DEFAULT)
    untuned = build_for_target(BuildConfig(target="host"), base, image, gen, work / "untuned", DEFAULT)
    tuned = build_for_target(BuildConfig(target="host", tuning_db=str(db)), base, image, gen, work / "tuned", DEFAULT)
    export_base_onnx(base, image, work / "base.onnx", SHAPE)

    runs = tdb.manifest["runs"]
    print(f"command: {cmd}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {_cpu_model()}; threads {a.threads}")
    print(f"versions: torch {torch.__version__}, onnxruntime {_ort_version()}, tvm {tdb.manifest['versions']['tvm']}")
    print(f"tuning database {db}: target {json.dumps(tdb.manifest['tvm_target'], sort_keys=True)}, "
          f"{sum(r['trials'] for r in runs)} trials, {sum(r['tune_seconds'] for r in runs):.0f} s of tuning "
          f"({sum(r['wall_seconds'] for r in runs):.0f} s wall, seed {runs[0]['seed']}); "
          f"{'tuned in this run' if len(runs) > runs_before else 'reused'}; tuned operators "
          f"{sum(len(v) for v in tuned.manifest['tuning']['tuned_operators'].values())}")
    print()

    xt = torch.from_numpy(x)
    lines = _graph_rows(f"{a.base} base model, 8-bit image, batch 1", {
        "torch eager (dequantized weights)": _torch_runner(deq, (xt,)),
        "torch eager (ImageWeightedModel, image input)": _torch_runner(ImageWeightedModel(base, image.manifest),
                                                                       (xt, image_tensor(image))),
        "onnxruntime": _ort_runner(work / "base.onnx", {"x": x, "image": img}, a.threads),
        "TVM untuned (nfedge build)": _tvm_runner(untuned.file("base"), [x, img]),
        "TVM tuned (nfedge build --tuning-db)": _tvm_runner(tuned.file("base"), [x, img]),
    }, "onnxruntime", a.rounds, a.calls)
    if gen is not None:
        export_generator_onnx(gen, work / "generator.onnx", SHAPE)
        lines += _graph_rows(f"{a.generator} NeuralFuse front F(x), batch 1", {
            "torch eager": _torch_runner(NeuralFuseFront(gen), (xt,)),
            "onnxruntime": _ort_runner(work / "generator.onnx", {"x": x}, a.threads),
            "TVM untuned (nfedge build)": _tvm_runner(untuned.file("generator"), [x]),
            "TVM tuned (nfedge build --tuning-db)": _tvm_runner(tuned.file("generator"), [x]),
        }, "onnxruntime", a.rounds, a.calls)
    for n in a.batch:  # TVM bundles are built for batch 1: they run a batch one sample at a time, as the harness does
        xb = np.random.default_rng(a.seed + n).random((n, *SHAPE), dtype=np.float32) * 2 - 1
        lines += _graph_rows(f"{a.base} base model, batch {n} (TVM bundles: {n} batch-1 calls)", {
            "torch eager (dequantized weights)": _torch_runner(deq, (torch.from_numpy(xb),)),
            "onnxruntime": _ort_runner(work / "base.onnx", {"x": xb, "image": img}, a.threads),
            "TVM untuned, per sample": _per_sample(untuned.file("base"), xb, img),
            "TVM tuned, per sample": _per_sample(tuned.file("base"), xb, img),
        }, "onnxruntime", a.rounds, max(1, a.calls // 4))
    print("\n".join(lines))


def _cpu_model() -> str:
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    main()
