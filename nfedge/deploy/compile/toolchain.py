"""The cross toolchain and the firmware harness sources: finding and running the descriptor's compiler
and size tool (argv only, with a timeout, the first error line kept) and reading section sizes.
"""

from __future__ import annotations

import importlib.resources
import re
import shutil
import subprocess
from pathlib import Path

from nfedge.deploy.targets import TargetDescriptor
from nfedge.errors import NfedgeError

__all__ = ["FIRMWARE_PKG", "which_tool", "run_tool", "section_sizes", "firmware_dir", "tvm_ffi_include"]

FIRMWARE_PKG = "nfedge._data.firmware_harness"


def which_tool(prog: str, target: TargetDescriptor, role: str) -> str:
    p = shutil.which(prog)
    if p is None:
        raise NfedgeError(f"{role} {prog!r} for target {target.name} was not found on PATH "
                          f"(descriptor {target.source}); install the target's toolchain or fix the descriptor")
    return p


def run_tool(cmd: list[str], what: str, cwd: Path, timeout: float, log: list[str]) -> str:
    log.append("$ " + " ".join(cmd))
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise NfedgeError(f"{what} timed out after {timeout:.0f} s: {' '.join(cmd[:3])} ...") from None
    except OSError as e:
        raise NfedgeError(f"{what} could not run {cmd[0]!r}: {e}") from None
    log.append(r.stdout + r.stderr)
    if r.returncode != 0:
        out = (r.stderr or r.stdout).strip()
        m = re.search(r"region [`'](\w+)' overflowed by (\d+) bytes", out)
        if m:
            raise NfedgeError(f"the model does not fit the target: {what} says region {m.group(1)} overflows "
                              f"by {int(m.group(2))} bytes")
        first = next((ln for ln in out.splitlines() if "error" in ln.lower()), out.splitlines()[-1] if out else "")
        raise NfedgeError(f"{what} failed (exit {r.returncode}): {first.strip()[:300]}")
    return r.stdout


def section_sizes(size_tool: str, elf: Path, cwd: Path, timeout: float, log: list[str]) -> dict[str, int]:
    out = run_tool([size_tool, "-A", str(elf)], "size", cwd, timeout, log)
    sizes = {}
    for ln in out.splitlines():
        parts = ln.split()
        if len(parts) >= 3 and parts[0].startswith(".") and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    return sizes


def firmware_dir() -> Path:
    d = importlib.resources.files(FIRMWARE_PKG)
    p = Path(str(d))
    if not (p / "nfedge_rt.c").is_file():
        raise NfedgeError(f"firmware harness sources not found in {p} (broken installation?)")
    return p


def tvm_ffi_include() -> str:
    import tvm_ffi.libinfo

    return str(tvm_ffi.libinfo.find_include_path())
