"""Bare-metal and Linux targets: the lowered graphs' operators built with tvm.tirx.build into one object,
model.c / model.h generated over a static arena (nfedge.deploy.compile.codegen), and both linked with
firmware_harness/ (startup, glue runtime, evaluation main) into firmware.elf (bare metal) or runner (Linux).

The weight image is NOT linked in: the base model reads it at the descriptor's fixed image address, where the
emulator's loader places it, so one firmware runs against every faulty image.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nfedge.deploy.compile.codegen import c_symbol, generate_c, layout_graph, memory_ld
from nfedge.deploy.compile.lower import lower_relax
from nfedge.deploy.compile.toolchain import firmware_dir, run_tool, section_sizes, tvm_ffi_include, which_tool
from nfedge.deploy.targets import TargetDescriptor
from nfedge.errors import NfedgeError
from nfedge.progress import Progress

__all__ = ["link_firmware"]


def link_firmware(cfg, target: TargetDescriptor, tvm_target, relax_mods: dict, tmp: Path, image_bytes: int, input_shape,
                  num_classes: int, log: list[str], progress: Progress) -> tuple[dict, dict[str, Any], dict[str, Any]]:
    """Bare-metal and Linux targets: (entry, sizes, manifest extras); writes operators.o, model.c/.h and the
    linked firmware.elf (bare metal, with memory.ld) or runner (Linux) into `tmp`."""
    import tvm

    programs = []
    prim_funcs = {}
    for name, mod in relax_mods.items():
        progress.info(f"build: lowering {name} (legalize, fuse{', inline' if cfg.schedule == 'inline' else ''})")
        lowered = lower_relax(mod, tvm_target, cfg.schedule)
        (tmp / "relax" / f"{name}.py").write_text(lowered.script(show_meta=False))
        prefix = "nfb_" if name == "base" else "nfg_"
        prog = layout_graph(lowered, name, prefix)
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
    if cfg.emit_library and target.is_bare_metal:
        _library_kernels(cfg, target, prim_funcs, tmp, log, progress)
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
    sizes = _section_budget(secs, tmp / "operators.o", arena, workspace, target)
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


def _section_budget(secs: dict[str, int], obj: Path, arena: int, workspace: int, target: TargetDescriptor) -> dict[str, Any]:
    code_sections = (".isr_vector", ".text", ".rodata", ".ARM.exidx", ".ARM.extab", ".init_array", ".fini_array",
                     ".preinit_array", ".eh_frame", ".gcc_except_table")
    code = sum(v for k, v in secs.items() if k in code_sections or k.startswith(".text") or k.startswith(".rodata"))
    data = secs.get(".data", 0) + secs.get(".got", 0) + secs.get(".got.plt", 0)
    bss = secs.get(".bss", 0)
    ram = data + bss + secs.get(".heap", 0) + secs.get(".stack", 0) + secs.get(".tbss", 0) + secs.get(".tdata", 0)
    return {"code_bytes": code + data, "data_bytes": data, "bss_bytes": bss, "ram_bytes": ram,
            "operators_object_bytes": obj.stat().st_size, "arena_bytes": arena, "workspace_bytes": workspace,
            "stack_bytes": secs.get(".stack", 0), "heap_bytes": secs.get(".heap", 0), "sections": secs}


# A firmware's -mfloat-abi decides which kernels it can link: soft and softfp pass floats in core registers, hard in
# FPU registers, and the linker refuses to mix them. The library carries both builds of the same operators.
LIBRARY_FLOAT_ABIS = {"soft": ("soft", "softfp"), "hard": ("hard",)}  # kernels directory -> the -mfloat-abi it links with


def _library_kernels(cfg, target: TargetDescriptor, prim_funcs: dict, tmp: Path, log: list[str], progress: Progress) -> None:
    """library/<soft|hard>/libnfedge_ops.a: the operators built for each float ABI (nfedge export ships them)."""
    import tvm

    ar = which_tool(_archiver(target.toolchain.cc), target, "archiver")
    mod = tvm.IRModule({tvm.ir.GlobalVar(sym): f for sym, f in prim_funcs.items()})
    for abi in LIBRARY_FLOAT_ABIS:
        d = tmp / "library" / abi
        d.mkdir(parents=True)
        if target.tvm_target_dict.get("mfloat-abi", "soft") == abi:
            obj = tmp / "operators.o"
        else:
            progress.info(f"build: the operators again for -mfloat-abi={abi} (library)")
            variant = tvm.target.Target({**target.tvm_target_dict, "mfloat-abi": abi})
            with tvm.transform.PassContext(opt_level=cfg.opt_level, config={"tirx.disable_assert": True}):
                obj = d / "operators.o"
                tvm.tirx.build(mod, target=variant).write_to_file(str(obj))
        run_tool([ar, "rcs", str(d / "libnfedge_ops.a"), str(obj)], f"archiving the {abi}-float kernels", tmp,
                 cfg.timeout_s, log)
        (d / "operators.o").unlink(missing_ok=True)


def _archiver(cc: str) -> str:
    """The archiver beside a GCC cross compiler (arm-none-eabi-gcc -> arm-none-eabi-ar)."""
    name = Path(cc).name
    if not name.endswith("gcc"):
        raise NfedgeError(f"the library build needs the archiver of a GCC toolchain; compiler {cc!r} is not one")
    return str(Path(cc).with_name(name[: -len("gcc")] + "ar"))
