"""`nfedge run`: the whole chain on one config, as a table of stages (STAGES), each cached under one key.

    base (train-base, or your checkpoint) -> image (quantize) -> gen-<G> (EOPM, one per generator) -> plan
    -> evaluate (host) -> build-<mode> -> faultrun-<mode> (one pair per target mode) -> report

A row of STAGES is a stage: its name (the directory prefix; nfedge.stages holds its `run` function), the earlier
stages it reads (`inputs`), how its config dataclass follows from the run config, and its one `run`. `stage_key` is
the one key function: it hashes the stage's config (`config_hash`), the content of the files that config names (a
user's data set, SRAM table, target descriptor or checkpoint) and its inputs' keys. So a change re-runs the stage it
reaches and every stage downstream of it, and no other; every key is known before any stage runs.

The plan stage (nfedge.analysis.plan, docs/PLANNER.md) answers the first question a user asks, and the report leads
with it: at the accuracy floor, on nearly every chip, how low can the weight SRAM go and what does each option save.

Each stage writes into <out>/<stage>-<key>/ and marks completion with DONE.json (written last, atomically); a stage
whose DONE.json exists is skipped, so a re-run reuses everything and an interrupted run resumes (train-base also
resumes inside its epochs). The resolved config is saved as <out>/run.json, and this run's stage directories with
their keys as <out>/stages.json beside it: `nfedge report` finds the run's stages there, not by guessing among the
directories other configs left in <out>. The report goes to <out>/report/.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

from nfedge import stages
from nfedge.analysis.evaluate import EvaluateConfig
from nfedge.config import StageConfig, require
from nfedge.data import DataConfig
from nfedge.data.datasets import content_digest
from nfedge.deploy.compile.build import BuildConfig
from nfedge.deploy.run.faultrun import FaultrunConfig
from nfedge.deploy.targets import load_target
from nfedge.errors import NfedgeError
from nfedge.fileio import atomic_write_files, atomic_write_json, json_bytes, made_dirs, sha256_file
from nfedge.integer import MODES
from nfedge.models import GENERATORS
from nfedge.progress import DEFAULT, Progress
from nfedge.quant import check_bits
from nfedge.sram.calibration import DEFAULT_CALIBRATION, load_calibration
from nfedge.sram.image import QuantizeConfig
from nfedge.stages import RunPlanConfig
from nfedge.train.base import TrainBaseConfig
from nfedge.train.checkpoint import CHECKPOINT_FORMAT, load_torch_file, recorded_data
from nfedge.train.eopm import EOPMConfig

__all__ = ["STAGES", "RunConfig", "RunPlanConfig", "StageSpec", "check_base_data", "finished_stages", "load_run_config",
           "resolve_stages", "rewrite_report", "run_pipeline", "stage_key"]

TABLE_VOLTAGES = (1.0, 0.958, 0.917, 0.875, 0.833, 0.792)  # nominal down to ~5% BER (calibration table)
STAGES_FILE = "stages.json"
STAGES_FORMAT = "nfedge-run-stages"


@dataclasses.dataclass(frozen=True)
class RunConfig(StageConfig):
    # 55,000 of Fashion-MNIST's 60,000 training images (seeded): the plan stage searches its voltage on images that
    # trained neither the base model nor the generators (DESIGN "Operating points"), drawn from the other 5,000
    base: TrainBaseConfig = TrainBaseConfig(epochs=3, data=DataConfig(train_limit=55000))
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
    # your own base checkpoint (e.g. from import-model) instead of training `base`; the run takes the data set it
    # records (base.data only adds limits to it: see load_run_config)
    base_checkpoint: str | None = None
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


# ------------------------------------------------------------------------------------------------ the table


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """A stage of `nfedge run`: one row of STAGES."""

    name: str  # its directory prefix and log name (with a variant: gen-ConvT)
    inputs: tuple[str, ...]  # the earlier stages it reads: their directories reach `run`, their keys enter its key
    config: Callable[[RunConfig, str], StageConfig]  # its config dataclass, from the run config and its variant
    run: Callable[[Any, stages.Inputs, Path, Progress], dict[str, Any] | None]  # (config, inputs, out dir, progress)
    over: str | None = None  # a RunConfig list ("generators", "target_modes"): one stage per entry, its variant
    when: Callable[[RunConfig], bool] = lambda cfg: True  # whether this run has the stage at all

    def variants(self, cfg: RunConfig) -> tuple[str, ...]:
        return (tuple(getattr(cfg, self.over)) if self.over else ("",)) if self.when(cfg) else ()


def _evaluate_config(cfg: RunConfig, _: str) -> stages.EvaluateStageConfig:
    sweep = EvaluateConfig(voltages=cfg.voltages, chips=cfg.chips, fault=cfg.fault, calibration=cfg.calibration)
    return stages.EvaluateStageConfig(sweep=sweep, test_limit=cfg.eval_limit)


def _faultrun_config(cfg: RunConfig, _: str) -> FaultrunConfig:
    return FaultrunConfig(voltages=cfg.target_voltages, chips=cfg.target_chips, samples=cfg.target_samples,
                          fault=cfg.fault, calibration=cfg.calibration)


def _on_target(cfg: RunConfig) -> bool:
    return cfg.target != "none"


# In run order. Rows fanned out over the same list run variant by variant (build-integer, faultrun-integer,
# build-weight-only, ...), so the first mode's fault run reports before the next mode is built.
STAGES: tuple[StageSpec, ...] = (
    StageSpec("base", (), lambda cfg, _: cfg.base, stages.train_base_stage,
              when=lambda cfg: cfg.base_checkpoint is None),
    StageSpec("base", (), lambda cfg, _: stages.AdoptConfig(checkpoint=cfg.base_checkpoint, data=cfg.base.data,
                                                            bits=cfg.bits),
              stages.adopt_base_stage, when=lambda cfg: cfg.base_checkpoint is not None),
    StageSpec("image", ("base",), lambda cfg, _: QuantizeConfig(bits=cfg.bits), stages.quantize_stage),
    StageSpec("gen", ("base", "image"),
              lambda cfg, g: dataclasses.replace(cfg.eopm, generator=g, calibration=cfg.calibration),
              stages.train_generator_stage, over="generators"),
    StageSpec("plan", ("base", "image", "gen"),
              lambda cfg, _: stages.PlanStageConfig(plan=cfg.plan, fault=cfg.fault, calibration=cfg.calibration),
              stages.plan_stage, when=lambda cfg: cfg.plan.enabled),
    StageSpec("evaluate", ("base", "image", "gen"), _evaluate_config, stages.evaluate_stage),
    # a bundle holds the first generator (emulation is slow); every generator enters its key, as it always did
    StageSpec("build", ("base", "image", "gen"),
              lambda cfg, mode: BuildConfig(target=cfg.target, bits=cfg.bits, mode=mode),
              stages.build_stage, over="target_modes", when=_on_target),
    StageSpec("faultrun", ("build",), _faultrun_config, stages.faultrun_stage, over="target_modes", when=_on_target),
)
# What the report leaves out when it did not finish (a host/target disagreement still leaves a host report).
REPORT_OPTIONAL = ("plan", "build", "faultrun")


# --------------------------------------------------------------------------------------------------- keys


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _named_files(c: StageConfig) -> list[Any]:
    """The content of each file a stage config names, so that editing the file re-runs the stage: a user's data set
    (folder or npz), SRAM table, target descriptor, checkpoint (adopted, or a generator's init_from). Built-in names
    (a named data set, the default table, a descriptor in the package) are fixed releases and add nothing."""
    out: list[Any] = []
    for f in dataclasses.fields(c):
        v = getattr(c, f.name)
        if isinstance(v, DataConfig):
            digest = content_digest(v)
            out += [digest] if digest is not None else []
        elif isinstance(v, StageConfig):
            out += _named_files(v)
        elif f.name == "calibration" and v != DEFAULT_CALIBRATION:
            out.append(dataclasses.asdict(load_calibration(v)))
        elif f.name == "target" and (v.endswith(".toml") or "/" in v):
            out.append(load_target(v).to_dict() | {"source": None})  # its content, not where it lies
        elif f.name in ("checkpoint", "init_from") and v:
            out.append(sha256_file(v))
    return out


def stage_key(config: StageConfig, inputs: dict[str, Any]) -> str:
    """The cache key of every stage: its config's hash, the content of the files it names, its inputs' keys
    ({stage: key}, or [[variant, key], ...] in run order for a stage run once per generator)."""
    return _digest(config.config_hash(), _named_files(config), inputs)


@dataclasses.dataclass(frozen=True)
class PlannedStage:
    """A stage of one run, resolved: its config, the stages it reads and its key (its directory: name-key)."""

    spec: StageSpec
    variant: str
    config: StageConfig
    inputs: dict[str, Any]  # stage name -> PlannedStage, or {variant: PlannedStage}
    key: str

    @property
    def name(self) -> str:
        return f"{self.spec.name}-{self.variant}" if self.variant else self.spec.name

    @property
    def dir(self) -> str:
        return f"{self.name}-{self.key}"


def resolve_stages(cfg: RunConfig) -> list[PlannedStage]:
    """Every stage this config runs, in run order, each keyed by stage_key (no stage runs, no file is written)."""
    groups: list[list[StageSpec]] = []
    for spec in STAGES:
        if groups and spec.over is not None and groups[-1][0].over == spec.over:
            groups[-1].append(spec)
        else:
            groups.append([spec])
    done: dict[str, dict[str, PlannedStage]] = {}  # stage name -> {variant: stage}
    over = {s.name: s.over for s in STAGES}
    out = []
    for group in groups:
        for variant in group[0].variants(cfg):
            for spec in group:
                ins = {i: done[i][variant] if spec.over is not None and over[i] == spec.over
                       else done[i][""] if "" in done[i] else dict(done[i]) for i in spec.inputs}
                keys = {i: s.key if isinstance(s, PlannedStage) else [[v, t.key] for v, t in s.items()]
                        for i, s in ins.items()}
                config = spec.config(cfg, variant)
                out.append(PlannedStage(spec, variant, config, ins, stage_key(config, keys)))
                done.setdefault(spec.name, {})[variant] = out[-1]
    return out


def _dirs(root: Path, stages_: dict[str, Any]) -> stages.Inputs:
    return {n: root / s.dir if isinstance(s, PlannedStage) else {v: root / t.dir for v, t in s.items()}
            for n, s in stages_.items()}


# ------------------------------------------------------------------------------------------------ running


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
    with made_dirs(d):  # a stage that fails leaves no empty folder (one holding a resume point stays)
        t = time.time()
        info = fn(d) or {}
        seconds = time.time() - t
        atomic_write_json(done, {"stage": name, "key": key, "seconds": seconds, **info})
    log.append(Stage(name, d, False, seconds))
    return d


def run_pipeline(cfg: RunConfig, out_dir: str | Path, progress: Progress = DEFAULT) -> dict[str, Any]:
    """Run (or reuse) every stage; returns {"stages": [...], "summary": {...}, "report": path}."""
    check_base_data(cfg)  # also for a RunConfig built in Python, not read by load_run_config
    root = Path(out_dir)
    fresh = not root.exists()
    with made_dirs(root):
        try:
            return _run_stages(cfg, root, progress)
        except BaseException:
            # A new run that failed before any stage left something (a full disk in the first stage): no folder
            # holding only its run.json and stages.json either. A run with work in it stays, to be resumed.
            with contextlib.suppress(OSError):
                if fresh and sorted(p.name for p in root.iterdir()) == ["run.json", STAGES_FILE]:
                    for name in ("run.json", STAGES_FILE):
                        (root / name).unlink()
            raise


def _run_stages(cfg: RunConfig, root: Path, progress: Progress) -> dict[str, Any]:
    planned = resolve_stages(cfg)
    record = {"format": STAGES_FORMAT, "version": 1, "config": cfg.to_dict(),
              "stages": [{"name": p.name, "stage": p.spec.name, "variant": p.variant, "key": p.key, "dir": p.dir}
                         for p in planned]}
    # together: a report never pairs one config's run.json with another's stages
    atomic_write_files({root / "run.json": json_bytes(cfg.to_dict()), root / STAGES_FILE: json_bytes(record)})
    log: list[Stage] = []
    for p in planned:
        inputs = _dirs(root, p.inputs)
        run_stage(root, p.name, p.key, lambda d, p=p, inputs=inputs: p.spec.run(p.config, inputs, d, progress),
                  progress, log)
    report_dir = stages.report_stage(cfg, root, _finished(root, record["stages"]))
    summary = json.loads((report_dir / "summary.json").read_text())
    return {"stages": [dataclasses.asdict(s) | {"path": str(s.path)} for s in log], "summary": summary,
            "report": str(report_dir / "REPORT.md")}


def _finished(root: Path, recorded: list[dict[str, Any]]) -> stages.Inputs:
    """{stage: directory, or {variant: directory}} of a run's finished stages; a required one unfinished is an error."""
    found: stages.Inputs = {}
    for s in recorded:
        d = root / s["dir"]
        if not (d / "DONE.json").is_file():
            if s["stage"] in REPORT_OPTIONAL:
                continue
            raise NfedgeError(f"{root}: stage {s['name']} of this run has not finished ({s['dir']}); "
                              f"run `nfedge run` on this config again to finish it")
        if s["variant"]:
            found.setdefault(s["stage"], {})[s["variant"]] = d
        else:
            found[s["stage"]] = d
    return found


def rewrite_report(run_dir: str | Path) -> Path:
    """`nfedge report`: the report of the last `nfedge run` into run_dir, from the stages its stages.json names."""
    cfg, found = finished_stages(run_dir)
    return stages.report_stage(cfg, Path(run_dir), found)


def finished_stages(run_dir: str | Path) -> tuple[RunConfig, stages.Inputs]:
    """The config of the last `nfedge run` into run_dir and its finished stages' directories (stage name ->
    directory, or {variant: directory}), from its stages.json: never another config's newer folders."""
    root = Path(run_dir)
    path = root / STAGES_FILE
    if not path.is_file():
        if (root / "run.json").is_file():
            raise NfedgeError(f"{root} has no {STAGES_FILE} (written by an older nfedge): run `nfedge run` with its "
                              "config again to record this run's stages")
        raise NfedgeError(f"{root} is not an nfedge run directory (no run.json)")
    try:
        record = json.loads(path.read_text())
        if record.get("format") != STAGES_FORMAT or record.get("version") != 1:
            raise ValueError(f"format {record.get('format')!r} version {record.get('version')!r}")
        cfg, recorded = RunConfig.from_dict(record["config"]), list(record["stages"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise NfedgeError(f"{path} is not an nfedge run's stage list ({type(e).__name__}: {e})") from None
    return cfg, _finished(root, recorded)


# ------------------------------------------------------------------------------------------ the run config

# What a DataConfig says about the images a model sees. Its root may move (the data copied elsewhere, its content
# enters the keys), and its limits and seed only choose a subset, which a run may change.
_DATA_IDENTITY = ("dataset", "pad_to_32", "crop_roi")


def _check_base_data(checkpoint: str | Path, given: dict[str, Any]) -> DataConfig | None:
    """The checkpoint's recorded data set; a one-line error if `given` (base.data's fields) names other images.
    Only the checkpoint's metadata is read: rebuilding its model could import a user's class."""
    recorded = recorded_data(load_torch_file(checkpoint, "base checkpoint", CHECKPOINT_FORMAT))
    if recorded is None:
        return None
    for k in (k for k in _DATA_IDENTITY if k in given):
        mine, theirs = given[k], getattr(recorded, k)
        if (str(mine).lower() != theirs.lower()) if k == "dataset" else mine != theirs:  # a data set's name: any case
            raise NfedgeError(f"base.data.{k} is {given[k]!r}, but base checkpoint {checkpoint} was made with {k} "
                              f"{getattr(recorded, k)!r}: leave base.data.{k} out of the run config to use the "
                              "checkpoint's data set")
    if "root" not in given:
        recorded.check_recorded_root(f"base checkpoint {checkpoint}",
                                     "give base.data.root in the run config with the data's current path")
    return recorded


def check_base_data(cfg: RunConfig) -> None:
    """A one-line error unless a run on a user's checkpoint measures on the data set the checkpoint records."""
    if cfg.base_checkpoint is not None:
        _check_base_data(cfg.base_checkpoint, {k: getattr(cfg.base.data, k) for k in (*_DATA_IDENTITY, "root")})


def load_run_config(path: str | Path | None) -> RunConfig:
    if path is None:
        return RunConfig()
    p = Path(path)
    if not p.is_file():
        raise NfedgeError(f"run config {p} does not exist")
    d = json.loads(p.read_text())
    # A user's file may give only what differs from the default: merge onto the default config.
    merged = _merge(RunConfig().to_dict(), d)
    if merged.get("base_checkpoint") is not None:
        # The checkpoint records the data set it was trained or imported on: that, not the default Fashion-MNIST, is
        # what the run measures. Only the file says what the user gave (the merge filled in the default).
        base = d.get("base") if isinstance(d.get("base"), dict) else {}
        given = base.get("data") if isinstance(base.get("data"), dict) else {}
        recorded = _check_base_data(merged["base_checkpoint"], given)
        if recorded is not None and isinstance(merged.get("base"), dict):
            merged["base"]["data"] = {**recorded.to_dict(), **given}
    return RunConfig.from_dict(merged)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out
