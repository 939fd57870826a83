"""The tasks evaluate and plan ship to an executor (nfedge.executor): pure functions of content-addressed inputs.

One `ScoringWork` per sweep (the model, its clean images, the image sets, the generators, the fault settings) is
shared once; every task names a chip and a voltage and returns a few numbers. A worker builds its ImageScorers from
the work once (nfedge.executor keeps them per worker process) and injects the faulty image itself, with the same
code and the same InjectConfig as the in-process sweep: the same bytes, so the same accuracies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nfedge.sram.faults import InjectConfig, inject_faults
from nfedge.sram.image import WeightImage
from nfedge.sram.sweep import MAP_CHIP


@dataclasses.dataclass(frozen=True)
class ScoringWork:
    scorer: type  # analysis.evaluate.ImageScorer (passed in: evaluate imports this module)
    model: nn.Module
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]  # "test" (and "val" when it is another image set)
    generators: dict[str, nn.Module]
    batch_size: int
    images: dict[int, WeightImage]  # the clean image (key 0) and any requantized ones (key: bits)
    calibration: str  # the table's name, or the TOML path it was read from on the driver
    calibration_text: str | None = None  # a TOML file's text (a worker elsewhere does not have the file)
    programs: dict[str, Any] | None = None  # evaluate's integer mode: the calibrated integer programs


def portable_calibration(name: str) -> str | None:
    """The text of a calibration TOML file (None for a built-in table, which every nfedge install has)."""
    p = Path(name)
    return p.read_text() if p.suffix == ".toml" or p.is_file() else None


def _calibration_here(work: ScoringWork) -> str:
    """The calibration to name on this worker: the built-in name, or the shipped text in a file named by its hash."""
    if work.calibration_text is None:
        return work.calibration
    digest = hashlib.sha256(work.calibration_text.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"nfedge-calibration-{digest}.toml"
    if not path.is_file():
        tmp = path.with_suffix(f".{id(work):x}.part")
        tmp.write_text(work.calibration_text)
        tmp.replace(path)  # atomic: another worker on this machine may be writing the same file
    return str(path)


def build_context(work: ScoringWork) -> dict[str, Any]:
    """A worker's scorers (one per image set) and where its calibration table is."""
    scorers = {name: work.scorer(work.model, data, work.generators, work.batch_size, work.programs)
               for name, data in work.splits.items()}
    scorers.setdefault("val", scorers["test"])  # no validation split: the search scores the test images
    return {"work": work, "scorers": scorers, "calibration": _calibration_here(work)}


def _portable(icfg: InjectConfig, ctx: dict[str, Any]) -> InjectConfig:
    return icfg if ctx["calibration"] == icfg.calibration else dataclasses.replace(icfg, calibration=ctx["calibration"])


def plan_cell(ctx: dict[str, Any], item: tuple) -> list[tuple[float, tuple, dict[str, Any] | None]]:
    """(split, voltage, chip, options, fault settings): per option (accuracy %, the scored image's key (sha256, bits,
    inputs), its protection audit). Options reading the same layout share one faulty image, as in-process."""
    split, v, chip, options, (fault, stuck_at_one, ecc_policy) = item
    work: ScoringWork = ctx["work"]
    icfg = _portable(InjectConfig(fault=fault, voltage=v, chip=chip, stuck_at_one=stuck_at_one,
                                  calibration=work.calibration), ctx)
    made: dict[tuple, tuple[WeightImage, dict[str, Any] | None]] = {}
    out = []
    for o in options:
        if o.image_key() not in made:
            made[o.image_key()] = o.inject(work.images, icfg, ecc_policy)
        img, audit = made[o.image_key()]
        key = (img.manifest.image_sha256, img.manifest.bits, o.inputs)
        out.append((ctx["scorers"][split].accuracy(img, o.inputs), key, audit))
    return out


def evaluate_image(ctx: dict[str, Any], item: tuple) -> tuple[float, dict[str, float]]:
    """One image of an evaluate sweep, ("inject", InjectConfig) or ("image", a faulty WeightImage): PA and PA(NF)
    per generator (%)."""
    how, what = item
    work: ScoringWork = ctx["work"]
    img = inject_faults(work.images[0], _portable(what, ctx))[0] if how == "inject" else what
    score = ctx["scorers"]["test"]
    return score.accuracy(img, None), {n: score.accuracy(img, n) for n in work.generators}


def evaluate_on(executor, scorer: type, model: nn.Module, image: WeightImage, test: tuple[torch.Tensor, torch.Tensor], cfg,
                generators: dict[str, nn.Module], programs: dict[str, Any] | None, bar):
    """evaluate's sweep on an executor: (condition index, condition, chip, PA, {generator: PA(NF)}) per image, in
    the order of nfedge.sram.sweep.faulty_images. Workers inject the emulated chips themselves; a measured fault map's
    image (its file is on this machine) and the ready images travel as bytes."""
    ready = cfg.read_ready_images(image)  # checked before any work is done
    jobs, items, conds = [], [], cfg.conditions()
    for i, cond in enumerate(conds):
        for chip in cfg.chip_labels():
            icfg = cfg.inject_config(cond, 0 if chip == MAP_CHIP else chip)
            jobs.append((i, cond, chip))
            items.append(("image", inject_faults(image, icfg)[0]) if cfg.fault == "map" else ("inject", icfg))
    for j, (cond, img) in enumerate(ready):
        jobs.append((len(conds) + j, cond, cond["image"]))
        items.append(("image", img))
    work = ScoringWork(scorer, model, {"test": test}, generators, cfg.batch_size, {0: image}, cfg.calibration,
                       portable_calibration(cfg.calibration), programs)
    shared = executor.share(work, build_context)
    for (i, cond, chip), (pa, pa_nf) in zip(jobs, executor.imap(evaluate_image, shared, items, bar)):
        yield i, cond, chip, pa, pa_nf
