"""`nfedge run`: the whole chain on one config, every stage cached by the hash of what it depends on.

    train-base -> quantize -> train generators (EOPM) -> plan -> evaluate (host) -> build -> faultrun -> report

The plan stage (nfedge.analysis.plan, docs/PLANNER.md) answers the first question a user asks, and the report leads
with it: at the accuracy floor, on nearly every chip, how low can the weight SRAM go and what does each option save.

Each stage writes into <out>/<stage>-<hash>/ and marks completion with DONE.json (written last,
atomically); a stage whose DONE.json exists is skipped, so a re-run reuses everything and an
interrupted run resumes (train-base also resumes inside its epochs). The resolved config is saved as
<out>/run.json; the report goes to <out>/report/.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

from nfedge import stages
from nfedge.analysis.plan import PlanConfig
from nfedge.config import StageConfig, require
from nfedge.data.datasets import content_digest
from nfedge.deploy.targets import load_target
from nfedge.errors import NfedgeError
from nfedge.fileio import atomic_write_json, sha256_file
from nfedge.integer import MODES
from nfedge.models import GENERATORS
from nfedge.progress import DEFAULT, Progress
from nfedge.quant import check_bits
from nfedge.sram.calibration import DEFAULT_CALIBRATION, load_calibration
from nfedge.train.base import TrainBaseConfig
from nfedge.train.eopm import EOPMConfig

TABLE_VOLTAGES = (1.0, 0.958, 0.917, 0.875, 0.833, 0.792)  # nominal down to ~5% BER (calibration table)


@dataclasses.dataclass(frozen=True)
class RunPlanConfig(StageConfig):
    """The plan stage: `nfedge plan` on the run's base model, its image and every generator (docs/PLANNER.md)."""

    enabled: bool = True
    floor_drop: float = 2.0  # the floor: the base model's clean accuracy minus this many points
    quantile: float = 0.05  # the chip quantile that must meet it (0.05 of 20 chips: the worst)
    chips: int = 20  # search chips 0..chips-1
    confirm_chips: int = 20  # fresh chips re-measured at each voltage found
    # Test images (a seeded subset; None: the whole set), sized for the main job's 20 minutes on 2 cores
    # (README: the plan stage's measured time).
    test_limit: int | None = 1000
    curve_step: float = 0.01  # the plot's voltage grid (V/Vmin)
    ecc: bool = True  # plan the base model behind SECDED (72,64) too

    def validate(self) -> None:
        require(self.test_limit is None or (isinstance(self.test_limit, int) and self.test_limit >= 1),
                f"plan.test_limit must be a number of test images >= 1 or null, got {self.test_limit!r}")
        self.planner()  # PlanConfig's checks (chips >= 5, quantile in (0, 1), ...)

    def planner(self, base: str = "cnn-s", classes: int = 10, fault: str = "flip",
                calibration: str = DEFAULT_CALIBRATION) -> PlanConfig:
        return PlanConfig(base=base, classes=classes, floor_drop=self.floor_drop, quantile=self.quantile,
                          chips=self.chips, confirm_chips=self.confirm_chips, fault=fault, calibration=calibration,
                          ecc=self.ecc, curve=True, curve_step=self.curve_step)


@dataclasses.dataclass(frozen=True)
class RunConfig(StageConfig):
    base: TrainBaseConfig = TrainBaseConfig(epochs=3)
    bits: int = 8
    generators: tuple[str, ...] = ("ConvT", "UNetT", "UIP")
    # Sized for the README's first command (< 30 min on 2 cores): 400 EOPM steps per generator.
    eopm: EOPMConfig = EOPMConfig(generator="ConvT", epochs=1, max_steps=400, ber=0.01, n_perturbed=5, batch_size=64)
    plan: RunPlanConfig = RunPlanConfig()
    voltages: tuple[float, ...] = TABLE_VOLTAGES  # host sweep and target sweep (V/Vmin)
    chips: int = 10  # host evaluation chips
    fault: str = "flip"
    eval_limit: int | None = 2000  # test images in the host sweep (None: the whole test set)
    target: str = "arm-cortex"  # a target descriptor, or "none" for host simulation only
    target_voltages: tuple[float, ...] = TABLE_VOLTAGES  # on-target fault runs, nominal down to ~5% BER
    target_chips: int = 2  # emulation is ~0.1 s per image: few chips and samples on the target
    target_samples: int = 32  # test images per chip on the target
    # arithmetic of the on-target runs, first = the report's on-target tables; every mode's instructions are compared.
    # integer: int8 activations, int32 accumulators, exact vs the host integer reference (docs/INTEGER.md); the host
    # sweep above stays weight-only (the paper's mode; the float simulation ran ~8x faster than the integer reference)
    target_modes: tuple[str, ...] = ("integer", "weight-only")
    base_checkpoint: str | None = None  # your own base checkpoint (e.g. from import-model) instead of training `base`
    calibration: str = DEFAULT_CALIBRATION  # SRAM table for every stage: built-in name or TOML file (voltage -> BER)

    def validate(self) -> None:
        check_bits(self.bits)
        require(len(self.generators) >= 1, "at least one generator")
        for g in self.generators:
            require(g in GENERATORS, f"unknown generator {g!r}; known: {', '.join(GENERATORS.names())}")
        require(self.chips >= 1 and self.target_chips >= 1 and self.target_samples >= 1, "chips and samples must be >= 1")
        require(len(self.target_modes) >= 1 and all(m in MODES for m in self.target_modes)
                and len(set(self.target_modes)) == len(self.target_modes),
                f"target_modes must be distinct modes out of integer, weight-only, got {self.target_modes!r}")
        if self.plan.enabled:
            require(self.fault in ("flip", "stuck-at"), f"the plan stage takes fault flip or stuck-at, got {self.fault!r} "
                                                        "(or set plan.enabled false)")
            self.plan.planner(fault=self.fault, calibration=self.calibration)  # this run's table: its range
        cal = load_calibration(self.calibration)  # fail now, not after training, on a bad table or voltage
        for v in self.voltages + (self.target_voltages if self.target != "none" else ()):
            cal.ber_at(v)


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


# A user's own SRAM table or target file enters the keys of the stages it feeds by content, so editing the
# file re-runs them. The built-in defaults add nothing, which keeps earlier runs' keys.
def _table_key(cfg: RunConfig) -> tuple[Any, ...]:
    return () if cfg.calibration == DEFAULT_CALIBRATION else (dataclasses.asdict(load_calibration(cfg.calibration)),)


def _data_key(cfg: RunConfig) -> tuple[Any, ...]:
    digest = content_digest(cfg.base.data)  # a user's folder or npz: its files' content
    return () if digest is None else (digest,)


def _target_key(cfg: RunConfig) -> tuple[Any, ...]:
    is_file = cfg.target.endswith(".toml") or "/" in cfg.target
    return (load_target(cfg.target).to_dict() | {"source": None},) if is_file else ()


@dataclasses.dataclass
class Stage:
    """One cached stage: its directory and whether it ran now or was reused."""

    name: str
    path: Path
    reused: bool
    seconds: float


def run_stage(root: Path, name: str, key: str, fn: Callable[[Path], dict[str, Any] | None],
              progress: Progress, log: list[Stage]) -> Path:
    d = root / f"{name}-{key}"
    done = d / "DONE.json"
    if done.is_file():
        progress.info(f"{name}: reusing {d.name}")
        log.append(Stage(name, d, True, 0.0))
        return d
    progress.info(f"{name}: running -> {d.name}")
    d.mkdir(parents=True, exist_ok=True)
    t = time.time()
    info = fn(d) or {}
    seconds = time.time() - t
    atomic_write_json(done, {"stage": name, "key": key, "seconds": seconds, **info})
    log.append(Stage(name, d, False, seconds))
    return d


def run_pipeline(cfg: RunConfig, out_dir: str | Path, progress: Progress = DEFAULT) -> dict[str, Any]:
    """Run (or reuse) every stage; returns {"stages": [...], "summary": {...}, "report": path}."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / "run.json", cfg.to_dict())
    log: list[Stage] = []
    table = _table_key(cfg)
    if cfg.base_checkpoint is None:
        base_key = _digest(cfg.base.to_dict(), *_data_key(cfg))
        base_dir = run_stage(root, "base", base_key, lambda d: stages.train_base_stage(cfg, d, progress), progress, log)
    else:
        if not Path(cfg.base_checkpoint).is_file():
            raise NfedgeError(f"base checkpoint {cfg.base_checkpoint} does not exist")
        base_key = _digest("checkpoint", sha256_file(cfg.base_checkpoint), cfg.base.data.to_dict(), cfg.bits,
                           *_data_key(cfg))
        base_dir = run_stage(root, "base", base_key, lambda d: stages.adopt_base_stage(cfg, d, progress), progress, log)
    image_key = _digest(base_key, cfg.bits)
    image_dir = run_stage(root, "image", image_key, lambda d: stages.quantize_stage(base_dir, cfg, d), progress, log)
    gen_dirs = {}
    for g in cfg.generators:
        key = _digest(image_key, dataclasses.replace(cfg.eopm, generator=g, calibration=cfg.calibration).to_dict(), *table)
        gen_dirs[g] = run_stage(root, f"gen-{g}", key,
                                lambda d, g=g: stages.train_generator_stage(cfg, g, base_dir, image_dir, d, progress),
                                progress, log)
    plan_dir = None
    if cfg.plan.enabled:
        plan_key = _digest(image_key, {g: d.name for g, d in gen_dirs.items()}, cfg.plan.to_dict(), cfg.fault, *table)
        plan_dir = run_stage(root, "plan", plan_key,
                             lambda d: stages.plan_stage(cfg, base_dir, image_dir, gen_dirs, d, progress), progress, log)
    eval_key = _digest(image_key, {g: d.name for g, d in gen_dirs.items()}, cfg.voltages, cfg.chips, cfg.fault, cfg.eval_limit,
                       *table)
    eval_dir = run_stage(root, "evaluate", eval_key,
                         lambda d: stages.evaluate_stage(cfg, base_dir, image_dir, gen_dirs, d, progress), progress, log)
    target_dirs = []
    for mode in cfg.target_modes if cfg.target != "none" else ():
        # weight-only keeps the key it had before integer mode existed (earlier runs' builds are reused)
        build_key = _digest(image_key, {g: d.name for g, d in gen_dirs.items()}, cfg.target, *_target_key(cfg),
                            *(() if mode == "weight-only" else (mode,)))
        build_dir = run_stage(root, f"build-{mode}", build_key,
                              lambda d, m=mode: stages.build_stage(cfg, base_dir, image_dir, gen_dirs, d, progress, m),
                              progress, log)
        fr_key = _digest(build_key, cfg.target_voltages, cfg.target_chips, cfg.target_samples, cfg.fault, *table)
        target_dirs.append(run_stage(root, f"faultrun-{mode}", fr_key,
                                     lambda d, b=build_dir: stages.faultrun_stage(cfg, b, d, progress), progress, log))
    report_dir = stages.report_stage(cfg, root, base_dir, image_dir, gen_dirs, eval_dir, target_dirs, plan_dir)
    summary = json.loads((report_dir / "summary.json").read_text())
    return {"stages": [dataclasses.asdict(s) | {"path": str(s.path)} for s in log], "summary": summary,
            "report": str(report_dir / "REPORT.md")}


def load_run_config(path: str | Path | None) -> RunConfig:
    if path is None:
        return RunConfig()
    p = Path(path)
    if not p.is_file():
        raise NfedgeError(f"run config {p} does not exist")
    d = json.loads(p.read_text())
    # A user's file may give only what differs from the default: merge onto the default config.
    merged = _merge(RunConfig().to_dict(), d)
    return RunConfig.from_dict(merged)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out
