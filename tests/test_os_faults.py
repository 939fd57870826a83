"""OS faults as a user meets them (issue 22): the real CLI writing into a really full or read-only file system.

Each test mounts its own small tmpfs (CI runs as root; a machine where the mount fails fails these tests, it does
not skip them), fills it to FREE bytes free or remounts it read-only, runs `python -m nfedge ...` and checks what
the user sees: exit code 1, the error on ONE line naming the path and the errno's meaning, no traceback, and
nothing left on the file system (no output folder, no parent folder the command made, no `.*.tmp` file).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nfedge.errors import os_error_message
from nfedge.fileio import atomic_dir, atomic_write_files

SIZE_KIB = 256
FREE = 40 * 1024  # less than a cnn-s image (93,728 bytes) and a cnn-xs resume point, more than a manifest
TINY = ["--epochs", 1, "--train-limit", 64, "--test-limit", 64]


def nfedge(*args) -> subprocess.CompletedProcess:
    """The real CLI, as conftest's run_nfedge, but stderr decoded without newline translation: text mode would turn
    a progress bar's carriage returns into line breaks, lines a terminal never shows."""
    r = subprocess.run([sys.executable, "-m", "nfedge", *map(str, args)], capture_output=True)
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())


@pytest.fixture
def tmpfs(tmp_path):
    """A fresh tmpfs of SIZE_KIB KiB at <tmp>/mnt, unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_KIB}k", "tmpfs", str(mnt)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {mnt} ({r.stderr.strip()}): these tests need root and `mount` "
                    "(util-linux; scripts/setup.sh installs it), as CI has")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True)  # busy (a leaked handle): detach it anyway


def fill(mnt: Path, free: int = FREE) -> None:
    """Leave exactly `free` bytes free on `mnt` (tmpfs counts whole pages: `free` is a multiple of 4 KiB)."""
    s = os.statvfs(mnt)
    (mnt / "filler").write_bytes(b"\0" * (s.f_bavail * s.f_frsize - free))
    s = os.statvfs(mnt)
    assert s.f_bavail * s.f_frsize == free


def read_only(mnt: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)


def leftovers(mnt: Path) -> list[str]:
    """Everything on the file system but the filler: folders, outputs, temp files."""
    return sorted(str(p.relative_to(mnt)) for p in mnt.rglob("*") if p.name != "filler")


def screen_lines(stderr: str) -> list[str]:
    """The lines a terminal shows: a progress bar redraws its line with carriage returns and erases itself."""
    return [s for s in (line.rsplit("\r", 1)[-1].strip() for line in stderr.split("\n")) if s]


def assert_one_line(r, expected: str, progress: bool = False) -> None:
    """Exit 1 and `expected` as the only line on stderr (after the progress lines where `progress`)."""
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = screen_lines(r.stderr)
    if progress:
        assert all(x.startswith("[nfedge] ") for x in lines[:-1]), r.stderr
    else:
        assert r.stderr.strip().splitlines() == [expected], r.stderr
    assert lines[-1] == expected, r.stderr


def enospc(path: Path) -> str:
    return f"nfedge: error: {path}: No space left on device (errno 28 ENOSPC)"


def erofs(path: Path) -> str:
    return f"nfedge: error: {path}: Read-only file system (errno 30 EROFS)"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny cnn-s base (its image, 93,728 bytes, does not fit in FREE) and its clean image, on a normal disk."""
    d = tmp_path_factory.mktemp("inputs")
    r = nfedge("train-base", "--model", "cnn-s", *TINY, "--out", d / "base")
    assert r.returncode == 0, r.stderr[-2000:]
    r = nfedge("quantize", "--checkpoint", d / "base" / "base.pt", "--out", d / "img")
    assert r.returncode == 0, r.stderr[-2000:]
    return d


# --------------------------------------------------------------------------------------------- disk full


@pytest.mark.slow
def test_quantize_disk_full(inputs, tmpfs):
    fill(tmpfs)
    out = tmpfs / "new" / "img"  # its parent too is made by quantize, and must go again
    r = nfedge("quantize", "--checkpoint", inputs / "base" / "base.pt", "--out", out)
    assert_one_line(r, enospc(out / "weights.bin"))
    assert leftovers(tmpfs) == []


@pytest.mark.slow
def test_inject_disk_full(inputs, tmpfs):
    fill(tmpfs)
    out = tmpfs / "chip1"
    r = nfedge("inject", "--image", inputs / "img", "--ber", 0.01, "--chip", 1, "--out", out)
    assert_one_line(r, enospc(out / "weights.bin"))
    assert leftovers(tmpfs) == []


@pytest.mark.slow
def test_inject_disk_full_keeps_the_previous_image(inputs, tmpfs):
    """Overwriting an image on a full disk: the error, and the old image still there, whole."""
    out = tmpfs / "chip1"
    r = nfedge("inject", "--image", inputs / "img", "--ber", 0.01, "--chip", 1, "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    fill(tmpfs, 4096)  # the new image's manifest fits, its weights do not
    r = nfedge("inject", "--image", inputs / "img", "--ber", 0.02, "--chip", 2, "--out", out)
    assert_one_line(r, enospc(out / "weights.bin"))
    assert leftovers(tmpfs) == ["chip1", "chip1/manifest.json", "chip1/weights.bin"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.slow
def test_train_base_disk_full(tmpfs):
    """The first resume point does not fit: no run folder (nor its parent) is left, as if never started."""
    fill(tmpfs)
    out = tmpfs / "runs" / "base"
    r = nfedge("train-base", "--model", "cnn-xs", *TINY, "--out", out)
    assert_one_line(r, enospc(out / "resume.pt"), progress=True)
    assert leftovers(tmpfs) == []


@pytest.mark.slow
def test_run_disk_full(tmp_path, tmpfs):
    """`nfedge run`: the failing stage's error on one line, and neither its stage folder nor the run folder left."""
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"base": {"model": "cnn-xs", "epochs": 1, "data": {"train_limit": 64, "test_limit": 64}},
                                  "target": "none", "plan": {"enabled": False}}))
    fill(tmpfs)
    out = tmpfs / "run"
    r = nfedge("run", "--config", config, "--out", out)
    stage = [x for x in screen_lines(r.stderr) if x.startswith("[nfedge] base: running -> ")]
    assert len(stage) == 1, r.stderr
    assert_one_line(r, enospc(out / stage[0].rsplit(" ", 1)[-1] / "resume.pt"), progress=True)
    assert leftovers(tmpfs) == []


# --------------------------------------------------------------------------------------------- read-only


@pytest.mark.slow
@pytest.mark.parametrize("command", ["quantize", "inject", "train-base"])
def test_read_only_file_system(inputs, tmpfs, command):
    read_only(tmpfs)
    out = tmpfs / "out"
    args = {"quantize": ["--checkpoint", inputs / "base" / "base.pt"],
            "inject": ["--image", inputs / "img", "--ber", 0.01, "--chip", 1],
            "train-base": ["--model", "cnn-xs", *TINY]}[command]
    r = nfedge(command, *args, "--out", out)
    assert_one_line(r, erofs(out), progress=command == "train-base")  # it says which data it loaded first
    assert leftovers(tmpfs) == []


# --------------------------------------------------------------------------------------------- missing inputs


def test_missing_inputs_are_one_line_errors(tmp_path):
    gone = tmp_path / "gone"
    for args, expected in [
        (["quantize", "--checkpoint", gone / "base.pt", "--out", tmp_path / "o" / "img"],
         f"nfedge: error: checkpoint {gone / 'base.pt'} does not exist"),
        (["inject", "--image", gone, "--ber", 0.01, "--chip", 1, "--out", tmp_path / "o" / "chip"],
         f"nfedge: error: image directory {gone} does not exist (expected weights.bin and manifest.json in it)"),
    ]:
        r = nfedge(*args)
        assert_one_line(r, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------- the library


def test_atomic_write_on_a_full_disk_leaves_nothing_and_names_the_file(tmpfs, monkeypatch):
    fill(tmpfs)
    target = tmpfs / "a" / "b" / "big.bin"
    with pytest.raises(OSError) as e:
        atomic_write_files({tmpfs / "a" / "small.json": b"{}", target: b"\1" * (2 * FREE)})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert leftovers(tmpfs) == []  # neither file, no temp file, none of the folders the call made

    # A cleanup that fails too (here: unlink refused) does not hide the error that caused it.
    def refuse(path, *a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

    monkeypatch.setattr(os, "unlink", refuse)
    with pytest.raises(OSError) as e:
        atomic_write_files({target: b"\1" * (2 * FREE)})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)


def test_a_failed_rename_names_the_target_once_and_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "new" / "x.json"

    def refuse(src, dst):
        raise OSError(errno.EIO, os.strerror(errno.EIO), src, None, dst)

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError) as e:
        atomic_write_files({target: b"{}"})
    assert (e.value.filename, e.value.filename2) == (str(target), None)
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_names_the_output_not_its_temp_dir(tmpfs):
    fill(tmpfs)
    out = tmpfs / "new" / "img"
    with pytest.raises(OSError) as e, atomic_dir(out) as tmp:
        (tmp / "weights.bin").write_bytes(b"\1" * (2 * FREE))  # a failed write() names no file: the output stands in
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(out)
    with pytest.raises(OSError) as e, atomic_dir(out) as tmp:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / "weights.bin"))  # as open() would name it
    assert e.value.filename == str(out / "weights.bin")
    assert leftovers(tmpfs) == []


@pytest.mark.parametrize("err, doing, expected", [
    (OSError(errno.ENOSPC, "No space left on device", "runs/img/weights.bin"), "quantize",
     "runs/img/weights.bin: No space left on device (errno 28 ENOSPC)"),
    (OSError(errno.ENOSPC, "No space left on device"), "quantize", "quantize: No space left on device (errno 28 ENOSPC)"),
    (OSError(errno.EXDEV, "Invalid cross-device link", "a", None, "b"), None,
     "a -> b: Invalid cross-device link (errno 18 EXDEV)"),
    (PermissionError(errno.EACCES, "Permission denied", "x\ny"), None, "x y: Permission denied (errno 13 EACCES)"),
    (OSError("a library's own\nmessage"), "train", "train: OSError: a library's own message"),
    (OSError(errno.EIO, "Input/output error", 3), None, "Input/output error (errno 5 EIO)"),
])
def test_os_error_message_is_one_line(err, doing, expected):
    assert os_error_message(err, doing) == expected
