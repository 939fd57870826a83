"""The bundle format: what `nfedge build` writes and every reader checks before anything runs.

Bundle layout (written atomically by nfedge.deploy.compile.build):
  manifest.json   format/version, config, target descriptor, io shapes, memory map, sizes, versions,
                  sha256 of every file below (checked by load_bundle before anything runs)
  target.toml     the exact target descriptor the bundle was built for (aliases resolved): everything
                  that runs or reads the bundle uses this copy, never an installed or external descriptor
  firmware.elf | runner | base.so (+ generator.so)   what the harness runs
  operators.o, model.c, model.h, memory.ld, link.map  compiled artifacts (glue targets)
  image/          the clean weight image (weights.bin + manifest.json)
  relax/          the lowered Relax programs as text (for inspection)

A bundle is data from whoever wrote it (the hashes too: whoever writes the manifest writes them), so
load_bundle checks its shape before it opens anything the manifest names: every path is a plain relative
path inside the bundle (no absolute path, no '..', no empty part) and the bundle holds regular files and
directories only (no symbolic link anywhere, so nothing can point outside). Which programs may then run
it is nfedge.deploy.run.emulators' business.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from nfedge.deploy.targets import TargetDescriptor, parse_target
from nfedge.errors import NfedgeError
from nfedge.fileio import sha256_file

__all__ = ["BUNDLE_FORMAT", "BUNDLE_VERSION", "MANIFEST", "TARGET_FILE", "Bundle", "load_bundle", "check_relative_path"]

BUNDLE_FORMAT = "nfedge-bundle"
# 2: target.toml inside the bundle (the manifest no longer names an external descriptor), bare-metal
#    firmware without semihosting (inputs by the loader, outputs on the UART)
BUNDLE_VERSION = 2
MANIFEST = "manifest.json"
TARGET_FILE = "target.toml"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_MANIFEST_BYTES = 16 << 20  # a real manifest is a few KiB; refuse to parse anything absurd


@dataclasses.dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]
    target: TargetDescriptor  # parsed from the bundle's own target.toml

    @property
    def kind(self) -> str:
        return self.target.kind

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
    def mode(self) -> str:
        """weight-only (float32 samples and logits) or integer (int8 samples, int32 logits: docs/INTEGER.md)."""
        return str(self.manifest["io"].get("mode", "weight-only"))

    @property
    def input_dtype(self) -> str:
        return self._io_dtype("input_dtype", ("float32", "int8"))

    @property
    def logit_dtype(self) -> str:
        return self._io_dtype("logit_dtype", ("float32", "int32"))

    def _io_dtype(self, key: str, allowed: tuple[str, ...]) -> str:
        v = self.manifest["io"].get(key, "float32")  # bundles from before integer mode: float32
        if v not in allowed:  # the manifest is untrusted: only the dtypes nfedge writes are read
            raise NfedgeError(f"bundle {self.path}: io.{key} is {v!r}, expected one of {', '.join(allowed)}")
        return v

    @property
    def image_bytes(self) -> int:
        return int(self.manifest["io"]["image_bytes"])

    def file(self, key: str) -> Path:
        """An entry's file (checked by load_bundle: relative, inside the bundle, hashed)."""
        return self.path / self.manifest["entry"][key]

    def digest(self, rel: str) -> str:
        return self.manifest["files"][rel]


def check_relative_path(rel: Any, where: str) -> str:
    """`rel` if it is a plain relative POSIX path that stays inside its folder, else a one-line NfedgeError.

    Lexical only (nothing is opened): absolute paths, drive letters, backslashes, '..', '.', empty parts
    and NUL bytes are refused. Symbolic links are the caller's check (load_bundle refuses them all)."""
    if not isinstance(rel, str) or not rel:
        raise NfedgeError(f"{where}: path {rel!r} is not a non-empty string")
    bad = None
    if rel.startswith("/") or re.match(r"[A-Za-z]:", rel) or rel.startswith("~"):
        bad = "an absolute path"
    elif "\\" in rel or "\x00" in rel:
        bad = "not a plain POSIX path"
    elif any(part in ("", ".", "..") for part in rel.split("/")):
        bad = "not inside the folder ('..', '.' or an empty part)"
    if bad:
        raise NfedgeError(f"{where}: path {rel!r} is {bad}; a manifest names files inside its own folder only "
                          "(refused before opening anything)")
    return rel


def _scan_tree(d: Path) -> set[str]:
    """Relative paths of the regular files under d; any symbolic link or special file is refused."""
    files: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(d):  # does not follow links: a linked dir shows in dirnames
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(d).as_posix()
            mode = os.lstat(p).st_mode
            if stat.S_ISLNK(mode):
                raise NfedgeError(f"bundle {d} contains a symbolic link {rel} -> {os.readlink(p)}; a bundle holds "
                                  "plain files only and nfedge follows no link in it (rebuild it)")
            if stat.S_ISREG(mode):
                files.add(rel)
            elif not stat.S_ISDIR(mode):
                raise NfedgeError(f"bundle {d} contains {rel}, which is not a regular file or directory")
    return files


def _check_manifest(m: Any, where: str) -> None:
    """The manifest's shape, so that readers can index it without KeyErrors and no path leaves the bundle."""
    if not isinstance(m, dict):
        raise NfedgeError(f"{where}: not a JSON object")
    files, entry, io, target = m.get("files"), m.get("entry"), m.get("io"), m.get("target")
    if not isinstance(files, dict) or not files:
        raise NfedgeError(f"{where}: no \"files\" table (rebuild the bundle)")
    for rel, digest in files.items():
        check_relative_path(rel, f"{where} files")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise NfedgeError(f"{where}: files[{rel!r}] is not a sha256 hex digest")
    if TARGET_FILE not in files:
        raise NfedgeError(f"{where}: the bundle has no {TARGET_FILE} (rebuild it)")
    if not isinstance(entry, dict) or "run" not in entry:
        raise NfedgeError(f"{where}: no \"entry\" table with a \"run\" file")
    for key, rel in entry.items():
        check_relative_path(rel, f"{where} entry {key!r}")
        if rel not in files:
            raise NfedgeError(f"{where}: entry {key!r} names {rel}, which the manifest does not hash")
    if not isinstance(io, dict):
        raise NfedgeError(f"{where}: no \"io\" table")
    shape = io.get("input_shape")

    def count(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 0 < v < 1 << 31

    if not (isinstance(shape, list) and len(shape) == 3 and all(count(v) for v in shape)):
        raise NfedgeError(f"{where}: io.input_shape must be three positive integers, got {shape!r}")
    for key in ("num_classes", "image_bytes"):
        if not count(io.get(key)):
            raise NfedgeError(f"{where}: io.{key} must be a positive integer, got {io.get(key)!r}")
    if not isinstance(io.get("has_generator"), bool):
        raise NfedgeError(f"{where}: io.has_generator must be true or false")
    if not isinstance(target, dict):
        raise NfedgeError(f"{where}: no \"target\" table")


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read a bundle's manifest, check its paths and (by default) every file's sha256, read its target.toml.

    verify=False skips only the hashes (for a caller that verified the same bundle already); the path and
    symbolic-link checks always run, before any file the manifest names is opened."""
    d = Path(path).resolve()  # the user's own path (and links in it) is trusted; nothing inside is
    mpath = d / MANIFEST
    if not d.is_dir() or not mpath.exists():
        raise NfedgeError(f"{d} is not a build bundle (no {MANIFEST}); run `nfedge build` first")
    if not stat.S_ISREG(os.lstat(mpath).st_mode):
        raise NfedgeError(f"{mpath} is not a regular file (a symbolic link?); refusing to read it")
    if mpath.stat().st_size > _MAX_MANIFEST_BYTES:
        raise NfedgeError(f"{mpath}: {mpath.stat().st_size} bytes is not a bundle manifest")
    try:
        m = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NfedgeError(f"{mpath}: not valid JSON ({e})") from None
    if not isinstance(m, dict) or m.get("format") != BUNDLE_FORMAT:
        raise NfedgeError(f"{mpath}: format is {m.get('format') if isinstance(m, dict) else None!r}, "
                          f"expected {BUNDLE_FORMAT!r}")
    version = m.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version < BUNDLE_VERSION:
        raise NfedgeError(f"bundle {d} has format version {version}, written by an older nfedge (it depends on a "
                          f"descriptor outside it and on semihosting); this nfedge reads version {BUNDLE_VERSION}: "
                          "rebuild it with `nfedge build`")
    if version != BUNDLE_VERSION:
        raise NfedgeError(f"{mpath}: bundle version {version!r} not supported (this nfedge reads {BUNDLE_VERSION})")
    _check_manifest(m, str(mpath))
    present = _scan_tree(d)  # lstat only: no symbolic link anywhere, so every checked path stays inside d
    for rel, digest in sorted(m["files"].items()):
        if rel not in present:
            raise NfedgeError(f"bundle {d} is incomplete: {rel} is missing (rebuild it)")
        if verify or rel == TARGET_FILE:
            got = sha256_file(d / rel)
            if got != digest:
                raise NfedgeError(f"bundle {d} is corrupt: {rel} has sha256 {got[:12]}..., manifest says "
                                  f"{digest[:12]}... (rebuild it)")
    try:
        target = parse_target((d / TARGET_FILE).read_text(), TARGET_FILE)
    except NfedgeError as e:
        raise NfedgeError(f"bundle {d}: {e}") from None
    except UnicodeDecodeError:
        raise NfedgeError(f"bundle {d}: {TARGET_FILE} is not text") from None
    if json.loads(json.dumps(target.to_dict())) != m["target"]:
        raise NfedgeError(f"bundle {d}: the manifest's target table does not match its {TARGET_FILE} (tampered with, "
                          "or written by another nfedge: rebuild it)")
    if target.is_bare_metal and m["io"]["image_bytes"] > target.image.length:
        raise NfedgeError(f"bundle {d}: its image ({m['io']['image_bytes']} bytes) does not fit the target's image "
                          f"region ({target.image.length} bytes)")
    return Bundle(path=d, manifest=m, target=target)
