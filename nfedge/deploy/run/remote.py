"""faultrun's emulator runs as executor tasks (nfedge.executor, `--executor ray`): the bundle travels as bytes.

The driver reads the bundle's manifest and every file it lists once and shares them with the samples; a worker
writes them into a folder named by their sha256 (once per machine), verifies it with load_bundle as any bundle, and
runs run_on_target there. Each task sends one faulty image's bytes and returns the target's result; the host side
of the comparison stays on the driver. The worker needs nfedge and the target's emulator (QEMU), nothing else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from nfedge.deploy.bundle import MANIFEST, Bundle, load_bundle
from nfedge.deploy.run.harness import run_on_target
from nfedge.errors import NfedgeError


@dataclasses.dataclass(frozen=True)
class TargetWork:
    files: dict[str, bytes]  # the bundle: manifest.json and every file it lists, by relative path
    x: np.ndarray  # the samples every chip runs (float32, or int8 codes for an integer bundle)
    timeout_s: float
    allow_emulator: str | None
    trust_bundle_code: bool


def bundle_files(bundle: Bundle) -> dict[str, bytes]:
    """manifest.json and every file the manifest lists (what load_bundle verifies), read once."""
    names = [MANIFEST, *sorted(bundle.manifest["files"])]
    return {rel: (bundle.path / rel).read_bytes() for rel in names}


def _materialize(files: dict[str, bytes]) -> Path:
    """The bundle in a folder of this machine's temp dir named by the files' sha256, written once: a new folder
    renamed into place, so workers on one machine never see half a bundle."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + hashlib.sha256(files[rel]).digest())
    final = Path(tempfile.gettempdir()) / f"nfedge-bundle-{h.hexdigest()[:24]}"
    if (final / MANIFEST).is_file():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", dir=final.parent))
    for rel, data in files.items():
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    try:
        os.rename(tmp, final)
    except OSError:  # another worker got there first: its folder holds the same bytes
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_target_context(work: TargetWork) -> dict[str, Any]:
    return {"work": work, "bundle": load_bundle(_materialize(work.files))}  # verified: every file's sha256


def target_run(ctx: dict[str, Any], item: tuple[bytes, str]):
    """One emulator run: (faulty image bytes, which chip and voltage for an error message) -> TargetResult."""
    data, where = item
    w: TargetWork = ctx["work"]
    try:
        return run_on_target(ctx["bundle"], data, w.x, timeout_s=w.timeout_s, verify=False,
                             allow_emulator=w.allow_emulator, trust_bundle_code=w.trust_bundle_code)
    except NfedgeError as e:
        raise NfedgeError(f"{where}: {e}") from None


def target_runs(executor, bundle: Bundle, work_items: list[tuple[bytes, str]], x: np.ndarray, timeout_s: float,
                allow_emulator, trust_bundle_code: bool, bar) -> Iterator[Any]:
    """TargetResult per item, in order, from the executor's workers."""
    work = TargetWork(bundle_files(bundle), x, timeout_s, None if allow_emulator is None else str(allow_emulator),
                      trust_bundle_code)
    yield from executor.imap(target_run, executor.share(work, build_target_context), work_items, bar)
