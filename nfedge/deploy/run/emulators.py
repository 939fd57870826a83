"""Which emulators nfedge runs, with which arguments, and how the guest talks to the host without reaching it.

A bundle's target.toml is data from whoever wrote the bundle, so its [emulator] table cannot name any
program or option it likes:

- Programs: only those nfedge knows (KNOWN_EMULATORS: qemu-system-arm for bare metal, qemu-aarch64 /
  qemu-aarch64-static for Linux user space), by bare name, resolved on PATH with shutil.which and run as
  an argv list (never a shell). The host target runs nfedge's own runner and names no emulator. Any other
  program runs only when the user names it: run_on_target(..., allow_emulator=PATH), `nfedge faultrun
  --allow-emulator PATH` (the descriptor's program must resolve to that same file).
- Arguments: an allow-list of options that change nothing outside the guest (QEMU_SYSTEM_OPTIONS,
  QEMU_USER_OPTIONS); everything else, in particular whatever gives the guest the host (semihosting, a
  monitor, serial/chardev/parallel/QMP/gdb to a file, socket, pipe or terminal, drives, shares, network
  back ends, devices, plugins, logs, -L outside the known sysroot, stray file names) is refused in one line.
  nfedge adds the I/O options itself (qemu_system_argv), pointing only into the run's temp folder.

Bare-metal guest I/O (nfedge.deploy.guest_io, the protocol's one definition): qemu_system_argv places the
input block in guest memory with `-device loader` and points the UART at uart.bin in the run's temp folder;
the status is the last record, after which the firmware requests a system reset, which `-no-reboot` turns
into QEMU's exit.

Linux guests (user-mode QEMU shares the host kernel) run confined (confined_argv): new user, mount,
network, IPC, UTS and PID namespaces (unshare --map-root-user) with the root directory set to a folder
that holds only a copy of the static emulator, the runner and its input files. Where no confinement is
possible the run is refused unless the user trusts the bundle's code (trust_bundle_code).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import stat
import struct
import subprocess
import time
from pathlib import Path

from nfedge.deploy.targets import TargetDescriptor
from nfedge.errors import NfedgeError

__all__ = ["KNOWN_EMULATORS", "KNOWN_SYSROOTS", "QEMU_SYSTEM_OPTIONS", "QEMU_USER_OPTIONS",
           "resolve_emulator", "checked_args", "qemu_system_argv", "confinement", "confined_argv", "is_static_elf",
           "run_process", "tree_bytes"]

KNOWN_EMULATORS = {"qemu-system-arm": "bare-metal", "qemu-aarch64": "linux", "qemu-aarch64-static": "linux"}
KNOWN_SYSROOTS = ("/usr/aarch64-linux-gnu",)  # Debian's aarch64 cross sysroot (qemu-user -L)

# option -> None (takes no value) or a regex its value must match in full
QEMU_SYSTEM_OPTIONS: dict[str, str | None] = {
    "-icount": r"shift=(\d{1,2}|auto)(,(align|sleep)=(on|off))*",
    "-nographic": None, "-nodefaults": None, "-no-reboot": None,
    "-display": "none", "-monitor": "none", "-parallel": "none",
    "-m": r"\d{1,6}[MG]?", "-smp": r"\d{1,3}",
    "-accel": r"tcg(,thread=(single|multi))?",
}
QEMU_USER_OPTIONS: dict[str, str | None] = {
    "-L": "|".join(re.escape(p) for p in KNOWN_SYSROOTS),
    "-s": r"\d{1,10}[kKmMgG]?",
}
# the reason given for options that are refused on purpose (anything not allowed above is refused too)
_REFUSED = {
    "gives the guest the host's files and commands (semihosting)": ("-semihosting", "-semihosting-config"),
    "connects the guest or the emulator to a host file, socket, pipe or terminal (nfedge connects the UART "
    "itself)": ("-serial", "-chardev", "-monitor", "-parallel", "-display", "-qmp", "-qmp-pretty", "-mon", "-gdb", "-s", "-g", "-debugcon", "-vnc",
                "-spice", "-audiodev", "-usbdevice"),
    "gives the guest a host-backed device (files, shares, network)": (
        "-drive", "-blockdev", "-fsdev", "-virtfs", "-netdev", "-nic", "-net", "-device", "-object", "-hda", "-hdb",
        "-cdrom", "-sd", "-pflash", "-mtdblock", "-add-fd", "-incoming", "-loadvm", "-numa", "-mem-path"),
    "loads host files or code into the emulator": ("-plugin", "-L", "-bios", "-kernel", "-initrd", "-dtb",
                                                     "-readconfig", "-option-rom", "-fw_cfg"),
    "writes emulator logs or state to host files": ("-D", "-d", "-trace", "-pidfile", "-writeconfig", "-strace"),
    "changes how nfedge runs the emulator (set by the descriptor's machine and cpu, or by nfedge)": (
        "-M", "-machine", "-cpu", "-daemonize", "-chroot", "-runas", "-run-with", "-sandbox", "-E", "-U"),
}
_REASON = {opt: why for why, opts in _REFUSED.items() for opt in opts}
# QEMU's seccomp filter: no new processes, no privilege changes, no obsolete or resource-control calls
_SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


def resolve_emulator(target: TargetDescriptor, allow_emulator: str | Path | None = None) -> str:
    """The path of the target's emulator if nfedge may run it (see the module doc), else a one-line error."""
    em = target.emulator
    if em is None:
        raise NfedgeError(f"target {target.name} has no emulator")
    prog = em.command[0]
    if prog in KNOWN_EMULATORS:  # a bare known name: whatever the user's PATH resolves it to
        if KNOWN_EMULATORS[prog] != target.kind:
            raise NfedgeError(f"target {target.name}: emulator {prog!r} does not run {target.kind} targets")
        path = shutil.which(prog)
        if path is None:
            raise NfedgeError(f"target {target.name}: {prog!r} was not found on PATH (install it or fix the target "
                              "descriptor)")
        return path
    path = shutil.which(prog)
    if allow_emulator is not None:
        allowed = shutil.which(str(allow_emulator))
        if allowed is None:
            raise NfedgeError(f"--allow-emulator {allow_emulator}: not an executable file (or not on PATH)")
        if path is not None and os.path.realpath(path) == os.path.realpath(allowed):
            return path
    raise NfedgeError(f"target {target.name}: emulator {prog!r} is not one nfedge runs (known: "
                      f"{', '.join(sorted(KNOWN_EMULATORS))}); to run your own emulator, name it with "
                      "allow_emulator= / `nfedge faultrun --allow-emulator PATH`")


def checked_args(target: TargetDescriptor) -> list[str]:
    """The descriptor's emulator arguments (command[1:] + args), each option on the allow-list, else an error."""
    em = target.emulator
    allowed = QEMU_SYSTEM_OPTIONS if target.is_bare_metal else QEMU_USER_OPTIONS
    args = [*em.command[1:], *em.args]
    out: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        name = "-" + a.lstrip("-") if a.startswith("-") else a  # QEMU reads --opt as -opt
        name = name.split("=", 1)[0]
        if name not in allowed:
            why = _REASON.get(name, "is not on nfedge's list of emulator options that leave the host alone"
                              if a.startswith("-") else "is not an option (QEMU would read it as a host file)")
            raise NfedgeError(f"target {target.name}: emulator argument {a!r} refused: {why}")
        pattern = allowed[name]
        if pattern is None:
            out.append(name)
            i += 1
            continue
        value = a.split("=", 1)[1] if "=" in a else (args[i + 1] if i + 1 < len(args) else None)
        if value is None or not re.fullmatch(pattern, value):
            why = f"{_REASON[name]}; only {pattern!r} is allowed" if name in _REASON else f"only {pattern!r} is allowed"
            raise NfedgeError(f"target {target.name}: emulator argument {name} {value!r} refused: {why}")
        out += [name, value]
        i += 1 if "=" in a else 2
    return out


def _qemu_opt(value: str | Path) -> str:
    """A value inside a QEMU -device/-chardev option string (a comma is written as two)."""
    return str(value).replace(",", ",,")


def qemu_system_argv(qemu: str, target: TargetDescriptor, kernel: Path, image: Path, inputs: Path, uart: Path) -> list[str]:
    """qemu-system-arm's argv: the checked descriptor arguments, then nfedge's own I/O (temp folder only)."""
    em = target.emulator
    cmd = [qemu, "-M", em.machine, *(["-cpu", em.cpu] if em.cpu else []), *checked_args(target)]
    cmd += ["-nodefaults", "-display", "none", "-monitor", "none", "-nic", "none", "-no-reboot", "-sandbox", _SANDBOX,
            "-chardev", f"file,id=nfedge_uart,path={_qemu_opt(uart)}", "-serial", "chardev:nfedge_uart",
            "-kernel", str(kernel),
            "-device", f"loader,file={_qemu_opt(image)},addr=0x{target.image.origin:08x}",
            "-device", f"loader,file={_qemu_opt(inputs)},addr=0x{target.input.origin:08x}"]
    return cmd


# ------------------------------------------------------------------------------ Linux confinement


_UNSHARE = ["--user", "--map-root-user", "--mount", "--net", "--ipc", "--uts", "--pid", "--fork", "--kill-child"]


@functools.lru_cache(maxsize=1)
def confinement() -> tuple[str | None, str]:
    """(unshare's path or None, why not): whether this machine can confine a Linux guest (probed once)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None, "util-linux's unshare is not installed"
    true = shutil.which("true") or "/bin/true"
    try:
        r = subprocess.run([unshare, *_UNSHARE, true], capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"unshare cannot run ({e})"
    if r.returncode != 0:
        return None, f"unprivileged user namespaces are not available here ({(r.stderr.strip() or 'unshare failed')[:120]})"
    return unshare, ""


def is_static_elf(path: str | Path) -> bool:
    """True for an ELF executable with no program interpreter (it runs in an empty root directory)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
            return False
        end = "<" if head[5] == 1 else ">"
        if head[4] == 2:  # ELF64: e_phoff at 32, e_phentsize and e_phnum at 54
            (phoff,), (phentsize, phnum) = struct.unpack_from(end + "Q", head, 32), struct.unpack_from(end + "HH", head, 54)
        else:  # ELF32: e_phoff at 28, e_phentsize and e_phnum at 42
            (phoff,), (phentsize, phnum) = struct.unpack_from(end + "I", head, 28), struct.unpack_from(end + "HH", head, 42)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from(end + "I", table, k * phentsize)[0] != 3 for k in range(phnum))  # 3: PT_INTERP


def confined_argv(unshare: str, root: Path, target: TargetDescriptor, emulator_in_root: str, runner_in_root: str) -> list[str]:
    """unshare argv that runs the emulator and runner with `root` as / and no network (see the module doc)."""
    em = target.emulator
    return [unshare, *_UNSHARE, f"--root={root}", "--wd=/", emulator_in_root,
            *(["-cpu", em.cpu] if em.cpu else []), *checked_args(target), runner_in_root]


# ------------------------------------------------------------------------------ running a guest


POLL_S = 0.1  # s: how often a running emulator's output size and the deadline are checked


def tree_bytes(paths: list[Path]) -> int:
    """Bytes in these files and folders (links not followed): how much a running guest has written."""
    total = 0
    for p in paths:
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            total += st.st_size
            continue
        for dirpath, dirnames, filenames in os.walk(p):
            for name in filenames:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:
                    pass
    return total


def _tail(path: Path, n: int = 1 << 14) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - n))
        return f.read().decode("utf-8", "replace")


def run_process(cmd: list[str], cwd: Path, logs: Path, deadline: float, timeout_s: float, what: str,
                 watch: list[Path], max_bytes: int) -> tuple[int, str, str]:
    """Run argv (no shell, stdin closed, own process group) until it exits, the deadline passes or the files in
    `watch` (and its stdout/stderr, kept in `logs`) grow past max_bytes; (exit code, stdout tail, stderr tail)."""
    out_p, err_p = logs / "stdout.txt", logs / "stderr.txt"
    with open(out_p, "wb") as out, open(err_p, "wb") as err:
        try:
            proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True)
        except FileNotFoundError:
            raise NfedgeError(f"{what}: {cmd[0]!r} was not found on PATH (install it or fix the target descriptor)") from None
        except OSError as e:
            raise NfedgeError(f"{what}: cannot start {cmd[0]!r}: {e}") from None
        problem = None
        while problem is None:
            try:
                proc.wait(timeout=max(0.0, min(POLL_S, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                if tree_bytes([*watch, out_p, err_p]) > max_bytes:
                    problem = (f"{what} wrote more than {max_bytes} bytes of output (a runaway or hostile program); "
                               "it was killed")
                elif time.monotonic() >= deadline:
                    problem = (f"{what}: no result within {timeout_s:g} s (the emulated program hung, or the timeout is "
                               "too short for this many samples); the emulator was killed")
        if problem is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            raise NfedgeError(problem)
    return proc.returncode, _tail(out_p), _tail(err_p)
