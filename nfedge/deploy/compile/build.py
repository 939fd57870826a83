"""The build stage: the quantized base model (reading the flat weight image) and the NeuralFuse front, compiled
with TVM for a target and packed into a self-checking bundle directory.

    bundle = build_bundle(BuildConfig(target="cortex-m55"), "runs/base/base.pt", "runs/img", "runs/gen/generator.pt",
                          "build/m55")                       # from files: what `nfedge build` and the pipeline call
    bundle = build_for_target(BuildConfig(target="cortex-m55"), base_model, image, generator, "build/m55")  # in memory

Steps: the graphs go to TVM Relax (weight-only: ImageWeightedModel and NeuralFuseFront through torch.export,
nfedge.deploy.compile.lower; integer: the calibrated integer programs, nfedge.deploy.compile.integer_graph), are
lowered (legalize, fuse, the inline schedule, the int8 kernels' schedules), then
  bare-metal (Cortex-M) and linux (Cortex-A) targets: nfedge.deploy.compile.link (one operators object, model.c
    over a static arena, linked with firmware_harness/ into firmware.elf / runner; the weight image is not linked
    in: the emulator's loader places it at the descriptor's image address);
  host: nfedge.deploy.compile.host (tvm.compile + export_library, one .so per graph, optionally tuned).
The bundle (format: nfedge.deploy.bundle) keeps a copy of the resolved target descriptor (target.toml): what runs
it reads only that.
"""

from __future__ import annotations

import dataclasses
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nfedge import __version__
from nfedge.config import StageConfig, require
from nfedge.deploy.bundle import (
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    MANIFEST,
    TARGET_FILE,
    Bundle,
    check_relative_path,
    load_bundle,
)
from nfedge.data.datasets import calibration_images
from nfedge.deploy.compile.export import ImageWeightedModel, NeuralFuseFront, image_tensor
from nfedge.deploy.compile.host import build_host_libraries
from nfedge.deploy.compile.int8_kernels import isa_of_target
from nfedge.deploy.compile.integer_graph import integer_relax_graphs
from nfedge.deploy.compile.link import link_firmware
from nfedge.deploy.compile.lower import SCHEDULES, relax_graphs
from nfedge.deploy.compile.toolchain import which_tool
from nfedge.deploy.compile.tuning_db import load_tuning_db
from nfedge.deploy.compile.vela import VelaConfig, build_npu_files
from nfedge.deploy.guest_io import INPUT_HEADER_BYTES, MAX_RECORD_PAYLOAD, sample_payload_bytes
from nfedge.deploy.targets import TargetDescriptor, descriptor_text, parse_target
from nfedge.errors import NfedgeError
from nfedge.fileio import atomic_dir, atomic_write_json, sha256_file
from nfedge.integer import MODES
from nfedge.integer.calibrate import CALIBRATION_IMAGES, calibrate_programs, checkpoint_ranges
from nfedge.integer.program import Program, program_to_dict
from nfedge.progress import QUIET, Progress
from nfedge.quant import check_bits
from nfedge.sram.image import WeightImage, read_image, write_image
from nfedge.train.checkpoint import checkpoint_data, checkpoint_input_shape, load_checkpoint
from nfedge.train.eopm import load_generator

__all__ = ["BuildConfig", "DEFAULT_INPUT_SHAPE", "build_bundle", "build_for_target", "calibrate_for_build",
           "check_build_inputs", "check_programs"]

DEFAULT_INPUT_SHAPE = (1, 32, 32)  # C, H, W: the registered models' input (28x28 data sets are padded to 32x32)


@dataclasses.dataclass(frozen=True)
class BuildConfig(StageConfig):
    """What to build. `bits` (optional) must equal the image's bits: a guard against mixing files."""

    target: str = "arm-cortex"
    bits: int | None = None
    # C, H, W of one sample. None: build_bundle takes the checkpoint's (a different one given is refused), and
    # build_for_target on a bare module DEFAULT_INPUT_SHAPE
    input_shape: tuple[int, int, int] | None = None
    opt_level: int = 3  # TVM PassContext opt_level
    schedule: str = "inline"  # "inline": fold element-wise epilogues into producers; "none": as fused
    workspace_bytes: int = 0  # operator scratch pool; 0 = the bound computed from the operators
    timeout_s: float = 600.0  # per toolchain command
    tuning_db: str | None = None  # MetaSchedule database directory written by `nfedge tune` (host target only)
    # integer: int8 programs (docs/INTEGER.md); weight-only: float layers on the image's codes (the paper's mode);
    # None: the target's default (default_mode: integer on the bare-metal Cortex-M targets and the NPUs)
    mode: str | None = None
    calib_images: int = CALIBRATION_IMAGES  # integer mode: seeded training images that calibrate (calibrate_for_build)
    # bare metal: also build the kernels for both float ABIs (library/), which `nfedge export` ships to a user's firmware
    emit_library: bool = False

    def validate(self) -> None:
        require(self.mode is None or self.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        require(isinstance(self.calib_images, int) and self.calib_images >= 1, "calib_images must be >= 1")
        require(isinstance(self.target, str) and self.target != "", "target must be a non-empty name or path")
        if self.bits is not None:
            check_bits(self.bits)
        require(self.input_shape is None or (len(self.input_shape) == 3
                                             and all(isinstance(v, int) and v > 0 for v in self.input_shape)),
                f"input_shape must be three positive integers (C, H, W), got {self.input_shape!r}")
        require(self.opt_level in (0, 1, 2, 3), f"opt_level must be 0..3, got {self.opt_level!r}")
        require(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        require(self.workspace_bytes >= 0, "workspace_bytes must be >= 0")
        require(self.timeout_s > 0, "timeout_s must be > 0")
        require(isinstance(self.emit_library, bool), "emit_library must be true or false")
        require(self.tuning_db is None or (isinstance(self.tuning_db, str) and self.tuning_db != ""),
                "tuning_db must be a database directory or None")


def check_build_inputs(cfg: BuildConfig, base_model: nn.Module, image: WeightImage, generator) -> int:
    if not isinstance(image, WeightImage):
        raise NfedgeError("building or tuning needs a WeightImage (nfedge.sram.image.build_image / read_image)")
    if cfg.bits is not None and cfg.bits != image.manifest.bits:
        raise NfedgeError(f"build config asks for {cfg.bits}-bit weights but the image holds {image.manifest.bits}-bit codes")
    base_model = base_model.eval()
    with torch.no_grad():
        x = torch.zeros((1, *cfg.input_shape))
        try:
            y = ImageWeightedModel(base_model, image.manifest)(x, image_tensor(image))
        except NfedgeError:
            raise
        except Exception as e:  # noqa: BLE001
            raise NfedgeError(f"the base model does not run on input shape {tuple(cfg.input_shape)}: {e}") from None
        if y.dim() != 2 or y.shape[0] != 1:
            raise NfedgeError(f"the base model must return [N, classes] logits, got shape {tuple(y.shape)}")
        if generator is not None:
            fx = NeuralFuseFront(generator)(x)
            if tuple(fx.shape) != tuple(x.shape):
                raise NfedgeError(f"the generator maps {tuple(x.shape)} to {tuple(fx.shape)}; it must keep the input shape")
    return int(y.shape[1])


def default_mode(target: TargetDescriptor) -> str:
    """What a build for `target` deploys unless told otherwise: what an int8 accelerator runs (integer mode) on the
    bare-metal Cortex-M targets and the Ethos-U NPUs; the paper's weight-only mode on Linux and host targets."""
    return "integer" if target.is_bare_metal or target.kind == "ethos-u" else "weight-only"


def with_mode(cfg: BuildConfig) -> BuildConfig:
    """cfg with its mode resolved (BuildConfig.mode None: the target's default_mode)."""
    if cfg.mode is not None:
        return cfg
    text, source, aliases = descriptor_text(cfg.target)
    return dataclasses.replace(cfg, mode=default_mode(parse_target(text, source, aliases)))


def build_for_target(cfg: BuildConfig, base_model: nn.Module, image: WeightImage, generator: nn.Module | None,
                     out_dir: str | Path, progress: Progress = QUIET, programs: dict[str, Program] | None = None,
                     extra_files: dict[str, Path] | None = None) -> Bundle:
    """Compile base model (+ generator) for cfg.target and write the bundle directory atomically.

    Integer mode compiles the calibrated integer `programs` ("base", and "generator" with a generator; see
    calibrate_for_build) and keeps them in the bundle (integer/*.json), so the host side of a fault run computes
    exactly what was built. `extra_files` {bundle path: file} are copied in before the manifest seals every file."""
    t_start = time.perf_counter()
    cfg = dataclasses.replace(cfg, input_shape=cfg.input_shape or DEFAULT_INPUT_SHAPE)  # the manifest records it
    # The bundle keeps this exact text as its own target.toml: running it never reads another descriptor.
    target_text, target_source, aliases = descriptor_text(cfg.target)
    target = parse_target(target_text, target_source, aliases)
    cfg = dataclasses.replace(cfg, mode=cfg.mode or default_mode(target))
    num_classes = check_build_inputs(cfg, base_model, image, generator)
    integer, npu = cfg.mode == "integer", target.kind == "ethos-u"
    if npu and not integer:
        raise NfedgeError(f"target {target.name} is an Ethos-U NPU, which runs integer programs only: build with --mode integer")
    if integer:
        check_programs(programs, image, generator is not None)
    _check_fits(cfg, target, image, num_classes, generator is not None)
    tuning = None
    if cfg.tuning_db is not None:
        if target.kind != "host":
            raise NfedgeError(f"a tuning database applies to the host target only, not to {target.name} ({target.kind})")
        tuning = load_tuning_db(cfg.tuning_db, target)

    if not npu:  # an Ethos-U target: Vela compiles the TOSA of the integer programs (nfedge.deploy.compile.vela)
        progress.info(f"build: importing the base model{' and generator' if generator is not None else ''} into TVM Relax")
        tvm_target = target.tvm_target()
        relax_mods = (integer_relax_graphs(programs["base"], cfg.input_shape, image, programs.get("generator"),
                                           isa=isa_of_target(tvm_target)) if integer
                      else relax_graphs(cfg.input_shape, base_model, image, generator))

    out_dir = Path(out_dir)
    log: list[str] = []
    with atomic_dir(out_dir) as tmp:
        if npu:
            entry, sizes, extra = build_npu_files(VelaConfig(timeout_s=cfg.timeout_s), target, programs, image,
                                                  cfg.input_shape, tmp, progress)
        elif target.kind == "host":
            (tmp / "relax").mkdir()
            entry, sizes, extra = build_host_libraries(cfg, target, tvm_target, relax_mods, tmp, log, progress, tuning)
        else:
            (tmp / "relax").mkdir()
            entry, sizes, extra = link_firmware(cfg, target, tvm_target, relax_mods, tmp, int(image.manifest.total_bytes),
                                                input_shape=cfg.input_shape, num_classes=num_classes, log=log,
                                                progress=progress)
        write_image(image, tmp / "image")
        if integer:
            (tmp / "integer").mkdir()
            for name, prog in programs.items():
                atomic_write_json(tmp / "integer" / f"{name}.json", program_to_dict(prog))
        for rel, src in (extra_files or {}).items():
            dst = tmp / check_relative_path(rel, "extra bundle file")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        (tmp / TARGET_FILE).write_text(target_text)
        (tmp / "build.log").write_text("\n".join(log) + "\n")
        manifest = _manifest(cfg, target, target_text, image, num_classes, generator is not None, entry, sizes, extra,
                             tmp, time.perf_counter() - t_start)
        atomic_write_json(tmp / MANIFEST, manifest)
    progress.info(f"build: compiled and linked in {manifest['build_seconds']:.1f} s")
    return load_bundle(out_dir)


def _check_fits(cfg: BuildConfig, target: TargetDescriptor, image: WeightImage, num_classes: int, has_generator: bool) -> None:
    """Refuse, before compiling, what cannot fit the target's records, regions or toolchain."""
    if cfg.emit_library and not target.is_bare_metal:
        raise NfedgeError(f"--emit library builds a library for bare-metal firmware; target {target.name} is {target.kind}")
    if target.is_bare_metal and sample_payload_bytes(num_classes * (2 if has_generator else 1)) > MAX_RECORD_PAYLOAD:
        raise NfedgeError(f"{num_classes} classes do not fit one UART record of target {target.name} (64 KiB)")
    image_bytes = int(image.manifest.total_bytes)
    if target.is_bare_metal and image_bytes > target.image.length:
        raise NfedgeError(f"the model does not fit target {target.name}: the weight image is {image_bytes} bytes but "
                          f"its image region {target.image.name} holds {target.image.length} bytes")
    c, h, w = cfg.input_shape
    sample_bytes = (1 if cfg.mode == "integer" else 4) * c * h * w  # int8 | float32
    if target.is_bare_metal and sample_bytes + INPUT_HEADER_BYTES > target.input.length:
        raise NfedgeError(f"the model does not fit target {target.name}: one input sample is {sample_bytes} bytes but "
                          f"its input region {target.input.name} holds {target.input.length} (with a "
                          f"{INPUT_HEADER_BYTES}-byte header)")
    if target.kind != "ethos-u":  # Vela, not a C toolchain
        which_tool(target.toolchain.cc, target, "compiler")
    if target.kind in ("bare-metal", "linux"):
        which_tool(target.toolchain.size, target, "size tool")


def _manifest(cfg: BuildConfig, target: TargetDescriptor, target_text: str, image: WeightImage, num_classes: int,
              has_generator: bool, entry: dict, sizes: dict, extra: dict, tmp: Path, seconds: float) -> dict[str, Any]:
    """The bundle's manifest.json: what was built, for what, and the sha256 of every file written so far."""
    bm = target.is_bare_metal
    files = {str(f.relative_to(tmp)): sha256_file(f) for f in sorted(tmp.rglob("*")) if f.is_file() and f.name != MANIFEST}
    return {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
        "config": cfg.to_dict(),
        "target": parse_target(target_text, TARGET_FILE).to_dict(),  # = its target.toml, which load_bundle checks
        "entry": entry,
        "io": {"input_shape": list(cfg.input_shape), "input_dtype": "int8" if cfg.mode == "integer" else "float32",
               "logit_dtype": "int32" if cfg.mode == "integer" else "float32", "mode": cfg.mode,
               "num_classes": num_classes, "has_generator": has_generator, "image_bytes": int(image.manifest.total_bytes),
               "image_bits": image.manifest.bits, "image_sha256": image.manifest.image_sha256,
               "image_address": target.image.origin if bm else None,
               "input_address": target.input.origin if bm else None,
               "uart_address": target.uart if bm else None,
               "outputs": ["logits_base[K]"] + (["logits_neuralfuse[K]"] if has_generator else [])},
        "memory_map": dict(target.to_dict()["memory"]),
        "sizes": sizes | {"weights_bytes": int(image.manifest.total_bytes)},
        **extra,
        "build_seconds": round(seconds, 3),
        "versions": _versions(target),
        "files": files,
    }


def _versions(target: TargetDescriptor) -> dict[str, str]:
    import tvm

    v = {"nfedge": __version__, "tvm": getattr(tvm, "__version__", "?"), "torch": torch.__version__,
         "python": platform.python_version()}
    if target.kind == "ethos-u":
        from importlib.metadata import version

        return v | {"ethos-u-vela": version("ethos-u-vela"), "tosa-tools": version("tosa-tools")}
    try:
        r = subprocess.run([target.toolchain.cc, "--version"], capture_output=True, text=True, timeout=30)
        v["cc"] = r.stdout.splitlines()[0] if r.stdout else "?"
    except (OSError, subprocess.TimeoutExpired):
        v["cc"] = "?"
    return v


def check_programs(programs: dict[str, Program] | None, image: WeightImage, has_generator: bool) -> None:
    """Integer mode: calibrated programs for the base (and the generator), the base's for THIS image's scales."""
    want = {"base", "generator"} if has_generator else {"base"}
    if programs is None or set(programs) != want or not all(p.calibrated for p in programs.values()):
        raise NfedgeError(f"integer mode: the build needs calibrated integer programs for {', '.join(sorted(want))} "
                          "(calibrate_for_build), or mode='weight-only'")
    entries = {t.name: t for t in image.manifest.tensors}
    for key, scales in programs["base"].weight_scales.items():
        t = entries.get(key)
        if t is None or not np.array_equal(np.broadcast_to(np.asarray(t.scales), (t.shape[0],)), scales):
            raise NfedgeError(f"integer mode: the base program was calibrated for another image ({key} differs); "
                              "calibrate it on this one")


def calibrate_for_build(cfg: BuildConfig, model: nn.Module, image: WeightImage, generator: nn.Module | None,
                        meta: dict[str, Any], where: Path, progress: Progress = QUIET) -> dict[str, Program]:
    """Integer mode: the calibrated programs ("base", "generator"), on cfg.calib_images seeded training images of
    the checkpoint's dataset, with the activation ranges a quantization-aware checkpoint froze."""
    x_calib = calibration_images(checkpoint_data(meta, where), cfg.calib_images)
    programs = calibrate_programs(model, image, {"generator": generator} if generator is not None else {}, x_calib,
                                  checkpoint_ranges(meta))
    progress.info(f"build: integer programs calibrated on {len(x_calib)} training images (seed 0)")
    return programs


def build_bundle(cfg: BuildConfig, base_checkpoint: str | Path, image_dir: str | Path, generator_checkpoint: str | Path | None,
                 out_dir: str | Path, progress: Progress = QUIET) -> Bundle:
    """The build stage from files (`nfedge build`, the pipeline): compile and write the bundle, with the checkpoints
    for host simulation in host/ (sealed in the manifest with every other file)."""
    model, meta = load_checkpoint(base_checkpoint)
    image = read_image(image_dir)
    gen = load_generator(generator_checkpoint)[0] if generator_checkpoint else None
    shape = checkpoint_input_shape(meta)
    if cfg.input_shape is not None and tuple(cfg.input_shape) != shape:
        raise NfedgeError(f"build config asks for input shape {tuple(cfg.input_shape)} but checkpoint {base_checkpoint} "
                          f"takes {shape}; leave input_shape unset")
    cfg = with_mode(dataclasses.replace(cfg, input_shape=shape))
    programs = (calibrate_for_build(cfg, model, image, gen, meta, Path(base_checkpoint), progress)
                if cfg.mode == "integer" else None)
    extra = {"host/base.pt": Path(base_checkpoint)}
    if generator_checkpoint:
        extra["host/generator.pt"] = Path(generator_checkpoint)
    bundle = build_for_target(cfg, model, image, gen, out_dir, progress, programs=programs, extra_files=extra)
    progress.info(f"build: bundle written to {out_dir}")
    return bundle
