"""The MetaSchedule tuning database a host build reuses: its directory format, reading and checking it,
and applying its schedules to a lowered module (written by nfedge.deploy.compile.tune).

Database directory (written atomically: a temp dir, then renamed):
  tune.json                     format/version, config, the tuned TVM target (with -mcpu and num-cores),
                                seed, per-task best latency, wall time, versions, sha256 of the two tables
  database_workload.json        MetaSchedule JSONDatabase: the tuned PrimFuncs ...
  database_tuning_record.json   ... and their measured schedules (traces)
  tune.log                      MetaSchedule's log
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from nfedge.deploy.compile.lower import apply_inline_schedule, lower_relax
from nfedge.deploy.targets import TargetDescriptor
from nfedge.errors import NfedgeError
from nfedge.fileio import sha256_file

__all__ = ["TuningDatabase", "load_tuning_db", "TUNING_DB_FORMAT", "TUNING_DB_VERSION", "TABLES", "MANIFEST",
           "MODULE_EQUALITY", "system_cpu", "first_line", "tables_sha256"]

TUNING_DB_FORMAT = "nfedge-tuning-db"
TUNING_DB_VERSION = 1
MANIFEST = "tune.json"
TABLES = ("database_workload.json", "database_tuning_record.json")
MODULE_EQUALITY = "structural"  # how MetaSchedule matches a PrimFunc to a workload (tune and build alike)


@dataclasses.dataclass(frozen=True)
class TuningDatabase:
    path: Path
    manifest: dict[str, Any]

    @property
    def sha256(self) -> str:
        """Hash of the two MetaSchedule tables: what a build records to say which schedules it used."""
        return self.manifest["db_sha256"]

    @property
    def target_dict(self) -> dict[str, Any]:
        return dict(self.manifest["tvm_target"])

    def tvm_target(self):
        import tvm

        return tvm.target.Target(self.target_dict)

    def open(self):
        """The MetaSchedule JSONDatabase (read into memory; records added later are not written back)."""
        from tvm.s_tir import meta_schedule as ms

        mem = ms.database.MemoryDatabase(module_equality=MODULE_EQUALITY)
        try:
            ms.database.JSONDatabase(str(self.path / TABLES[0]), str(self.path / TABLES[1]), allow_missing=False,
                                     module_equality=MODULE_EQUALITY).dump_pruned(mem)
        except Exception as e:  # noqa: BLE001 - TVM raises its own error types for unreadable tables
            raise NfedgeError(f"tuning database {self.path} could not be read by MetaSchedule: {type(e).__name__}: "
                              f"{first_line(e)}") from None
        return mem

    def apply(self, mod, schedule: str = "inline"):
        """Relax (after DecomposeOpsForInference) -> fused PrimFuncs with the database's best schedules.

        Operators the database lacks keep the build's own schedule (`schedule`). Returns the module and
        the names of the PrimFuncs that got a tuned schedule."""
        from tvm import relax

        target = self.tvm_target()
        lowered = lower_relax(mod, target, "none")
        with target, self.open():
            lowered = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(lowered)
        tuned = sorted(gv.name_hint for gv, f in lowered.functions.items() if _is_scheduled(f))
        if schedule == "inline":
            lowered = apply_inline_schedule(lowered)  # skips the tuned PrimFuncs
        return lowered, tuned


def load_tuning_db(path: str | Path, target: TargetDescriptor | None = None) -> TuningDatabase:
    """Read and check a tuning database directory (files present, hashes match, target and CPU fit)."""
    d = Path(path)
    mpath = d / MANIFEST
    if not d.is_dir():
        raise NfedgeError(f"tuning database {d} does not exist; run `nfedge tune --db {d}` first")
    if not mpath.is_file():
        raise NfedgeError(f"{d} is not an nfedge tuning database (no {MANIFEST}); run `nfedge tune --db {d}`")
    try:
        m = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NfedgeError(f"{mpath}: not valid JSON ({e})") from None
    if not isinstance(m, dict) or m.get("format") != TUNING_DB_FORMAT:
        raise NfedgeError(f"{mpath}: format is {m.get('format') if isinstance(m, dict) else None!r}, "
                          f"expected {TUNING_DB_FORMAT!r}")
    if m.get("version") != TUNING_DB_VERSION:
        raise NfedgeError(f"{mpath}: tuning database version {m.get('version')!r} not supported "
                          f"(this nfedge reads {TUNING_DB_VERSION})")
    for name in TABLES:
        if not (d / name).is_file():
            raise NfedgeError(f"tuning database {d} is incomplete: {name} is missing (tune again)")
    got = tables_sha256(d)
    if got != m.get("db_sha256"):
        raise NfedgeError(f"tuning database {d} is corrupt: its tables hash to {got[:12]}..., {MANIFEST} says "
                          f"{str(m.get('db_sha256'))[:12]}... (tune again)")
    db = TuningDatabase(path=d, manifest=m)
    if target is not None:
        _check_db_fits(db, target)
    return db


def _check_db_fits(db: TuningDatabase, target: TargetDescriptor) -> None:
    want = target.tvm_target_dict
    have = db.target_dict
    for key in ("kind", "mtriple"):
        if want.get(key) != have.get(key):
            raise NfedgeError(f"tuning database {db.path} was tuned for {key} {have.get(key)!r}, target "
                              f"{target.name} has {want.get(key)!r}")
    cpu = system_cpu()
    tuned_native = db.manifest.get("config", {}).get("cpu", "native") == "native"
    if tuned_native and have.get("mcpu") != cpu:  # code for another CPU may use instructions this one lacks
        raise NfedgeError(f"tuning database {db.path} was tuned for CPU {have.get('mcpu')!r}, this machine is "
                          f"{cpu!r}; tune again here")


def tables_sha256(d: Path) -> str:
    h = hashlib.sha256()
    for name in TABLES:
        h.update(f"{name}:{sha256_file(d / name)}\n".encode())
    return h.hexdigest()


def _is_scheduled(func) -> bool:
    import tvm

    return isinstance(func, tvm.tirx.PrimFunc) and bool(func.attrs and func.attrs.get("tirx.is_scheduled", False))


def first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:300] if s else ""


def system_cpu() -> str:
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())
