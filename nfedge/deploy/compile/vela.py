"""Arm Ethos-U targets: the integer programs as TOSA 1.0 graphs (nfedge.integer.tosa_export), compiled by Arm's Vela
(ethos-u-vela 5.2) for the descriptor's accelerator, system configuration and memory mode (docs/NPU.md).

    entry, sizes, extra = build_npu_files(VelaConfig(), target, programs, image, input_shape, bundle_tmp, progress)

One graph per model: `base` (the base model on the bundle's clean image: its codes are the graph's constants) and,
with a generator, `generator` (G alone, so that its weight traffic is its own). Bundle files, per model:
  npu/<model>.tosa               the TOSA graph Vela read
  npu/<model>_vela.tflite        Vela's output: a TFLite file whose ethos-u custom operator holds the command stream
  npu/<model>_summary.csv        Vela's summary: cycles, time, per memory area weight / feature-map bytes
  npu/<model>_per-layer.csv      Vela's per-layer performance
  npu/<model>_vela.log           what Vela printed
The manifest's "npu" table holds, per model, the numbers of the summary (vela_summary), which `nfedge energy
--vela-bundle` reads. Vela runs as `python -m ethosu.vela` of this interpreter (no shell, fixed arguments: the
descriptor contributes only names that are checked to be plain words, and Vela's own Arm/vela.ini), in a temp folder;
its files are read back as data. Nothing here runs on an NPU: the numbers are Vela's estimates.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from nfedge.config import StageConfig, require
from nfedge.deploy.targets import TargetDescriptor
from nfedge.errors import NfedgeError
from nfedge.integer.program import Program
from nfedge.integer.tosa_export import TosaExportConfig, export_integer_tosa
from nfedge.progress import QUIET, Progress
from nfedge.sram.image import WeightImage

AREAS = ("sram", "dram", "on_chip_flash", "off_chip_flash")  # Vela's memory areas, as its CSV names them
TRAFFIC = ("weight_read", "weight_write", "feature_map_read", "feature_map_write")
_MAX_CSV_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class VelaConfig(StageConfig):
    timeout_s: float = 600.0  # per Vela run
    optimise: str = "Performance"  # Vela --optimise: Performance | Size

    def validate(self) -> None:
        require(self.timeout_s > 0, "timeout_s must be > 0")
        require(self.optimise in ("Performance", "Size"),
                f"optimise must be Performance or Size, got {self.optimise!r}")


def _number(v: str) -> float | int:
    f = float(v)
    return int(f) if f.is_integer() and abs(f) < 2**53 else f


def parse_summary(text: str, where: str) -> dict[str, Any]:
    """Vela's summary CSV (one row) -> {cycles_npu, cycles_total, inference_time_s, nn_macs, weights:
    {original, encoded}, traffic: {area: {weight_read, ...} bytes per inference}}. The file is untrusted data:
    only these numeric columns are read."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if len(rows) != 1:
        raise NfedgeError(f"{where}: expected one summary row, found {len(rows)}")
    row = rows[0]
    try:
        out = {"cycles_npu": _number(row["cycles_npu"]), "cycles_total": _number(row["cycles_total"]),
               "inference_time_s": float(row["inference_time"]), "nn_macs": _number(row["nn_macs"]),
               "batch_size": _number(row["batch_size"]),
               "weights": {"original_bytes": _number(row["total_original_weights"]),
                           "encoded_bytes": _number(row["total_npu_encoded_weights"])},
               "storage": {"weights": row["weights_storage_area"], "feature_maps": row["feature_map_storage_area"]},
               "traffic": {a: {k: _number(row[f"{a}_{k}_bytes"]) for k in TRAFFIC} for a in AREAS}}
    except (KeyError, ValueError) as e:
        raise NfedgeError(f"{where}: not a Vela 5 summary ({type(e).__name__}: {e})") from None
    out["weight_read_bytes"] = sum(out["traffic"][a]["weight_read"] for a in AREAS)
    return out


def run_vela(cfg: VelaConfig, target: TargetDescriptor, tosa_path: Path, out_dir: Path, name: str) -> dict[str, Any]:
    """Compile one TOSA file with Vela into out_dir/<name>_vela.tflite (+ summary, per-layer CSV, log); the summary."""
    npu = target.npu
    if npu is None:
        raise NfedgeError(f"target {target.name} is not an Ethos-U target")
    with tempfile.TemporaryDirectory(prefix="nfedge-vela-") as tmp:
        d = Path(tmp)
        shutil.copyfile(tosa_path, d / f"{name}.tosa")
        argv = [sys.executable, "-m", "ethosu.vela", f"{name}.tosa", "--accelerator-config", npu.accelerator,
                "--config", "Arm/vela.ini", "--system-config", npu.system_config, "--memory-mode", npu.memory_mode,
                "--optimise", cfg.optimise, "--output-dir", "out", "--verbose-performance"]
        try:
            r = subprocess.run(argv, cwd=d, capture_output=True, text=True, timeout=cfg.timeout_s,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise NfedgeError(f"Vela ran longer than {cfg.timeout_s:.0f} s on {name}") from None
        log = r.stdout + r.stderr
        out = d / "out"
        files = {"_vela.tflite": out / f"{name}_vela.tflite",
                 "_summary.csv": out / f"{name}_summary_{npu.system_config}.csv",
                 "_per-layer.csv": out / f"{name}_per-layer.csv"}
        if r.returncode != 0 or not all(f.is_file() and not f.is_symlink() for f in files.values()):
            last = [ln.strip() for ln in log.splitlines() if ln.strip()]
            raise NfedgeError(f"Vela could not compile {name} for {npu.accelerator} (exit {r.returncode})"
                              + (f": {last[-1][:300]}" if last else ""))
        if files["_summary.csv"].stat().st_size > _MAX_CSV_BYTES:
            size = files["_summary.csv"].stat().st_size
            raise NfedgeError(f"Vela's summary for {name} is not a summary ({size} bytes)")
        summary = parse_summary(files["_summary.csv"].read_text(errors="replace"), f"Vela summary of {name}")
        out_dir.mkdir(parents=True, exist_ok=True)
        for suffix, f in files.items():
            shutil.copyfile(f, out_dir / f"{name}{suffix}")
        (out_dir / f"{name}_vela.log").write_text(log)
    return summary


def describe(name: str, s: dict[str, Any], clock_hz: int) -> list[str]:
    """What the build prints: cycles and, per memory area Vela used, the bytes read and written per inference."""
    lines = [f"Vela {name}: {s['cycles_total']:,} cycles per inference (NPU {s['cycles_npu']:,}; "
             f"{1e6 * s['cycles_total'] / clock_hz:.1f} us at {clock_hz / 1e6:.0f} MHz), {s['nn_macs']:,} MACs, "
             f"weights {s['weights']['original_bytes']:,} B -> {s['weights']['encoded_bytes']:,} B encoded"]
    for area, t in s["traffic"].items():
        if any(t.values()):
            lines.append(f"  {area}: weights read {t['weight_read']:,} B, written {t['weight_write']:,} B; "
                         f"feature maps read {t['feature_map_read']:,} B, written {t['feature_map_write']:,} B")
    return lines


def build_npu_files(cfg: VelaConfig, target: TargetDescriptor, programs: dict[str, Program], image: WeightImage,
                    input_shape: tuple[int, int, int], bundle_dir: Path, progress: Progress = QUIET
                    ) -> tuple[dict[str, str], dict[str, int], dict[str, Any]]:
    """The Ethos-U part of a bundle: (entry, sizes, {"npu": per-model summaries}) as build_for_target records them."""
    npu_dir = bundle_dir / "npu"
    npu_dir.mkdir(parents=True, exist_ok=True)
    models = {"base": (programs["base"], image)}
    if "generator" in programs:
        models["generator"] = (programs["generator"], None)
    summaries = {}
    for name, (prog, img) in models.items():
        model = export_integer_tosa(TosaExportConfig(batch=1), prog, npu_dir / f"{name}.tosa", input_shape, image=img)
        progress.info(f"build: {name} as TOSA 1.0 ({sum(model.operators.values())} operators), compiling with Vela")
        summaries[name] = run_vela(cfg, target, npu_dir / f"{name}.tosa", npu_dir, name) | {
            "tosa_operators": model.operators}
        for line in describe(name, summaries[name], target.clock_hz):
            progress.info(line)
    entry = {"run": "npu/base_vela.tflite"}
    if "generator" in models:
        entry["generator"] = "npu/generator_vela.tflite"
    sizes = {f"{n}_vela_tflite_bytes": (npu_dir / f"{n}_vela.tflite").stat().st_size for n in models}
    npu = dataclasses.asdict(target.npu) | {"models": summaries, "clock_hz": target.clock_hz,
                                            "note": "Vela's estimates (no Ethos-U emulator here: docs/NPU.md)"}
    return entry, sizes, {"npu": npu}
