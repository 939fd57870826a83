"""The host target: each Relax graph compiled with tvm.compile and exported as a shared library that the Relax
VM runs (nfedge.deploy.run.host_runner); with a tuning database, its MetaSchedule schedules and its target."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nfedge.deploy.compile.lower import lower_relax
from nfedge.deploy.compile.toolchain import which_tool
from nfedge.errors import NfedgeError
from nfedge.progress import Progress

__all__ = ["build_host_libraries"]


def build_host_libraries(cfg, target, tvm_target, relax_mods: dict, tmp: Path, log: list[str], progress: Progress,
                         tuning=None) -> tuple[dict, dict[str, Any], dict[str, Any]]:
    """tuning: a nfedge.deploy.compile.tuning_db.TuningDatabase; its schedules (and its target: this CPU, its core count) are used."""
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
