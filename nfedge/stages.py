"""The pipeline's stage bodies: each reads the previous stages' files and writes its own directory."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from nfedge.analysis.energy import EnergyConfig, estimate_energy
from nfedge.analysis.evaluate import EvaluateConfig, evaluate
from nfedge.analysis.plan import plan_markdown, plan_operating_points
from nfedge.analysis.plan_plot import write_plot
from nfedge.analysis.report import write_report
from nfedge.data import load_dataset
from nfedge.deploy.compile.build import BuildConfig, build_bundle
from nfedge.deploy.run.faultrun import FaultrunConfig, faultrun
from nfedge.errors import NfedgeError
from nfedge.fileio import atomic_write_json, atomic_write_text, sha256_file
from nfedge.progress import Progress
from nfedge.sram.calibration import DEFAULT_CALIBRATION
from nfedge.sram.image import QuantizeConfig, quantize_to_image, read_image, write_image
from nfedge.train.base import train_base
from nfedge.train.checkpoint import load_checkpoint
from nfedge.train.eopm import load_generator, save_generator, train_generator
from nfedge.train.import_model import adopt_checkpoint


def train_base_stage(cfg, d: Path, progress: Progress) -> dict[str, Any]:
    path = train_base(cfg.base, d, progress)
    _, meta = load_checkpoint(path)
    return {"test_accuracy": meta["meta"]["test_accuracy"]}


def adopt_base_stage(cfg, d: Path, progress: Progress) -> dict[str, Any]:
    """The user's own base checkpoint instead of train-base (see nfedge.train.import_model.adopt_checkpoint)."""
    acc = adopt_checkpoint(cfg.base_checkpoint, cfg.base.data, cfg.bits, d / "base.pt", progress)
    return {"test_accuracy": acc, "adopted_from": str(cfg.base_checkpoint)}


def quantize_stage(base_dir: Path, cfg, d: Path) -> dict[str, Any]:
    model, _ = load_checkpoint(base_dir / "base.pt")
    image = quantize_to_image(model, QuantizeConfig(bits=cfg.bits), source_sha256=sha256_file(base_dir / "base.pt"))
    write_image(image, d / "image")
    return {"image_sha256": image.manifest.image_sha256, "bytes": image.manifest.total_bytes}


def train_generator_stage(cfg, name: str, base_dir: Path, image_dir: Path, d: Path, progress: Progress) -> dict[str, Any]:
    model, meta = load_checkpoint(base_dir / "base.pt")
    image = read_image(image_dir / "image")
    train, _, info = load_dataset(cfg.base.data)
    ecfg = dataclasses.replace(cfg.eopm, generator=name, calibration=cfg.calibration)
    gen, log = train_generator(ecfg, [(model, image)], train, info.channels, info.image_size, progress)
    meta = {"config": ecfg.to_dict(), **log, "image_sha256": image.manifest.image_sha256}
    save_generator(d / "generator.pt", gen, name, info.channels, info.image_size, meta)
    return {"steps": log["steps"]}


def test_tensors(cfg, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The test set (or its first `limit` images of a seeded subset): the same images on host and target."""
    data = dataclasses.replace(cfg.base.data, test_limit=limit) if limit is not None else cfg.base.data
    _, test, _ = load_dataset(data)
    return test.tensors


def _energy_base(cfg, base_dir: Path) -> str:
    """What `nfedge energy --base` counts: the registered model, or a user's model by its checkpoint."""
    return str(base_dir / "base.pt") if cfg.base_checkpoint else cfg.base.model


def plan_stage(cfg, base_dir: Path, image_dir: Path, gen_dirs: dict[str, Path], d: Path, progress: Progress) -> dict[str, Any]:
    """`nfedge plan` for the run: plan.json, plan.md (the Markdown table) and plan.png (ES against the floor)."""
    model, meta = load_checkpoint(base_dir / "base.pt")
    image = read_image(image_dir / "image")
    gens = {g: (g, load_generator(p / "generator.pt")[0]) for g, p in gen_dirs.items()}
    pcfg = cfg.plan.planner(base=_energy_base(cfg, base_dir), classes=int(meta["num_classes"]), fault=cfg.fault,
                            calibration=cfg.calibration)
    r = plan_operating_points(model, image, test_tensors(cfg, cfg.plan.test_limit), pcfg, generators=gens,
                              progress=progress)
    r["inputs"] = {"base": str(base_dir / "base.pt"), "image": str(image_dir / "image"),
                   "generators": {g: str(p / "generator.pt") for g, p in gen_dirs.items()}}
    atomic_write_json(d / "plan.json", r)
    atomic_write_text(d / "plan.md", plan_markdown(r) + "\n")
    write_plot(r, d / "plan.png")
    return {"winner": r["winner"], "floor": r["floor"], "samples": r["samples"]}


def evaluate_stage(cfg, base_dir: Path, image_dir: Path, gen_dirs: dict[str, Path], d: Path,
                   progress: Progress) -> dict[str, Any]:
    model, _ = load_checkpoint(base_dir / "base.pt")
    image = read_image(image_dir / "image")
    gens = {g: load_generator(p / "generator.pt")[0] for g, p in gen_dirs.items()}
    ecfg = EvaluateConfig(voltages=cfg.voltages, chips=cfg.chips, fault=cfg.fault, calibration=cfg.calibration)
    result = evaluate(model, image, test_tensors(cfg, cfg.eval_limit), ecfg, generators=gens, progress=progress)
    _, _, info = load_dataset(dataclasses.replace(cfg.base.data, train_limit=1, test_limit=1))
    shape = f"{info.channels}x{info.image_size[0]}x{info.image_size[1]}"
    base = _energy_base(cfg, base_dir)
    # The report takes the accesses and MACs and derives ES at its own voltage: any voltage inside the table will do.
    at = 0.833 if cfg.calibration == DEFAULT_CALIBRATION else min(cfg.voltages)
    result["energy"] = {g: estimate_energy(EnergyConfig(base=base, generator=g, input=shape, classes=info.num_classes,
                                                        voltage=at, calibration=cfg.calibration)) for g in gen_dirs}
    atomic_write_json(d / "evaluate.json", result)
    return {}


def report_stage(cfg, root: Path, base_dir: Path, image_dir: Path, gen_dirs: dict[str, Path], eval_dir: Path,
                 target_dirs: list[Path], plan_dir: Path | None = None) -> Path:
    """Always rewritten (cheap): the report reflects exactly the stages of this run, the plan first. The first
    on-target fault run (cfg.target_modes[0]) fills the on-target tables; every mode's instructions are compared."""
    host = json.loads((eval_dir / "evaluate.json").read_text())
    plan = json.loads((plan_dir / "plan.json").read_text()) if plan_dir is not None else None
    runs = [json.loads((d / "faultrun.json").read_text()) for d in target_dirs]
    target = runs[0] if runs else None
    _, meta = load_checkpoint(base_dir / "base.pt")
    steps = f"{cfg.eopm.max_steps} steps" if cfg.eopm.max_steps else f"{cfg.eopm.epochs} epoch(s)"
    origin = f"of the user's checkpoint `{cfg.base_checkpoint}`" if cfg.base_checkpoint else "after QAT"
    header = (f"Base model `{meta['model']}` on `{cfg.base.data.dataset}` ({cfg.bits}-bit weights, clean test accuracy "
              f"{100 * meta['meta']['test_accuracy']:.2f}% {origin}); generators {', '.join(cfg.generators)} trained with "
              f"EOPM at BER {cfg.eopm.ber} ({cfg.eopm.fault}), N = {cfg.eopm.n_perturbed}, lambda = {cfg.eopm.lam}, "
              f"{steps} of batch {cfg.eopm.batch_size}. On-target rows use their own {cfg.target_samples} test images, so "
              "they are compared with the host on those same images, not with the sweep above. Run config: `run.json`.")
    return write_report(host, target, root / "report", header=header, more_targets=runs[1:], plan=plan)


def build_stage(cfg, base_dir: Path, image_dir: Path, gen_dirs: dict[str, Path], d: Path, progress: Progress,
                mode: str = "weight-only") -> dict:
    """Build for the run's target with its first generator (emulation is slow: one generator on target)."""
    gen = gen_dirs[cfg.generators[0]] / "generator.pt"
    b = build_bundle(BuildConfig(target=cfg.target, bits=cfg.bits, mode=mode), base_dir / "base.pt", image_dir / "image",
                     gen, d / "bundle", progress)
    return {"target": b.target.name, "mode": mode}


def faultrun_stage(cfg, build_dir: Path, d: Path, progress: Progress) -> dict:
    fcfg = FaultrunConfig(voltages=cfg.target_voltages, chips=cfg.target_chips, samples=cfg.target_samples, fault=cfg.fault,
                          calibration=cfg.calibration)
    r = faultrun(build_dir / "bundle", None, fcfg, progress, trust_bundle_code=True)  # this run built the bundle
    atomic_write_json(d / "faultrun.json", r)
    if not r["agreement"]["passed"]:
        raise NfedgeError(f"host and target disagree ({100 * r['agreement']['min_identical_fraction']:.2f}% identical)")
    return {"agreement": r["agreement"]}
