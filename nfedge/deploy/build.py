"""Build stage: the quantized base model (reading the flat weight image) and the NeuralFuse front, compiled
with TVM for a target and packed into a self-checking bundle directory.

    bundle = build_for_target(BuildConfig(target="cortex-m55"), base_model, image, generator, "build/m55")

Pipeline: ImageWeightedModel(x, image) and NeuralFuseFront(x) -> torch.export -> Relax
(from_exported_program) -> DecomposeOpsForInference, LegalizeOps, FuseOps, FuseTIR (+ an optional
"inline" schedule that folds the fused element-wise epilogues into their producer loops) ->
  bare-metal (Cortex-M) and linux (Cortex-A) targets: every fused PrimFunc built with tvm.tirx.build for
    the target's LLVM triple into one object; nfedge generates model.c (static arena planned here,
    constants as C arrays, the operators called in order through the tvm-ffi safe-call ABI) and links
    it with firmware_harness/ (startup, glue runtime, evaluation main) into firmware.elf / runner.
    The weight image is NOT linked in: the base model reads it at the descriptor's fixed image address,
    where the emulator's loader places it, so one firmware runs against every faulty image. The inputs
    go to memory.input the same way, the outputs to the UART at io.uart (no semihosting).
  host: tvm.compile + export_library (one .so per graph) run by the Relax VM; with BuildConfig.tuning_db
    (a database from nfedge.deploy.tune) the fused PrimFuncs get their MetaSchedule-tuned schedules and the
    code is compiled for the database's target (this CPU's -mcpu, its core count).


The bundle keeps a copy of the resolved target descriptor (target.toml): what runs it reads only that.
The bundle format is nfedge.deploy.bundle; lowering nfedge.deploy.lower; C generation nfedge.deploy.codegen.
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
from nfedge.deploy.codegen import c_symbol, generate_c, memory_ld, plan_program
from nfedge.deploy.emulators import INPUT_HEADER_BYTES
from nfedge.deploy.export import ImageWeightedModel, NeuralFuseFront, image_tensor
from nfedge.deploy.int8_kernels import isa_of_target
from nfedge.deploy.integer_graph import integer_relax_graphs
from nfedge.deploy.lower import SCHEDULES, lower_relax, relax_graphs
from nfedge.deploy.targets import TargetDescriptor, descriptor_text, parse_target
from nfedge.deploy.toolchain import firmware_dir, run_tool, section_sizes, tvm_ffi_include, which_tool
from nfedge.deploy.tuning_db import load_tuning_db
from nfedge.errors import NfedgeError
from nfedge.fileio import atomic_dir, atomic_write_json, sha256_file
from nfedge.integer import MODES
from nfedge.integer.calibrate import CALIBRATION_IMAGES
from nfedge.integer.program import Program, program_to_dict
from nfedge.progress import QUIET, Progress
from nfedge.quant import check_bits
from nfedge.sram.image import WeightImage, write_image

__all__ = ["BuildConfig", "build_for_target", "check_build_inputs", "check_programs"]


@dataclasses.dataclass(frozen=True)
class BuildConfig(StageConfig):
    """What to build. `bits` (optional) must equal the image's bits: a guard against mixing files."""

    target: str = "arm-cortex"
    bits: int | None = None
    input_shape: tuple[int, int, int] = (1, 32, 32)  # C, H, W of one sample
    opt_level: int = 3  # TVM PassContext opt_level
    schedule: str = "inline"  # "inline": fold element-wise epilogues into producers; "none": as fused
    workspace_bytes: int = 0  # operator scratch pool; 0 = the bound computed from the operators
    timeout_s: float = 600.0  # per toolchain command
    tuning_db: str | None = None  # MetaSchedule database directory written by `nfedge tune` (host target only)
    mode: str = "weight-only"  # weight-only: float layers on the image's codes; integer: docs/INTEGER.md
    calib_images: int = CALIBRATION_IMAGES  # integer mode: seeded training images that calibrate the programs

    def validate(self) -> None:
        require(self.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        require(isinstance(self.calib_images, int) and self.calib_images >= 1, "calib_images must be >= 1")
        require(isinstance(self.target, str) and self.target != "", "target must be a non-empty name or path")
        if self.bits is not None:
            check_bits(self.bits)
        require(len(self.input_shape) == 3 and all(isinstance(v, int) and v > 0 for v in self.input_shape),
                f"input_shape must be three positive integers (C, H, W), got {self.input_shape!r}")
        require(self.opt_level in (0, 1, 2, 3), f"opt_level must be 0..3, got {self.opt_level!r}")
        require(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        require(self.workspace_bytes >= 0, "workspace_bytes must be >= 0")
        require(self.timeout_s > 0, "timeout_s must be > 0")
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


def build_for_target(cfg: BuildConfig, base_model: nn.Module, image: WeightImage, generator: nn.Module | None,
                     out_dir: str | Path, progress: Progress = QUIET, programs: dict[str, Program] | None = None,
                     extra_files: dict[str, Path] | None = None) -> Bundle:
    """Compile base model (+ generator) for cfg.target and write the bundle directory atomically.

    Integer mode compiles the calibrated integer `programs` ("base", and "generator" with a generator) and keeps
    them in the bundle (integer/*.json), so the host side of a fault run computes exactly what was built.
    `extra_files` {bundle path: file} are copied in before the manifest seals every file's sha256."""
    t_start = time.perf_counter()
    # The bundle keeps this exact text as its own target.toml: running it never reads another descriptor.
    target_text, target_source, aliases = descriptor_text(cfg.target)
    target = parse_target(target_text, target_source, aliases)
    bundle_target = parse_target(target_text, TARGET_FILE)
    num_classes = check_build_inputs(cfg, base_model, image, generator)
    # one UART sample record (uint16 payload length): index, 1 or 2 logit vectors, 3 uint64 ticks
    if target.is_bare_metal and 4 + 4 * num_classes * (2 if generator is not None else 1) + 24 > 0xFFFF:
        raise NfedgeError(f"{num_classes} classes do not fit one UART record of target {target.name} (64 KiB)")
    image_bytes = int(image.manifest.total_bytes)
    if target.is_bare_metal and image_bytes > target.image.length:
        raise NfedgeError(f"the model does not fit target {target.name}: the weight image is {image_bytes} bytes but "
                          f"its image region {target.image.name} holds {target.image.length} bytes")
    integer = cfg.mode == "integer"
    if integer:
        check_programs(programs, image, generator is not None)
    sample_bytes = (1 if integer else 4) * cfg.input_shape[0] * cfg.input_shape[1] * cfg.input_shape[2]  # int8 | float32
    if target.is_bare_metal and sample_bytes + INPUT_HEADER_BYTES > target.input.length:
        raise NfedgeError(f"the model does not fit target {target.name}: one input sample is {sample_bytes} bytes but "
                          f"its input region {target.input.name} holds {target.input.length} (with a "
                          f"{INPUT_HEADER_BYTES}-byte header)")
    if target.kind in ("bare-metal", "linux"):
        which_tool(target.toolchain.cc, target, "compiler")
        which_tool(target.toolchain.size, target, "size tool")
    else:
        which_tool(target.toolchain.cc, target, "compiler")

    tuning = None
    if cfg.tuning_db is not None:
        if target.kind != "host":
            raise NfedgeError(f"a tuning database applies to the host target only, not to {target.name} ({target.kind})")
        tuning = load_tuning_db(cfg.tuning_db, target)

    progress.info(f"build: importing the base model{' and generator' if generator is not None else ''} into TVM Relax")
    tvm_target = target.tvm_target()
    relax_mods = (integer_relax_graphs(programs["base"], cfg.input_shape, image, programs.get("generator"),
                                       isa=isa_of_target(tvm_target)) if integer
                  else relax_graphs(cfg.input_shape, base_model, image, generator))

    out_dir = Path(out_dir)
    log: list[str] = []
    with atomic_dir(out_dir) as tmp:
        (tmp / "relax").mkdir()
        if target.kind == "host":
            entry, sizes, extra = _build_host(cfg, target, tvm_target, relax_mods, tmp, log, progress, tuning)
        else:
            entry, sizes, extra = _build_glue(cfg, target, tvm_target, relax_mods, tmp, image_bytes, input_shape=cfg.input_shape,
                                              num_classes=num_classes, log=log, progress=progress)
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
        files = {}
        for f in sorted(tmp.rglob("*")):
            if f.is_file() and f.name != MANIFEST:
                files[str(f.relative_to(tmp))] = sha256_file(f)
        manifest = {
            "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
            "config": cfg.to_dict(),
            "target": bundle_target.to_dict(),  # = its target.toml, which load_bundle checks it against
            "entry": entry,
            "io": {"input_shape": list(cfg.input_shape), "input_dtype": "int8" if integer else "float32",
                   "logit_dtype": "int32" if integer else "float32", "mode": cfg.mode, "num_classes": num_classes,
                   "has_generator": generator is not None, "image_bytes": image_bytes,
                   "image_bits": image.manifest.bits, "image_sha256": image.manifest.image_sha256,
                   "image_address": target.image.origin if target.is_bare_metal else None,
                   "input_address": target.input.origin if target.is_bare_metal else None,
                   "uart_address": target.uart if target.is_bare_metal else None,
                   "outputs": ["logits_base[K]"] + (["logits_neuralfuse[K]"] if generator is not None else [])},
            "memory_map": {k: v for k, v in target.to_dict()["memory"].items()},
            "sizes": sizes | {"weights_bytes": image_bytes},
            **extra,
            "build_seconds": round(time.perf_counter() - t_start, 3),
            "versions": _versions(target),
            "files": files,
        }
        atomic_write_json(tmp / MANIFEST, manifest)
    progress.info(f"build: compiled and linked in {manifest['build_seconds']:.1f} s")
    return load_bundle(out_dir)


def _versions(target: TargetDescriptor) -> dict[str, str]:
    import tvm

    v = {"nfedge": __version__, "tvm": getattr(tvm, "__version__", "?"), "torch": torch.__version__,
         "python": platform.python_version()}
    try:
        r = subprocess.run([target.toolchain.cc, "--version"], capture_output=True, text=True, timeout=30)
        v["cc"] = r.stdout.splitlines()[0] if r.stdout else "?"
    except (OSError, subprocess.TimeoutExpired):
        v["cc"] = "?"
    return v


def _build_glue(cfg, target, tvm_target, relax_mods, tmp: Path, image_bytes: int, input_shape, num_classes: int,
                log: list[str], progress: Progress):
    import tvm

    programs = []
    prim_funcs = {}
    for name, mod in relax_mods.items():
        progress.info(f"build: lowering {name} (legalize, fuse{', inline' if cfg.schedule == 'inline' else ''})")
        lowered = lower_relax(mod, tvm_target, cfg.schedule)
        (tmp / "relax" / f"{name}.py").write_text(lowered.script(show_meta=False))
        prefix = "nfb_" if name == "base" else "nfg_"
        prog = plan_program(lowered, name, prefix)
        programs.append(prog)
        for fname, f in prog.prim_funcs.items():
            sym = c_symbol(prefix, fname)
            prim_funcs[sym] = f.with_attr("global_symbol", sym)
    arena = max(p.arena_bytes for p in programs)
    workspace = cfg.workspace_bytes or max(p.workspace_bound for p in programs)

    progress.info(f"build: compiling {len(prim_funcs)} operators for {target.name} (tvm.tirx.build)")
    t0 = time.perf_counter()
    with tvm.transform.PassContext(opt_level=cfg.opt_level, config={"tirx.disable_assert": True}):
        try:
            rt = tvm.tirx.build(tvm.IRModule({tvm.ir.GlobalVar(s): f for s, f in prim_funcs.items()}), target=tvm_target)
        except Exception as e:  # noqa: BLE001
            raise NfedgeError(f"TVM failed to build the operators for {target.name}: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from e
    rt.write_to_file(str(tmp / "operators.o"))
    tvm_seconds = time.perf_counter() - t0

    model_h, model_c = generate_c(programs, image_bytes, input_shape, num_classes, arena, workspace)
    (tmp / "model.h").write_text(model_h)
    (tmp / "model.c").write_text(model_c)
    fw = firmware_dir()
    tc = target.toolchain
    cc = which_tool(tc.cc, target, "compiler")
    common = [*tc.cflags, "-std=gnu11", "-Wall", "-I", str(tmp), "-I", str(fw), "-I", tvm_ffi_include()]
    if target.is_bare_metal:
        (tmp / "memory.ld").write_text(memory_ld(target))
        out = tmp / "firmware.elf"
        srcs = [fw / "startup_cm.c", fw / "nfedge_rt.c", fw / "main.c", tmp / "model.c"]
        io_defs = [f"-DNFEDGE_IMAGE_ADDR=0x{target.image.origin:08x}u", f"-DNFEDGE_INPUT_ADDR=0x{target.input.origin:08x}u",
                   f"-DNFEDGE_INPUT_BYTES=0x{target.input.length:x}u", f"-DNFEDGE_UART_ADDR=0x{target.uart:08x}u"]
        cmd = [cc, *common, *io_defs, *map(str, srcs),
               str(tmp / "operators.o"), *tc.ldflags, "-T", str(fw / "cortex_m.ld"), "-L", str(tmp),
               f"-Wl,-Map={tmp / 'link.map'}", "-lm", "-o", str(out)]
        entry = {"run": "firmware.elf"}
    else:
        out = tmp / "runner"
        srcs = [fw / "timer_linux.c", fw / "nfedge_rt.c", fw / "main.c", tmp / "model.c"]
        cmd = [cc, *common, *map(str, srcs), str(tmp / "operators.o"), *tc.ldflags,
               f"-Wl,-Map={tmp / 'link.map'}", "-lm", "-o", str(out)]
        entry = {"run": "runner"}
    progress.info(f"build: linking {out.name} with {tc.cc}")
    t0 = time.perf_counter()
    run_tool(cmd, f"linking {out.name} ({tc.cc})", tmp, cfg.timeout_s, log)
    link_seconds = time.perf_counter() - t0
    secs = section_sizes(which_tool(tc.size, target, "size tool"), out, tmp, cfg.timeout_s, log)
    sizes = _glue_sizes(secs, tmp / "operators.o", arena, workspace, target)
    sizes["arena_bytes_by_graph"] = {p.name: p.arena_bytes for p in programs}
    sizes["workspace_bound_by_graph"] = {p.name: p.workspace_bound for p in programs}
    if target.is_bare_metal:
        if sizes["code_bytes"] > target.code.length:
            raise NfedgeError(f"the model does not fit target {target.name}: code needs {sizes['code_bytes']} bytes, "
                              f"region {target.code.name} holds {target.code.length}")
        if sizes["ram_bytes"] > target.ram.length:
            raise NfedgeError(f"the model does not fit target {target.name}: RAM needs {sizes['ram_bytes']} bytes "
                              f"(arena {arena}, workspace {workspace}), region {target.ram.name} holds {target.ram.length}")
    extra = {"operators": {p.name: [c[0] for c in p.calls] for p in programs},
             "timings": {"tvm_build_seconds": round(tvm_seconds, 3), "link_seconds": round(link_seconds, 3)}}
    return entry, sizes, extra


def _glue_sizes(secs: dict[str, int], obj: Path, arena: int, workspace: int, target: TargetDescriptor) -> dict[str, Any]:
    code_sections = (".isr_vector", ".text", ".rodata", ".ARM.exidx", ".ARM.extab", ".init_array", ".fini_array",
                     ".preinit_array", ".eh_frame", ".gcc_except_table")
    code = sum(v for k, v in secs.items() if k in code_sections or k.startswith(".text") or k.startswith(".rodata"))
    data = secs.get(".data", 0) + secs.get(".got", 0) + secs.get(".got.plt", 0)
    bss = secs.get(".bss", 0)
    ram = data + bss + secs.get(".heap", 0) + secs.get(".stack", 0) + secs.get(".tbss", 0) + secs.get(".tdata", 0)
    return {"code_bytes": code + data, "data_bytes": data, "bss_bytes": bss, "ram_bytes": ram,
            "operators_object_bytes": obj.stat().st_size, "arena_bytes": arena, "workspace_bytes": workspace,
            "stack_bytes": secs.get(".stack", 0), "heap_bytes": secs.get(".heap", 0), "sections": secs}


def _build_host(cfg, target, tvm_target, relax_mods, tmp: Path, log: list[str], progress: Progress, tuning=None):
    """tuning: a nfedge.deploy.tuning_db.TuningDatabase; its schedules (and its target: this CPU, its core count) are used."""
    import tvm
    from tvm import relax

    entry = {}
    sizes: dict[str, Any] = {}
    tuned: dict[str, list[str]] = {}
    t0 = time.perf_counter()
    cc = which_tool(target.toolchain.cc, target, "compiler")
    if tuning is not None:
        tvm_target = tuning.tvm_target()
    for name, mod in relax_mods.items():
        progress.info(f"build: tvm.compile {name} for {target.name}{' with tuned schedules' if tuning else ''}")
        with tvm.transform.PassContext(opt_level=cfg.opt_level):
            try:
                seq = tvm.transform.Sequential([relax.transform.DecomposeOpsForInference()])
                mod2 = seq(mod)
                if tuning is not None:
                    mod2, tuned[name] = tuning.apply(mod2, cfg.schedule)
                elif cfg.schedule == "inline":
                    mod2 = lower_relax(mod2, tvm_target, "inline")
                ex = tvm.compile(mod2, target=tvm_target)
            except NfedgeError:
                raise
            except Exception as e:  # noqa: BLE001
                raise NfedgeError(f"tvm.compile of {name} for {target.name} failed: {type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}") from e
        (tmp / "relax" / f"{name}.py").write_text(mod2.script(show_meta=False))
        lib = tmp / f"{name}.so"
        try:
            ex.export_library(str(lib), cc=cc)
        except Exception as e:  # noqa: BLE001
            raise NfedgeError(f"export_library of {name} with {target.toolchain.cc} failed: {e}") from e
        entry[name] = lib.name
        sizes[f"{name}_library_bytes"] = lib.stat().st_size
    entry["run"] = entry["base"]
    extra: dict[str, Any] = {"timings": {"tvm_build_seconds": round(time.perf_counter() - t0, 3)}}
    if tuning is not None:
        extra["tuning"] = {"db": str(tuning.path.resolve()), "db_sha256": tuning.sha256,
                           "tvm_target": tuning.target_dict, "tuned_operators": tuned}
    return entry, sizes, extra


def check_programs(programs: dict[str, Program] | None, image: WeightImage, has_generator: bool) -> None:
    """Integer mode: calibrated programs for the base (and the generator), the base's for THIS image's scales."""
    want = {"base", "generator"} if has_generator else {"base"}
    if programs is None or set(programs) != want or not all(p.calibrated for p in programs.values()):
        raise NfedgeError(f"integer mode: the build needs calibrated integer programs for {', '.join(sorted(want))}")
    entries = {t.name: t for t in image.manifest.tensors}
    for key, scales in programs["base"].weight_scales.items():
        t = entries.get(key)
        if t is None or not np.array_equal(np.broadcast_to(np.asarray(t.scales), (t.shape[0],)), scales):
            raise NfedgeError(f"integer mode: the base program was calibrated for another image ({key} differs); "
                              "calibrate it on this one")
