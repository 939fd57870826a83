"""The stages `nfedge run` chains: each is one function `run(config, inputs, out_dir, progress)` over its own config
dataclass. `inputs` maps each earlier stage it reads to that stage's directory ({variant: directory} for a stage run
once per generator or target mode); a stage reads their files and writes its own directory. The run's table
(nfedge.pipeline.STAGES) says which config and inputs each stage gets; everything but the config is read from the
inputs' files (the data set from the base checkpoint), so the config and the inputs' keys are all a stage depends on.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from nfedge.analysis.energy import EnergyConfig, estimate_energy
from nfedge.analysis.evaluate import EvaluateConfig, evaluate
from nfedge.analysis.plan import PlanConfig, plan_operating_points
from nfedge.analysis.plan_plot import plot_png
from nfedge.analysis.plan_table import plan_markdown
from nfedge.analysis.split import base_training_data, validation_split
from nfedge.analysis.report import write_report
from nfedge.config import StageConfig, require
from nfedge.data import DataConfig, load_dataset
from nfedge.deploy.compile.build import BuildConfig, build_bundle
from nfedge.deploy.run.faultrun import FaultrunConfig, faultrun
from nfedge.errors import NfedgeError
from nfedge.fileio import atomic_write_files, atomic_write_json, json_bytes, sha256_file
from nfedge.progress import Progress
from nfedge.quant import check_bits
from nfedge.sram.calibration import DEFAULT_CALIBRATION
from nfedge.sram.image import QuantizeConfig, quantize_to_image, read_image, write_image
from nfedge.train.base import TrainBaseConfig, train_base
from nfedge.train.checkpoint import checkpoint_data, load_checkpoint
from nfedge.train.eopm import EOPMConfig, load_generator, save_generator, train_generator
from nfedge.train.import_model import adopt_checkpoint

Inputs = dict[str, Any]  # stage name -> its directory, or {variant: directory} in run order


@dataclasses.dataclass(frozen=True)
class RunPlanConfig(StageConfig):
    """The plan stage: `nfedge plan` on the run's base model, its image and every generator (docs/PLANNER.md)."""

    CONFIG_VERSION = 2  # 2: certified 95/95 (confidence), a validation split, more protections, fixed voltages

    enabled: bool = True
    floor_drop: float = 2.0  # the floor: the base model's clean accuracy minus this many points
    quantile: float = 0.05  # at least (1 - quantile) of chips must keep the floor ...
    confidence: float = 0.95  # ... with this confidence: the worst of 59 chips (nfedge.analysis.certify)
    chips: int = 59  # search chips 0..chips-1
    confirm_chips: int = 59  # fresh chips: the acceptance test (0 of 59 below the floor) and the fixed voltages
    # Test images (a seeded subset; None: the whole set) and validation images (held out of training, seeded by
    # val_seed), sized for the main job on 2 cores (docs/PLANNER.md: the plan stage's measured time).
    test_limit: int | None = 1000
    val_images: int = 1000
    val_seed: int = 0
    curve_step: float = 0.02  # the plot's voltage grid (V/Vmin), over curve_chips search chips (not certified)
    curve_chips: int = 10
    ecc: bool = True  # plan the base model behind SECDED (72,64) too
    parity: bool = True
    msb: tuple[int, ...] = (1, 2)
    fewer_bits: tuple[int, ...] = (4,)
    generator_msb: int = 2
    voltages: tuple[float, ...] = (0.875,)  # fixed voltages: every option's certified accuracy there

    def validate(self) -> None:
        require(self.test_limit is None or (isinstance(self.test_limit, int) and self.test_limit >= 1),
                f"plan.test_limit must be a number of test images >= 1 or null, got {self.test_limit!r}")
        require(isinstance(self.val_images, int) and self.val_images >= 1,
                f"plan.val_images must be a number of validation images >= 1, got {self.val_images!r}")
        self.planner()  # PlanConfig's checks (quantile and confidence in (0, 1), enough chips, ...)

    def planner(self, base: str = "cnn-s", classes: int = 10, fault: str = "flip",
                calibration: str = DEFAULT_CALIBRATION) -> PlanConfig:
        return PlanConfig(base=base, classes=classes, floor_drop=self.floor_drop, quantile=self.quantile,
                          confidence=self.confidence, chips=self.chips, confirm_chips=self.confirm_chips, fault=fault,
                          calibration=calibration, ecc=self.ecc, parity=self.parity, msb=self.msb,
                          fewer_bits=self.fewer_bits, generator_msb=self.generator_msb, voltages=self.voltages,
                          curve=True, curve_step=self.curve_step, curve_chips=min(self.curve_chips, self.chips))


@dataclasses.dataclass(frozen=True)
class AdoptConfig(StageConfig):
    """The base stage from a user's checkpoint (e.g. from import-model) instead of training one."""

    checkpoint: str  # its path (its content enters the stage key)
    data: DataConfig = DataConfig()  # the test set its accuracy is measured on, recorded in the run's copy
    bits: int = 8

    def validate(self) -> None:
        require(isinstance(self.checkpoint, str) and bool(self.checkpoint), "the base checkpoint's path is empty")
        check_bits(self.bits)


@dataclasses.dataclass(frozen=True)
class PlanStageConfig(StageConfig):
    plan: RunPlanConfig = RunPlanConfig()
    fault: str = "flip"
    calibration: str = DEFAULT_CALIBRATION


@dataclasses.dataclass(frozen=True)
class EvaluateStageConfig(StageConfig):
    sweep: EvaluateConfig  # voltages x chips, fault model, SRAM table
    test_limit: int | None = None  # a seeded subset of the test set (None: all of it)


def train_base_stage(c: TrainBaseConfig, inputs: Inputs, d: Path, progress: Progress) -> dict[str, Any]:
    path = train_base(c, d, progress)
    _, meta = load_checkpoint(path)
    return {"test_accuracy": meta["meta"]["test_accuracy"]}


def adopt_base_stage(c: AdoptConfig, inputs: Inputs, d: Path, progress: Progress) -> dict[str, Any]:
    """The user's own base checkpoint instead of train-base (see nfedge.train.import_model.adopt_checkpoint)."""
    acc = adopt_checkpoint(c.checkpoint, c.data, c.bits, d / "base.pt", progress)
    return {"test_accuracy": acc, "adopted_from": c.checkpoint}


def quantize_stage(c: QuantizeConfig, inputs: Inputs, d: Path, progress: Progress) -> dict[str, Any]:
    base = inputs["base"] / "base.pt"
    model, _ = load_checkpoint(base)
    image = quantize_to_image(model, c, source_sha256=sha256_file(base))
    write_image(image, d / "image")
    return {"image_sha256": image.manifest.image_sha256, "bytes": image.manifest.total_bytes}


def _base(inputs: Inputs) -> tuple[torch.nn.Module, dict[str, Any], DataConfig]:
    """The base model, its checkpoint metadata and the data set it records (train-base's, or the adopted one's)."""
    model, meta = load_checkpoint(inputs["base"] / "base.pt")
    return model, meta, checkpoint_data(meta, inputs["base"] / "base.pt")


def train_generator_stage(c: EOPMConfig, inputs: Inputs, d: Path, progress: Progress) -> dict[str, Any]:
    model, _, data = _base(inputs)
    image = read_image(inputs["image"] / "image")
    train, _, info = load_dataset(data)
    gen, log = train_generator(c, [(model, image)], train, info.channels, info.image_size, progress)
    meta = {"config": c.to_dict(), **log, "image_sha256": image.manifest.image_sha256}
    save_generator(d / "generator.pt", gen, c.generator, info.channels, info.image_size, meta)
    return {"steps": log["steps"]}


def test_tensors(data: DataConfig, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The test set (or its first `limit` images of a seeded subset): the same images on host and target."""
    _, test, _ = load_dataset(dataclasses.replace(data, test_limit=limit) if limit is not None else data)
    return test.tensors


def _energy_base(inputs: Inputs, meta: dict[str, Any]) -> str:
    """What `nfedge energy --base` counts: the registered model, or a user's model by its checkpoint."""
    return str(inputs["base"] / "base.pt") if meta["meta"].get("adopted_from") else meta["model"]


def plan_stage(c: PlanStageConfig, inputs: Inputs, d: Path, progress: Progress) -> dict[str, Any]:
    """`nfedge plan` for the run: plan.json, plan.md (the Markdown table) and plan.png (ES against the floor)."""
    model, meta, data = _base(inputs)
    image = read_image(inputs["image"] / "image")
    gens = {g: (g, load_generator(p / "generator.pt")[0]) for g, p in inputs["gen"].items()}
    pcfg = c.plan.planner(base=_energy_base(inputs, meta), classes=int(meta["num_classes"]), fault=c.fault,
                          calibration=c.calibration)
    # the run's generators train on the base checkpoint's data set (train_generator_stage): one subset to avoid. An
    # adopted checkpoint's training images are unknown: the search then runs on the test images (recorded as such)
    trained = base_training_data(meta)
    val, split = validation_split(data, [trained], c.plan.val_images, c.plan.val_seed) if trained else (None, None)
    r = plan_operating_points(model, image, test_tensors(data, c.plan.test_limit), pcfg, generators=gens,
                              progress=progress, validation=val, split_record=split)
    r["inputs"] = {"base": str(inputs["base"] / "base.pt"), "image": str(inputs["image"] / "image"),
                   "generators": {g: str(p / "generator.pt") for g, p in inputs["gen"].items()},
                   "data": dataclasses.replace(data, test_limit=c.plan.test_limit).to_dict()}
    # the three files or none: a stage that fails (a full disk) leaves an empty folder, which run_stage removes
    atomic_write_files({d / "plan.json": json_bytes(r), d / "plan.md": (plan_markdown(r) + "\n").encode(),
                        d / "plan.png": plot_png(r)})
    return {"winner": r["winner"], "floor": r["floor"], "samples": r["samples"]}


def evaluate_stage(c: EvaluateStageConfig, inputs: Inputs, d: Path, progress: Progress) -> dict[str, Any]:
    model, meta, data = _base(inputs)
    image = read_image(inputs["image"] / "image")
    gens = {g: load_generator(p / "generator.pt")[0] for g, p in inputs["gen"].items()}
    result = evaluate(model, image, test_tensors(data, c.test_limit), c.sweep, generators=gens, progress=progress)
    _, _, info = load_dataset(dataclasses.replace(data, train_limit=1, test_limit=1))
    shape = f"{info.channels}x{info.image_size[0]}x{info.image_size[1]}"
    base = _energy_base(inputs, meta)
    # The report takes the accesses and MACs and derives ES at its own voltage: any voltage inside the table will do.
    cal = c.sweep.calibration
    at = 0.833 if cal == DEFAULT_CALIBRATION else min(c.sweep.voltages)
    result["energy"] = {g: estimate_energy(EnergyConfig(base=base, generator=g, input=shape, classes=info.num_classes,
                                                        voltage=at, calibration=cal)) for g in gens}
    atomic_write_json(d / "evaluate.json", result)
    return {}


def build_stage(c: BuildConfig, inputs: Inputs, d: Path, progress: Progress) -> dict[str, Any]:
    """Build for the run's target with its first generator (emulation is slow: one generator on target)."""
    gen = next(iter(inputs["gen"].values())) / "generator.pt"
    b = build_bundle(c, inputs["base"] / "base.pt", inputs["image"] / "image", gen, d / "bundle", progress)
    return {"target": b.target.name, "mode": c.mode}


def faultrun_stage(c: FaultrunConfig, inputs: Inputs, d: Path, progress: Progress) -> dict[str, Any]:
    r = faultrun(inputs["build"] / "bundle", None, c, progress, trust_bundle_code=True)  # this run built the bundle
    atomic_write_json(d / "faultrun.json", r)
    if not r["agreement"]["passed"]:
        raise NfedgeError(f"host and target disagree ({100 * r['agreement']['min_identical_fraction']:.2f}% identical)")
    return {"agreement": r["agreement"]}


def report_stage(cfg, root: Path, found: Inputs) -> Path:
    """Always rewritten (cheap) from this run's stages (`found`: stage name -> directory, as a stage's inputs; plan
    and faultrun only where they finished), the plan first. The first on-target fault run (cfg.target_modes[0])
    fills the on-target tables; every mode's instructions are compared."""
    host = json.loads((found["evaluate"] / "evaluate.json").read_text())
    plan = json.loads((found["plan"] / "plan.json").read_text()) if found.get("plan") else None
    runs = [json.loads((p / "faultrun.json").read_text()) for p in found.get("faultrun", {}).values()]
    target = runs[0] if runs else None
    _, meta, data = _base(found)
    steps = f"{cfg.eopm.max_steps} steps" if cfg.eopm.max_steps else f"{cfg.eopm.epochs} epoch(s)"
    origin = f"of the user's checkpoint `{cfg.base_checkpoint}`" if cfg.base_checkpoint else "after QAT"
    header = (f"Base model `{meta['model']}` on `{data.dataset}` ({cfg.bits}-bit weights, clean test accuracy "
              f"{100 * meta['meta']['test_accuracy']:.2f}% {origin}); generators {', '.join(cfg.generators)} trained with "
              f"EOPM at BER {cfg.eopm.ber} ({cfg.eopm.fault}), N = {cfg.eopm.n_perturbed}, lambda = {cfg.eopm.lam}, "
              f"{steps} of batch {cfg.eopm.batch_size}. On-target rows use their own {cfg.target_samples} test images, so "
              "they are compared with the host on those same images, not with the sweep above. Run config: `run.json`.")
    return write_report(host, target, root / "report", header=header, more_targets=runs[1:], plan=plan)
