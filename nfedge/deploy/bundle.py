"""The bundle format: what `nfedge build` writes and every reader checks before anything runs.

Bundle layout (written atomically by nfedge.deploy.build):
  manifest.json   format/version, config, target descriptor, io shapes, memory map, sizes, versions,
                  sha256 of every file below (checked by load_bundle before anything runs)
  firmware.elf | runner | base.so (+ generator.so)   what the harness runs
  operators.o, model.c, model.h, memory.ld, link.map  compiled artifacts (glue targets)
  image/          the clean weight image (weights.bin + manifest.json)
  relax/          the lowered Relax programs as text (for inspection)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from nfedge.deploy.targets import TargetDescriptor, load_target
from nfedge.errors import NfedgeError
from nfedge.fileio import sha256_file

__all__ = ["BUNDLE_FORMAT", "BUNDLE_VERSION", "MANIFEST", "Bundle", "load_bundle"]

BUNDLE_FORMAT = "nfedge-bundle"
BUNDLE_VERSION = 1
MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]
    target: TargetDescriptor

    @property
    def kind(self) -> str:
        return self.manifest["target"]["kind"]

    @property
    def has_generator(self) -> bool:
        return bool(self.manifest["io"]["has_generator"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["io"]["input_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.manifest["io"]["num_classes"])

    @property
    def image_bytes(self) -> int:
        return int(self.manifest["io"]["image_bytes"])

    def file(self, key: str) -> Path:
        return self.path / self.manifest["entry"][key]


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read a bundle's manifest and (by default) check every file's sha256 against it."""
    d = Path(path)
    mpath = d / MANIFEST
    if not mpath.is_file():
        raise NfedgeError(f"{d} is not a build bundle (no {MANIFEST}); run `nfedge build` first")
    try:
        m = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise NfedgeError(f"{mpath}: not valid JSON ({e})") from None
    if m.get("format") != BUNDLE_FORMAT:
        raise NfedgeError(f"{mpath}: format is {m.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    if m.get("version") != BUNDLE_VERSION:
        raise NfedgeError(f"{mpath}: bundle version {m.get('version')!r} not supported (this nfedge reads {BUNDLE_VERSION})")
    if verify:
        for rel, digest in sorted(m.get("files", {}).items()):
            f = d / rel
            if not f.is_file():
                raise NfedgeError(f"bundle {d} is incomplete: {rel} is missing (rebuild it)")
            got = sha256_file(f)
            if got != digest:
                raise NfedgeError(f"bundle {d} is corrupt: {rel} has sha256 {got[:12]}..., manifest says "
                                  f"{digest[:12]}... (rebuild it)")
    src = m["target"].get("source")
    try:
        target = load_target(src if src and Path(src).is_file() else m["target"]["name"])
    except NfedgeError:
        target = load_target(m["target"]["name"])
    return Bundle(path=d, manifest=m, target=target)
