"""Atomic output: results appear complete or not at all (temp file/dir, then rename).

On failure nothing is left: no temp file, no half-renamed directory, and no folder that the failed call created
itself (pre-existing folders stay). An OSError leaving here names the path the caller asked for, never one of
our temp names, so the CLI can report it on one line (nfedge.errors.os_error_message).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _blame(e: BaseException, path: str | Path, temp: str | Path | None = None) -> None:
    """Make OSError `e` name `path` when it names nothing (a failed write() carries no filename) or our temp path
    `temp` (or a file inside it): the user knows `runs/img/weights.bin`, not `.img.k2j4.tmp/weights.bin`. A rename's
    second name (our own target) goes: the message names one path."""
    if not isinstance(e, OSError) or e.errno is None:
        return
    name = os.fsdecode(e.filename) if isinstance(e.filename, (str, bytes)) else None
    if name is None:
        e.filename, e.filename2 = str(path), None
    elif temp is not None and (name == str(temp) or name.startswith(str(temp) + os.sep)):
        e.filename, e.filename2 = str(path) + name[len(str(temp)):], None


def _remove_quietly(path: str | Path) -> None:
    """Cleanup after a failure must not raise over the error that caused it (ENOSPC, EROFS, EIO, ...)."""
    with contextlib.suppress(OSError):
        os.unlink(path)


@contextlib.contextmanager
def made_dirs(path: str | Path) -> Iterator[Path]:
    """Create directory `path` and its missing parents; if the body (or the creation) fails, remove again those of
    them that this call created and that are still empty, deepest first. Folders that existed stay, and so does
    one that holds what the body chose to keep (train-base's resume point)."""
    path = Path(path)
    created: list[Path] = []
    p = path
    while not p.exists() and p != p.parent:
        created.append(p)  # deepest first
        p = p.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
        yield path
    except BaseException:
        for d in created:
            with contextlib.suppress(OSError):  # not empty (kept, or another writer's) or already gone: leave it
                d.rmdir()
        raise


def _write_temp(path: Path, data: bytes | memoryview) -> str:
    """`data` in a temp file beside `path` (same file system, so the rename is atomic); nothing left on failure.
    Any OSError here is about writing `path`, so it names `path` (mkstemp's names its random temp file)."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:  # a full disk raises in write() or in the flush at close
            f.write(data)
    except BaseException as e:
        if tmp is not None:
            _remove_quietly(tmp)
        if isinstance(e, OSError) and e.errno is not None:
            e.filename, e.filename2 = str(path), None
        raise
    return tmp


def atomic_write_files(files: Mapping[str | Path, bytes | memoryview]) -> None:
    """Write several files so that all of them appear or none does: every temp file first, then the renames
    (a rename needs no free space). Missing parent folders are created, and removed again if the write fails."""
    temps: list[tuple[str, Path]] = []
    with contextlib.ExitStack() as dirs:
        try:
            for path, data in files.items():
                path = Path(path)
                dirs.enter_context(made_dirs(path.parent))
                temps.append((_write_temp(path, data), path))
            while temps:
                tmp, path = temps[0]
                try:
                    os.replace(tmp, path)
                except BaseException as e:
                    _blame(e, path, tmp)
                    raise
                temps.pop(0)
        except BaseException:
            for tmp, _ in temps:  # before made_dirs looks at whether the folders it created are empty
                _remove_quietly(tmp)
            raise


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    atomic_write_files({path: data})


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def json_bytes(obj: Any) -> bytes:
    """The JSON files nfedge writes: indented, keys sorted, one trailing newline."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, json_bytes(obj))


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path`, on error it is removed.

    A reader never sees a half-written output directory: either the old one or the complete new one.
    The temporary path is absolute, so tools run from another working directory can use it. An OSError
    names the file under `path` as the caller gave it, not the temporary directory.
    """
    given = Path(path)
    path = given.resolve()
    with made_dirs(path.parent):
        try:
            tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        except OSError as e:
            e.filename, e.filename2 = str(given), None  # not mkdtemp's random name
            raise
        try:
            yield tmp
            if path.exists():
                if not overwrite:
                    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(given))
                old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
                os.replace(path, old / "x")
                try:
                    os.replace(tmp, path)
                except BaseException:
                    os.replace(old / "x", path)  # the previous result back (if this fails too, it stays in `old`)
                    old.rmdir()
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)  # before made_dirs looks at whether the parents it made are empty
            _blame(e, given, tmp)
            raise
