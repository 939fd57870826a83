"""Target descriptors: one declarative TOML file per target in targets/ (adding a target = adding a file).

The files are read through importlib.resources from nfedge._data.targets (pyproject maps that package
to the checkout's top-level targets/ folder), so an installed nfedge finds them outside the checkout.

    load_target("cortex-m55")            # by name (targets/cortex-m55.toml)
    load_target("arm-cortex")            # an alias file: alias = "cortex-m55"
    load_target("path/to/my-board.toml") # any descriptor file
    list_targets()                       # ["arm-cortex", "cortex-a72", "cortex-m4", "cortex-m55", "host"]
    text, source, aliases = descriptor_text("arm-cortex")  # the resolved file's text (a bundle keeps a copy)
    parse_target(text, "target.toml")    # a descriptor from its text (how a bundle's own copy is read)

A descriptor holds the TVM target (a JSON dict), the toolchain, the emulator, the memory map (code, RAM
and, for bare-metal targets, the fixed address where the weight image is loaded), the clock (for an
*estimated* time) and the timer-to-instructions factor. Kinds:
  bare-metal  Cortex-M under qemu-system-arm: firmware.elf, image placed at memory.image.origin, the input
              samples at memory.input.origin, outputs on the CMSDK UART at io.uart (no semihosting)
  linux       aarch64 user space under qemu-user: a static runner, image read from a file
  host        the build machine: tvm.compile + export_library, run by the Relax VM
  ethos-u     an Arm Ethos-U NPU: no TVM, no toolchain, no emulator; [npu] names Vela's accelerator configuration,
              system configuration and memory mode (nfedge.deploy.compile.vela compiles the integer program's TOSA)
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import re
import tomllib
from pathlib import Path
from typing import Any

from nfedge.errors import NfedgeError

__all__ = ["MemoryRegion", "Toolchain", "Emulator", "Npu", "TargetDescriptor", "load_target", "list_targets",
           "descriptor_text", "parse_target", "KINDS", "DEFAULT_TARGET"]

KINDS = ("bare-metal", "linux", "host", "ethos-u")
TIMERS = ("systick", "wall", "none")
DEFAULT_TARGET = "arm-cortex"
_MAX_ALIAS_DEPTH = 8
# QEMU machine and CPU names: no commas (QEMU would read ",key=value" sub-options from them), no spaces
_QEMU_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclasses.dataclass(frozen=True)
class MemoryRegion:
    name: str
    origin: int
    length: int

    @property
    def end(self) -> int:
        return self.origin + self.length

    def overlaps(self, other: "MemoryRegion") -> bool:
        return self.origin < other.end and other.origin < self.end

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "origin": self.origin, "length": self.length,
                "origin_hex": f"0x{self.origin:08x}", "length_kib": self.length / 1024}


@dataclasses.dataclass(frozen=True)
class Toolchain:
    cc: str
    size: str
    cflags: tuple[str, ...]
    ldflags: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Emulator:
    command: tuple[str, ...]  # program and its fixed leading arguments
    machine: str | None  # qemu-system -M
    cpu: str | None  # qemu -cpu
    args: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Npu:
    """An Ethos-U target's Vela settings: names Vela checks against its own lists and its built-in vela.ini."""

    accelerator: str  # Vela --accelerator-config, e.g. ethos-u55-128
    system_config: str  # a [System_Config.*] of Vela's Arm/vela.ini
    memory_mode: str  # a [Memory_Mode.*] of it: Sram_Only, Shared_Sram, Dedicated_Sram...


@dataclasses.dataclass(frozen=True)
class TargetDescriptor:
    name: str
    description: str
    kind: str
    tvm_target_json: str  # canonical JSON of the TVM target dict (frozen dataclasses need immutable fields)
    toolchain: Toolchain
    emulator: Emulator | None
    code: MemoryRegion | None
    ram: MemoryRegion
    image: MemoryRegion | None
    stack_bytes: int
    heap_bytes: int
    clock_hz: int
    timer: str
    instructions_per_tick: float | None
    source: str  # the file it was read from
    boot: MemoryRegion | None = None  # where the reset vector table must sit (bare metal; default: code)
    aliases: tuple[str, ...] = ()  # names that led here (e.g. "arm-cortex")
    input: MemoryRegion | None = None  # bare metal: where the emulator's loader places the input samples
    uart: int | None = None  # bare metal: base address of the CMSDK APB UART that QEMU's first -serial captures
    npu: Npu | None = None  # ethos-u: Vela's settings

    @property
    def tvm_target_dict(self) -> dict[str, Any]:
        return json.loads(self.tvm_target_json)

    def tvm_target(self):
        """A tvm.target.Target (TVM 0.27 wants a Target built from the dict, never a bare dict)."""
        import tvm

        try:
            return tvm.target.Target(self.tvm_target_dict)
        except Exception as e:  # noqa: BLE001
            raise NfedgeError(f"target {self.name}: TVM rejects target {self.tvm_target_json}: {e}") from None

    @property
    def is_bare_metal(self) -> bool:
        return self.kind == "bare-metal"

    @property
    def counts_instructions(self) -> bool:
        return self.instructions_per_tick is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "kind": self.kind,
            "tvm_target": self.tvm_target_dict,
            "toolchain": dataclasses.asdict(self.toolchain),
            "emulator": dataclasses.asdict(self.emulator) if self.emulator else None,
            "memory": {k: (getattr(self, k).to_dict() if getattr(self, k) else None)
                       for k in ("boot", "code", "ram", "image", "input")}
                      | {"stack_bytes": self.stack_bytes, "heap_bytes": self.heap_bytes},
            "io": {"uart": self.uart, "uart_hex": None if self.uart is None else f"0x{self.uart:08x}"},
            "timing": {"clock_hz": self.clock_hz, "timer": self.timer,
                       "instructions_per_tick": self.instructions_per_tick},
            "source": self.source, "aliases": list(self.aliases),
        } | ({"npu": dataclasses.asdict(self.npu)} if self.npu else {})


def _targets_dir():
    return importlib.resources.files("nfedge._data.targets")


def list_targets() -> list[str]:
    """Names of the built-in targets (aliases included), sorted."""
    return sorted(p.name[:-5] for p in _targets_dir().iterdir() if p.name.endswith(".toml"))


def _read_text(name_or_path: str | Path) -> tuple[str, str]:
    s = str(name_or_path)
    if s.endswith(".toml") or "/" in s or "\\" in s:
        p = Path(s)
        if not p.is_file():
            raise NfedgeError(f"target descriptor {p} does not exist")
        return p.read_text(), str(p)
    res = _targets_dir() / f"{s.lower()}.toml"
    if not res.is_file():
        raise NfedgeError(f"unknown target {s!r}; known: {', '.join(list_targets())} "
                          "(or pass the path of a descriptor .toml)")
    return res.read_text(), str(res)


def _toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise NfedgeError(f"target descriptor {source}: invalid TOML ({e})") from None


def descriptor_text(name_or_path: str | Path = DEFAULT_TARGET) -> tuple[str, str, tuple[str, ...]]:
    """(text, source, aliases) of the descriptor file that a name or path resolves to, aliases followed.

    The text is what a bundle copies in as its own target.toml, so that running the bundle never depends
    on an installed or external descriptor that may have changed since the build."""
    aliases: list[str] = []
    current: str | Path = name_or_path
    for _ in range(_MAX_ALIAS_DEPTH):
        text, source = _read_text(current)
        data = _toml(text, source)
        if "alias" in data:
            if set(data) != {"alias"} or not isinstance(data["alias"], str):
                raise NfedgeError(f"target descriptor {source}: an alias file holds only alias = \"<target name>\"")
            aliases.append(Path(source).stem)
            current = data["alias"]
            continue
        return text, source, tuple(aliases)
    raise NfedgeError(f"target {name_or_path!r}: alias chain longer than {_MAX_ALIAS_DEPTH} (a loop?)")


def parse_target(text: str, source: str, aliases: tuple[str, ...] = ()) -> TargetDescriptor:
    """A descriptor from its TOML text; an alias file is refused (a bundle's copy is the resolved file)."""
    data = _toml(text, source)
    if "alias" in data:
        raise NfedgeError(f"target descriptor {source}: is an alias file, not a descriptor")
    return _parse(data, source, aliases)


def load_target(name_or_path: str | Path = DEFAULT_TARGET) -> TargetDescriptor:
    """Read and validate a target descriptor by name (built-in) or path; aliases are followed."""
    text, source, aliases = descriptor_text(name_or_path)
    return parse_target(text, source, aliases)


class _Reader:
    """Typed access to a TOML table with one-line errors naming the file and the key."""

    def __init__(self, data: dict[str, Any], source: str, prefix: str = "") -> None:
        self.data, self.source, self.prefix = data, source, prefix

    def _err(self, key: str, msg: str) -> NfedgeError:
        return NfedgeError(f"target descriptor {self.source}: {self.prefix}{key} {msg}")

    def get(self, key: str, typ, default=dataclasses.MISSING):
        if key not in self.data:
            if default is dataclasses.MISSING:
                raise self._err(key, "is missing")
            return default
        v = self.data[key]
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
            names = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
            raise self._err(key, f"must be a {names}, got {type(v).__name__}")
        return v

    def table(self, key: str, required: bool = True) -> "_Reader | None":
        if key not in self.data:
            if required:
                raise self._err(key, "table is missing")
            return None
        return _Reader(self.get(key, dict), self.source, f"{self.prefix}{key}.")

    def strings(self, key: str, default=dataclasses.MISSING) -> tuple[str, ...]:
        v = self.get(key, list, default)
        if not all(isinstance(x, str) for x in v):
            raise self._err(key, "must be a list of strings")
        return tuple(v)

    def region(self, key: str, required: bool = True) -> MemoryRegion | None:
        t = self.table(key, required)
        if t is None:
            return None
        r = MemoryRegion(name=t.get("name", str, key), origin=t.get("origin", int), length=t.get("length", int))
        if r.origin < 0 or r.length <= 0 or r.end > 1 << 64:
            raise self._err(key, f"has an invalid range (origin {r.origin:#x}, length {r.length:#x})")
        return r


def _parse(data: dict[str, Any], source: str, aliases: tuple[str, ...]) -> TargetDescriptor:
    r = _Reader(data, source)
    known = {"name", "description", "kind", "tvm", "toolchain", "emulator", "memory", "io", "timing", "npu"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise NfedgeError(f"target descriptor {source}: unknown key(s) {', '.join(unknown)}")
    name = r.get("name", str)
    kind = r.get("kind", str)
    if kind not in KINDS:
        raise NfedgeError(f"target descriptor {source}: kind {kind!r} is not one of {', '.join(KINDS)}")
    npu = _npu(r, source, kind)
    if npu is not None:  # an NPU target: Vela compiles it; no TVM, no toolchain, nothing that runs it here
        tvm_t, toolchain = {}, Toolchain(cc="", size="", cflags=(), ldflags=())
    else:
        tvm_t = r.table("tvm").get("target", dict)
        if tvm_t.get("kind") != "llvm":
            raise NfedgeError(f"target descriptor {source}: tvm.target.kind must be \"llvm\" (got {tvm_t.get('kind')!r})")
        tc = r.table("toolchain")
        toolchain = Toolchain(cc=tc.get("cc", str), size=tc.get("size", str, "size"),
                              cflags=tc.strings("cflags", ()), ldflags=tc.strings("ldflags", ()))
    em = r.table("emulator", required=kind not in ("host", "ethos-u"))
    emulator = None
    if em is not None and kind in ("host", "ethos-u"):  # never a program a descriptor names
        raise NfedgeError(f"target descriptor {source}: a {kind} target takes no [emulator]")
    if em is not None:
        emulator = Emulator(command=em.strings("command"), machine=em.get("machine", str, None),
                            cpu=em.get("cpu", str, None), args=em.strings("args", ()))
        if not emulator.command:
            raise NfedgeError(f"target descriptor {source}: emulator.command is empty")
        for key in ("machine", "cpu"):
            v = getattr(emulator, key)
            if v is not None and not _QEMU_NAME.fullmatch(v):
                raise NfedgeError(f"target descriptor {source}: emulator.{key} {v!r} is not a plain name "
                                  "(letters, digits, '.', '_', '-')")
    mem = r.table("memory")
    boot = mem.region("boot", required=False)
    code = mem.region("code", required=kind == "bare-metal")
    ram = mem.region("ram")
    image = mem.region("image", required=kind == "bare-metal")
    input_ = mem.region("input", required=kind == "bare-metal")
    stack_bytes = mem.get("stack_bytes", int, 0x8000)
    heap_bytes = mem.get("heap_bytes", int, 0x8000)
    io = r.table("io", required=kind == "bare-metal")
    uart = io.get("uart", int) if io is not None else None
    if kind != "bare-metal" and (boot is not None or input_ is not None or io is not None):
        raise NfedgeError(f"target descriptor {source}: memory.boot, memory.input and [io] only apply to bare-metal "
                          "targets")
    if kind == "bare-metal":
        if not 0 < uart < 1 << 32 or uart % 4:
            raise NfedgeError(f"target descriptor {source}: io.uart must be a word-aligned 32-bit address, got {uart:#x}")
        regions = [r for r in (boot, code, ram, image, input_) if r is not None]
        for i, a in enumerate(regions):
            for b in regions[i + 1:]:
                if not a.overlaps(b):
                    continue
                raise NfedgeError(f"target descriptor {source}: memory regions {a.name} and {b.name} overlap")
        if emulator.machine is None:
            raise NfedgeError(f"target descriptor {source}: a bare-metal target needs emulator.machine")
    tm = r.table("timing")
    timer = tm.get("timer", str)
    if timer not in TIMERS:
        raise NfedgeError(f"target descriptor {source}: timing.timer {timer!r} is not one of {', '.join(TIMERS)}")
    ipt = tm.get("instructions_per_tick", float, None)
    if timer == "systick" and (ipt is None or ipt <= 0):
        raise NfedgeError(f"target descriptor {source}: a systick timer needs a positive timing.instructions_per_tick")
    clock = tm.get("clock_hz", int)
    if clock < 0:
        raise NfedgeError(f"target descriptor {source}: timing.clock_hz must be >= 0")
    return TargetDescriptor(
        name=name, description=r.get("description", str, name), kind=kind,
        tvm_target_json=json.dumps(tvm_t, sort_keys=True), toolchain=toolchain, emulator=emulator,
        code=code, ram=ram, image=image, stack_bytes=stack_bytes, heap_bytes=heap_bytes,
        clock_hz=clock, timer=timer, instructions_per_tick=ipt if timer == "systick" else None,
        source=source, boot=boot, aliases=aliases, input=input_, uart=uart, npu=npu)


_VELA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # Vela's configuration and section names


def _npu(r: _Reader, source: str, kind: str) -> Npu | None:
    t = r.table("npu", required=kind == "ethos-u")
    if t is None:
        return None
    if kind != "ethos-u":
        raise NfedgeError(f"target descriptor {source}: [npu] applies to ethos-u targets only")
    if "tvm" in r.data or "toolchain" in r.data:
        raise NfedgeError(f"target descriptor {source}: an ethos-u target takes no [tvm] or [toolchain] "
                          "(Vela compiles it)")
    npu = Npu(accelerator=t.get("accelerator", str), system_config=t.get("system_config", str),
              memory_mode=t.get("memory_mode", str))
    for key, v in dataclasses.asdict(npu).items():
        if not _VELA_NAME.fullmatch(v):
            raise NfedgeError(f"target descriptor {source}: npu.{key} {v!r} is not a plain name "
                              "(letters, digits, '_', '-')")
    return npu
