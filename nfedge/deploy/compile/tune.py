"""Tune stage: MetaSchedule-tune the operators a host bundle runs, into a database a later build reuses.

    db = tune_for_target(TuneConfig(trials=256), base_model, image, generator, "build/tuning-db")
    build_for_target(BuildConfig(target="host", tuning_db="build/tuning-db"), base_model, image, generator, "build/h")

The host build (nfedge.deploy.compile.build) otherwise runs TVM's default llvm pipeline, which applies no schedule
(no vector or parallel loops). Tuning lowers the same Relax graphs the build compiles (legalize, fuse),
extracts one task per distinct fused PrimFunc and measures candidate schedules on this machine.
Candidates are compiled in this process: a LocalBuilder worker spends 25-50 s importing
tvm.s_tir.tensor_intrin before its first build, past MetaSchedule's 30 s worker timeout. They run in one
LocalRunner process (a crashing candidate cannot take the tuner down).

The database directory's format is nfedge.deploy.compile.tuning_db's.
Tuning again into an existing database keeps its records and tunes only the tasks it lacks (none: no
tuning at all); delete the directory to tune from scratch. Only the host target can be tuned: candidates
are timed on the machine that runs the tuner.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from torch import nn

from nfedge import __version__
from nfedge.config import StageConfig, require
from nfedge.deploy.compile.build import BuildConfig, check_build_inputs
from nfedge.deploy.compile.lower import lower_relax, relax_graphs
from nfedge.deploy.targets import TargetDescriptor, load_target
from nfedge.deploy.compile.tuning_db import (
    MANIFEST,
    MODULE_EQUALITY,
    TABLES,
    TUNING_DB_FORMAT,
    TUNING_DB_VERSION,
    TuningDatabase,
    first_line,
    load_tuning_db,
    system_cpu,
    tables_sha256,
)
from nfedge.errors import NfedgeError
from nfedge.fileio import atomic_dir, atomic_write_json
from nfedge.progress import QUIET, Progress
from nfedge.sram.image import WeightImage

__all__ = ["TuneConfig", "tune_for_target", "tuned_target_dict"]

STRATEGIES = ("evolutionary", "replay-trace")


@dataclasses.dataclass(frozen=True)
class TuneConfig(StageConfig):
    target: str = "host"  # only kind "host" can be tuned (candidates are timed on this machine)
    input_shape: tuple[int, int, int] = (1, 32, 32)  # C, H, W of one sample; tuned at batch 1 like the build
    trials: int = 256  # measured candidate schedules in total, over all tasks
    trials_per_round: int = 8  # candidates generated, built and measured per task per round
    max_workers: int = 0  # builder processes; 0 = build candidates in this process (no worker import cost)
    timeout_s: float = 60.0  # per candidate run (and per build with max_workers > 0), seconds
    seed: int = 0  # search, task scheduler and cost model seed (logged and stored in tune.json)
    cpu: str = "native"  # LLVM -mcpu of the tuned code; "native" = this machine's CPU
    threads: int = 0  # cores the schedules are tuned for (TVM target num-cores); 0 = all this process may use
    strategy: str = "evolutionary"  # or "replay-trace": random samples, no cost model (cheap smoke tests)
    population: int = 128  # evolutionary search population per round; MetaSchedule's 512 spent about a
    #                        minute of search per round on 2 busy cores, more than building and timing

    def validate(self) -> None:
        require(isinstance(self.target, str) and self.target != "", "target must be a non-empty name or path")
        require(len(self.input_shape) == 3 and all(isinstance(v, int) and v > 0 for v in self.input_shape),
                f"input_shape must be three positive integers (C, H, W), got {self.input_shape!r}")
        require(isinstance(self.trials, int) and self.trials >= 1, f"trials must be >= 1, got {self.trials!r}")
        require(isinstance(self.trials_per_round, int) and self.trials_per_round >= 1,
                f"trials_per_round must be >= 1, got {self.trials_per_round!r}")
        require(isinstance(self.max_workers, int) and self.max_workers >= 0, "max_workers must be >= 0")
        require(self.timeout_s > 0, "timeout_s must be > 0")
        require(isinstance(self.seed, int) and self.seed >= 0, f"seed must be a non-negative integer, got {self.seed!r}")
        require(isinstance(self.cpu, str) and self.cpu != "", "cpu must be an LLVM CPU name or 'native'")
        require(isinstance(self.threads, int) and self.threads >= 0, "threads must be >= 0")
        require(self.strategy in STRATEGIES, f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        require(isinstance(self.population, int) and self.population >= 2, "population must be >= 2")


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------- tuning


def tuned_target_dict(cfg: TuneConfig, target: TargetDescriptor) -> dict[str, Any]:
    """The descriptor's TVM target plus the CPU and core count the schedules are tuned for."""
    if target.kind != "host":
        raise NfedgeError(f"target {target.name} is a {target.kind} target: only the host target can be tuned "
                          "(MetaSchedule times every candidate on this machine)")
    d = dict(target.tvm_target_dict)
    d["mcpu"] = system_cpu() if cfg.cpu == "native" else cfg.cpu
    d["num-cores"] = cfg.threads or _usable_cores()
    return d


def tune_for_target(cfg: TuneConfig, base_model: nn.Module, image: WeightImage, generator: nn.Module | None,
                    db_dir: str | Path, progress: Progress = QUIET) -> TuningDatabase:
    """Tune the operators of base model (+ generator) for cfg.target; write or extend the database at db_dir."""
    import tvm

    t_start = time.perf_counter()
    target = load_target(cfg.target)
    tdict = tuned_target_dict(cfg, target)
    check_build_inputs(BuildConfig(target=cfg.target, input_shape=cfg.input_shape), base_model, image, generator)
    db_dir = Path(db_dir)
    old = load_tuning_db(db_dir) if db_dir.exists() else None
    if old is not None and old.target_dict != tdict:
        raise NfedgeError(f"tuning database {db_dir} was tuned for {json.dumps(old.target_dict, sort_keys=True)}, "
                          f"this run tunes for {json.dumps(tdict, sort_keys=True)}: use another --db directory")

    progress.info(f"tune: seed {cfg.seed}; importing the base model{' and generator' if generator else ''} into Relax")
    tvm_target = tvm.target.Target(tdict)
    tasks = _extract_tasks(relax_graphs(cfg.input_shape, base_model, image, generator), tvm_target)
    todo = _untuned(tasks, old.path) if old is not None else list(tasks)
    progress.info(f"tune: {len(tasks)} tasks for {json.dumps(tdict, sort_keys=True)}; {len(tasks) - len(todo)} "
                  f"already in the database, tuning {len(todo)} with {cfg.trials} trials (seed {cfg.seed})")
    if not todo:
        return old
    with atomic_dir(db_dir) as tmp:
        if old is not None:  # MetaSchedule appends to the copied tables
            for name in (*TABLES, "tune.log"):
                if (old.path / name).is_file():
                    shutil.copy2(old.path / name, tmp / name)
        t0 = time.perf_counter()
        _run_tuner(cfg, todo, tvm_target, int(tdict["num-cores"]), tmp, progress)
        tune_seconds = time.perf_counter() - t0
        manifest = {
            "format": TUNING_DB_FORMAT, "version": TUNING_DB_VERSION,
            "config": cfg.to_dict(), "target": target.name, "tvm_target": tdict, "seed": cfg.seed,
            "module_equality": MODULE_EQUALITY, "tasks": _task_summary(tasks, tmp),
            "runs": (old.manifest.get("runs", []) if old else []) + [{
                "tasks_tuned": [t.task_name for t in todo], "trials": cfg.trials, "seed": cfg.seed,
                "strategy": cfg.strategy, "tune_seconds": round(tune_seconds, 1),
                "wall_seconds": round(time.perf_counter() - t_start, 1)}],
            "versions": _versions(),
            "db_sha256": tables_sha256(tmp),
        }
        atomic_write_json(tmp / MANIFEST, manifest)
    progress.info(f"tune: database written to {db_dir} ({tune_seconds:.0f} s of tuning)")
    return load_tuning_db(db_dir)


def _extract_tasks(relax_mods: dict[str, Any], tvm_target) -> list[Any]:
    """One MetaSchedule task per distinct fused PrimFunc over all graphs (lowered as the build lowers them)."""
    import tvm
    import tvm_ffi
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    tasks, seen = [], set()
    for mod in relax_mods.values():
        with tvm.transform.PassContext(opt_level=3):
            lowered = lower_relax(relax.transform.DecomposeOpsForInference()(mod), tvm_target, "none")
        for task in ms.relax_integration.extract_tasks(lowered, tvm_target, module_equality=MODULE_EQUALITY):
            key = tvm_ffi.structural_hash(task.dispatched[0])
            if key not in seen:
                seen.add(key)
                tasks.append(task)
    return tasks


def _open_tables(d: Path):
    from tvm.s_tir import meta_schedule as ms

    return ms.database.JSONDatabase(str(d / TABLES[0]), str(d / TABLES[1]), module_equality=MODULE_EQUALITY)


def _best_record(db, mod):
    """The best measured record of a task's PrimFunc, or None (commit_workload only reads a known workload)."""
    if not db.has_workload(mod):
        return None
    top = db.get_top_k(db.commit_workload(mod), 1)
    return top[0] if top else None


def _untuned(tasks, db_path: Path) -> list[Any]:
    db = _open_tables(db_path)
    return [t for t in tasks if _best_record(db, t.dispatched[0]) is None]


def _task_summary(tasks, db_path: Path) -> list[dict[str, Any]]:
    db = _open_tables(db_path)
    out = []
    for t in tasks:
        best = _best_record(db, t.dispatched[0])
        secs = [float(v) for v in best.run_secs] if best is not None and best.run_secs else []
        out.append({"name": t.task_name, "weight": int(t.weight),
                    "best_us": round(1e6 * sum(secs) / len(secs), 3) if secs else None})
    return out


def _run_tuner(cfg: TuneConfig, tasks, tvm_target, threads: int, work: Path, progress: Progress) -> None:
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.utils import fork_seed

    def strategy():
        if cfg.strategy == "evolutionary":
            return ms.search_strategy.EvolutionarySearch(population_size=cfg.population,
                                                         init_min_unmeasured=min(50, cfg.population))
        return cfg.strategy

    contexts = [
        ms.TuneContext(mod=t.dispatched[0], target=tvm_target, space_generator="post-order-apply",
                       search_strategy=strategy(), task_name=t.task_name, rand_state=seed,
                       num_threads=threads).clone()
        for t, seed in zip(tasks, fork_seed(cfg.seed, n=len(tasks)))
    ]
    builder = (_in_process_builder() if cfg.max_workers == 0 else
               ms.builder.LocalBuilder(max_workers=cfg.max_workers, timeout_sec=cfg.timeout_s))
    runner = ms.runner.LocalRunner(timeout_sec=cfg.timeout_s)
    database = _open_tables(work)
    callbacks = [ms.measure_callback.AddToDatabase(), ms.measure_callback.RemoveBuildArtifact()]
    cost_model = None  # replay-trace samples at random: training a cost model after every batch is wasted time
    if cfg.strategy == "evolutionary":
        cost_model = ms.cost_model.XGBModel(config=ms.cost_model.xgb_model.XGBConfig(seed=cfg.seed, nthread=threads))
        callbacks.append(ms.measure_callback.UpdateCostModel())
    with progress.manual("tune: measured candidates", total=cfg.trials, unit="trial") as bar, \
            _tvm_log_to(work / "tune.log"):
        callbacks.append(_progress_callback(bar))
        try:
            ms.task_scheduler.GradientBased(seed=cfg.seed).tune(
                tasks=contexts, task_weights=[float(t.weight) for t in tasks], max_trials_global=cfg.trials,
                max_trials_per_task=cfg.trials, num_trials_per_iter=cfg.trials_per_round, builder=builder,
                runner=runner, measure_callbacks=callbacks, database=database, cost_model=cost_model)
        except Exception as e:  # noqa: BLE001
            raise NfedgeError(f"MetaSchedule tuning failed: {type(e).__name__}: {first_line(e)} "
                              f"(see {work.name}/tune.log)") from e


class _tvm_log_to:
    """MetaSchedule logs through Python logging under "tvm.s_tir.meta_schedule": send them to a file for
    the duration of the tuning (and not to the console), then restore the logger as it was."""

    def __init__(self, path: Path) -> None:
        self.handler = logging.FileHandler(path)
        self.handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s"))
        self.logger = logging.getLogger("tvm.s_tir.meta_schedule")

    def __enter__(self):
        self.saved = (self.logger.level, self.logger.propagate)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self.handler)
        self.handler.close()
        self.logger.setLevel(self.saved[0])
        self.logger.propagate = self.saved[1]


def _in_process_builder():
    """A MetaSchedule builder that compiles candidates in this process, one after another."""
    import tvm
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_export
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    def build_one(mod, target):  # MetaSchedule's default_build, without its deprecated tvm.build call
        return tvm.tirx.build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs):
            results = []
            for b in build_inputs:
                try:
                    results.append(BuilderResult(default_export(build_one(b.mod, b.target)), None))
                except Exception as e:  # noqa: BLE001 - a failed candidate is a result, not an error
                    results.append(BuilderResult(None, f"in-process build failed: {type(e).__name__}: {first_line(e)}"))
            return results

    return InProcessBuilder()


def _progress_callback(bar):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class ProgressCallback(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            bar.update(len(measure_candidates))

    return ProgressCallback()


def _versions() -> dict[str, str]:
    import platform

    import torch
    import tvm

    return {"nfedge": __version__, "tvm": getattr(tvm, "__version__", "?"), "torch": torch.__version__,
            "python": platform.python_version()}
