"""`nfedge faultrun`: a bundle's compiled models on the (emulated) target against undervolted SRAM.

A bundle (nfedge.deploy.compile.build.build_bundle) keeps the two checkpoints (host/), so faultrun can run the
host simulation of exactly the same bytes. For every voltage (or BER) and chip, faultrun injects faults into the
bundle's clean image, runs the target in its emulator with that image at its address (parallel emulator
processes), runs the host simulation on the same bytes, and compares: accuracy on both sides (mean, std, worst chip), agreement (fraction of
identical predictions, largest logit difference), instructions per inference (deterministic QEMU
-icount counts) for generator and base model, an estimated time at the descriptor's clock, ES and MAC-ES.
"""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nfedge.analysis.energy import EnergyConfig, estimate_energy
from nfedge.analysis.evaluate import summarize
from nfedge.config import require
from nfedge.data import load_dataset
from nfedge.deploy.bundle import Bundle, load_bundle
from nfedge.deploy.run.harness import check_runnable, run_on_target
from nfedge.deploy.run.remote import target_runs
from nfedge.errors import NfedgeError
from nfedge.fileio import sha256_file
from nfedge.integer.calibrate import INPUT_SCALE
from nfedge.integer.program import program_from_dict
from nfedge.integer.reference import image_codes, run_front, run_integer
from nfedge.integer.scheme import quantize_to_int8
from nfedge.models.generators import neuralfuse_transform
from nfedge.progress import DEFAULT, Progress
from nfedge.sram.image import read_image
from nfedge.sram.sweep import FaultSweep, condition_label, faulty_images
from nfedge.train.checkpoint import checkpoint_data, load_checkpoint
from nfedge.train.eopm import load_generator

BASE = "base"


@dataclasses.dataclass(frozen=True)
class FaultrunConfig(FaultSweep):
    """Which faulty images (nfedge.sram.sweep.FaultSweep) and how many test images run on target and host."""

    chips: int = 3  # emulated chips 0..chips-1 per voltage (1 with a fault map)
    samples: int = 32  # test images per chip (the same images on every chip, host and target)
    min_agreement: float = 0.99  # fail when fewer predictions are identical on host and target
    jobs: int = 2  # emulator processes in parallel
    timeout_s: float = 900.0  # per emulator process
    sample_seed: int = 0  # which test images

    def validate(self) -> None:
        super().validate()
        require(self.samples >= 1 and self.jobs >= 1, "samples and jobs must be >= 1")
        require(0.0 <= self.min_agreement <= 1.0, "min_agreement must be in [0, 1]")
        require(self.timeout_s > 0, "timeout_s must be > 0")


def _host_logits(model, weights, gen, x) -> tuple[np.ndarray, np.ndarray | None]:
    with torch.no_grad():
        base = torch.func.functional_call(model, weights, (x,)).numpy()
        nf = torch.func.functional_call(model, weights, (neuralfuse_transform(gen, x),)).numpy() if gen is not None else None
    return base, nf


def _host_integers(programs, image, x_q) -> tuple[np.ndarray, np.ndarray | None]:
    """Integer mode: the exact reference's int32 logits of base(x) and base(F(x)) on `image`'s codes."""
    base = programs["base"]
    codes = image_codes(base, image)
    nf = run_integer(base, run_front(programs["generator"], x_q), codes) if "generator" in programs else None
    return run_integer(base, x_q, codes), nf


def _bundle_programs(bundle: Bundle) -> dict:
    """The integer programs the bundle was built from (verified with its other files by load_bundle)."""
    return {name: program_from_dict(json.loads((bundle.path / "integer" / f"{name}.json").read_text()),
                                    f"bundle {bundle.path}: integer/{name}.json")
            for name in ("base", "generator") if (bundle.path / "integer" / f"{name}.json").is_file()}


def _agreement(a: list[np.ndarray], b: list[np.ndarray]) -> dict[str, float]:
    a_, b_ = np.concatenate(a), np.concatenate(b)
    return {"identical_fraction": float((a_.argmax(1) == b_.argmax(1)).mean()),
            "identical_outputs": float((a_ == b_).all(axis=1).mean()),  # every output number, bit for bit
            "max_logit_diff": float(np.abs(a_.astype(np.float64) - b_.astype(np.float64)).max())}


def faultrun(bundle_dir: str | Path, test: tuple[torch.Tensor, torch.Tensor] | None, cfg: FaultrunConfig,
             progress: Progress = DEFAULT, allow_emulator: str | Path | None = None,
             trust_bundle_code: bool = False, data_root: str | None = None, executor: Any = None) -> dict[str, Any]:
    """Run every (condition, chip) on target and host; returns the JSON-ready result (see module doc). Without
    `test`, the test images come from the data set the checkpoint records (its root replaced by `data_root`).
    `executor`: None, cfg.jobs emulator processes here; a Ray executor (nfedge.executor), the emulator runs on its
    workers (the bundle shipped as bytes, nfedge.deploy.run.remote); the host side runs here either way."""
    bundle = load_bundle(bundle_dir)
    if bundle.kind == "ethos-u":  # Vela's output runs on the NPU only, and no NPU or emulator of one exists here
        raise NfedgeError(f"bundle {bundle.path} is for {bundle.target.name}, an Ethos-U NPU, and no Ethos-U emulator "
                          "exists here (Corstone FVPs need an EULA download; QEMU has none): what checks it is the TOSA "
                          "reference model against the integer reference (tests/integer/test_tosa.py) and Vela's report "
                          "in the bundle (npu/*_summary.csv, manifest 'npu'); see docs/NPU.md")
    check_runnable(bundle, allow_emulator, trust_bundle_code)  # refuse before reading anything else of the bundle
    model, meta = load_checkpoint(bundle.path / "host" / "base.pt", allow_code=trust_bundle_code)
    gen_path = bundle.path / "host" / "generator.pt"
    gen, gmeta = load_generator(gen_path) if gen_path.is_file() else (None, None)
    gen_name = gmeta["generator"] if gmeta else None
    clean = read_image(bundle.path / "image")
    if test is None:
        data = checkpoint_data(meta, bundle.path / "host" / "base.pt", data_root)
        _, t, _ = load_dataset(dataclasses.replace(data, test_limit=cfg.samples, seed=cfg.sample_seed))
        test = t.tensors
    x, y = test[0][: cfg.samples], test[1][: cfg.samples]
    integer = bundle.mode == "integer"
    # integer mode: the target takes int8 samples, quantized once here (docs/INTEGER.md); host = the exact reference
    x_target = quantize_to_int8(x.numpy(), INPUT_SCALE) if integer else x.numpy()
    # Each faulty image is made (or read) once: the same bytes go to the emulator and to the host simulation.
    images, conds, chips = {}, {}, {}
    for i, cond, chip, img in faulty_images(clean, cfg):
        images[(i, chip)] = img
        conds[i] = cond
        chips.setdefault(i, []).append(chip)
    if integer:
        programs = _bundle_programs(bundle)
        host = lambda img: _host_integers(programs, img, x_target)  # noqa: E731
    else:
        host = lambda img: _host_logits(model, img.dequantized_weights(), gen, x)  # noqa: E731
    outs = _run_everywhere(bundle, cfg, images, conds, chips, x_target, host, progress, allow_emulator, trust_bundle_code,
                           executor)
    names = [BASE] + ([gen_name] if gen is not None else [])
    results, instr = _compare(conds, chips, outs, names, y.numpy())
    ipi = {k: (int(np.mean(v)) if v else None) for k, v in instr.items()}
    if ipi["generator"] and ipi["base"]:
        ipi["generator_overhead"] = ipi["generator"] / ipi["base"]
    clock = bundle.target.clock_hz
    est = {k: (v / clock if v and clock else None) for k, v in ipi.items() if k in ("base", "generator", "base_nf")}
    identical = min(r["agreement"][n]["identical_fraction"] for r in results for n in names)
    exact = min(r["agreement"][n]["identical_outputs"] for r in results for n in names)
    # integer mode is exact by construction: any output integer that differs is a failure, whatever the argmax says
    passed = identical >= cfg.min_agreement and (exact == 1.0 or not integer)
    base_ref = str(bundle.path / "host" / "base.pt") if meta.get("source") else meta["model"]  # imported: by path
    return {"config": cfg.to_dict(), "mode": bundle.mode, "target": bundle.target.name, "bits": clean.manifest.bits,
            "bundle_manifest_sha256": sha256_file(bundle.path / "manifest.json"),  # which build these numbers are of
            "chips": cfg.chips,
            "samples": int(len(x)), "voltage": [r["voltage"] for r in results], "ber": [r["ber"] for r in results],
            "generator": gen_name, "results": results,
            "target_accuracy": {condition_label(r): r["target_accuracy"] for r in results},
            "host_accuracy": {condition_label(r): r["host_accuracy"] for r in results},
            "agreement": {"min_identical_fraction": identical,
                          "max_logit_diff": max(r["agreement"][n]["max_logit_diff"] for r in results for n in names),
                          "identical_outputs": exact, "threshold": cfg.min_agreement, "passed": passed},
            "instructions_per_inference": ipi, "estimated_seconds_per_inference": est,
            "estimate_note": "instructions / clock at 1 instruction per cycle (an estimate: QEMU counts instructions, not cycles)",
            "energy_saving": _energy_saving(results, bundle, base_ref, gen_name, cfg) if gen_name else None}


def _run_everywhere(bundle: Bundle, cfg: FaultrunConfig, images: dict, conds: dict, chips: dict, x_target: np.ndarray,
                    host, progress: Progress, allow_emulator, trust_bundle_code: bool, executor=None) -> dict:
    """{(condition, chip): (target result, host base logits, host NeuralFuse logits)}: the emulator runs in parallel
    processes (threads only wait on them); the host side runs in the main thread as results arrive."""
    jobs = [(i, conds[i], chip) for i in conds for chip in chips[i]]

    def where(cond, chip) -> str:
        return (f"image {cond['image']}" if cond.get("image") else f"chip {chip} at "
                + (f"{cond['voltage']} V/Vmin" if cond["voltage"] is not None else f"BER {cond['ber']}"))

    def on_target(job):
        i, cond, chip = job
        try:
            return run_on_target(bundle, images[(i, chip)].codes.tobytes(), x_target, timeout_s=cfg.timeout_s, verify=False,
                                 allow_emulator=allow_emulator, trust_bundle_code=trust_bundle_code)
        except NfedgeError as e:
            raise NfedgeError(f"{where(cond, chip)}: {e}") from None

    outs = {}
    bar = progress.manual(f"faultrun on {bundle.target.name}", total=len(jobs), unit="run")
    with ThreadPoolExecutor(max_workers=cfg.jobs) as pool:
        if executor is None:
            runs = pool.map(on_target, jobs)
        else:  # the executor's bar update is the one per run; the host side below only reads results
            runs = target_runs(executor, bundle, [(images[(i, chip)].codes.tobytes(), where(cond, chip))
                                                  for i, cond, chip in jobs], x_target, cfg.timeout_s,
                               allow_emulator, trust_bundle_code, bar)
        for (i, _, chip), res in zip(jobs, runs):
            # functional_call swaps module parameters in place: never run the host side from two threads at once
            outs[(i, chip)] = (res, *host(images[(i, chip)]))
            if executor is None:
                bar.update(1)
    bar.close()
    return outs


def _compare(conds: dict, chips: dict, outs: dict, names: list[str], y: np.ndarray) -> tuple[list[dict], dict[str, list[int]]]:
    """Per condition: accuracy on target and host (over chips), their agreement; and every instruction count."""
    results = []
    instr: dict[str, list[int]] = {"base": [], "generator": [], "base_nf": []}
    for i, cond in conds.items():
        tgt = {n: [] for n in names}
        host = {n: [] for n in names}
        logits = {n: ([], []) for n in names}
        for chip in chips[i]:
            res, hb, hn = outs[(i, chip)]
            pairs = {BASE: (res.logits_base, hb)}
            if len(names) > 1:
                pairs[names[1]] = (res.logits_nf, hn)
            for n, (t_l, h_l) in pairs.items():
                tgt[n].append(100.0 * float((t_l.argmax(1) == y).mean()))
                host[n].append(100.0 * float((h_l.argmax(1) == y).mean()))
                logits[n][0].append(t_l)
                logits[n][1].append(h_l)
            for k, v in (("base", res.instructions_base), ("generator", res.instructions_generator),
                         ("base_nf", res.instructions_base_nf)):
                if v is not None:
                    instr[k].extend(int(a) for a in v)
        results.append({**cond, "chips": chips[i], "target_accuracy": {n: summarize(v) for n, v in tgt.items()},
                        "host_accuracy": {n: summarize(v) for n, v in host.items()},
                        "agreement": {n: _agreement(*logits[n]) for n in names}})
    return results, instr


def _energy_saving(results: list[dict], bundle: Bundle, base_ref: str, gen_name: str, cfg: FaultrunConfig) -> dict:
    """ES and MAC-ES (paper Eq. 6, 7) at every voltage condition, for the bundle's base model and generator."""
    shape = "x".join(str(v) for v in bundle.input_shape)
    energy = {}
    for r in results:
        if r["voltage"] is None:
            continue
        e = estimate_energy(EnergyConfig(base=base_ref, generator=gen_name, input=shape, classes=bundle.num_classes,
                                         voltage=r["voltage"], calibration=cfg.calibration))
        energy[str(r["voltage"])] = {"ES": e["energy_saving"], "MAC_ES": e["mac_energy_saving"]}
    return energy
