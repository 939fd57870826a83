"""Profile: instructions per operator of one inference on an emulated Cortex-M (a QEMU execution trace).

Builds `--base` + `--generator` (random weights, 8 bits, 1x32x32, the integer programs calibrated on 64 random
images, as bench/bench_target.py) for `--target` in `--mode`, runs one sample under QEMU with
`-d in_asm,exec,nochain` added (a trace into a temp folder, which is a developer's tool, not something
`nfedge faultrun` allows), and counts the instructions of each executed translation block per firmware symbol.

How a block's instructions are counted: QEMU 7.2's disassembler does not know Helium, so `in_asm` prints a 32-bit
MVE or low-overhead-loop instruction as two lines (a `.byte` halfword, then the second halfword as if it were an
instruction). The script instead takes the block's halfwords from those lines and counts Thumb encodings (a
first halfword with bits [15:11] = 0b11101, 0b11110 or 0b11111 starts a 32-bit one). A block is known by its
host address (QEMU translates blocks at the same guest address several times, e.g. shortened for icount), a
"Stopped execution" line means the block just logged did not run, and a "cpu_io_recompile" line means it ran only
up to the instruction the next block starts at (an I/O access).

Only what runs between the SysTick reads is reported (each pair of `nfedge_timer_ticks` calls around base(x),
G and base(F(x))); the "check" line compares that sum with the SysTick instructions the harness reports.

    .venv/bin/python bench/profile_target.py [--target cortex-m55] [--mode integer] [--top 25]
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from nfedge.deploy.compile.build import BuildConfig, build_for_target
from nfedge.deploy.run import harness
from nfedge.integer.calibrate import INPUT_SCALE, calibrate_programs
from nfedge.integer.scheme import quantize_to_int8
from nfedge.models import create_base_model, create_generator
from nfedge.sram.image import build_image

_EXEC = re.compile(r"^Trace \d+: (0x[0-9a-f]+) \[[0-9a-f]+/([0-9a-f]+)/")
_INSN = re.compile(r"^0x([0-9a-f]+):  ([0-9a-f]{4}(?: [0-9a-f]{4})*)  ")
_TIMER = "nfedge_timer_ticks"  # the firmware's SysTick read (firmware_harness/startup_cm.c)
_TOLERANCE = 1e-3  # the check's bound on |profile / SysTick - 1|


def symbols(elf: Path) -> tuple[list[int], list[str]]:
    out = subprocess.run(["arm-none-eabi-nm", "-n", str(elf)], capture_output=True, text=True, check=True).stdout
    rows = [(int(a, 16) & ~1, n) for a, t, n in (ln.split()[:3] for ln in out.splitlines() if len(ln.split()) >= 3)
            if t.lower() == "t"]
    rows.sort()
    return [a for a, _ in rows], [n for _, n in rows]


def thumb_starts(pc: int, halfwords: list[int]) -> list[int]:
    """The addresses of the Thumb instructions in a block of halfwords starting at pc."""
    starts, i = [], 0
    while i < len(halfwords):
        starts.append(pc + 2 * i)
        i += 2 if halfwords[i] >> 11 in (0b11101, 0b11110, 0b11111) else 1
    return starts


def profile(log: Path, elf: Path) -> tuple[Counter, int]:
    """(instructions per symbol between the SysTick reads, instructions outside them: boot, I/O, the reads)."""
    addrs, names = symbols(elf)
    blocks: dict[str, tuple[str, list[int]]] = {}  # host address -> (symbol, instruction addresses)
    new_pc, new_hw = None, []  # the block being listed by in_asm
    per: Counter = Counter()
    outside = calls = 0
    last, ran = None, "all"  # the block logged last, and how much of it ran ("all", "none", "to next")
    with open(log, errors="replace") as f:
        for line in itertools.chain(f, ["Trace 0: 0x0 [0/0/"]):  # a sentinel block commits the last one
            m = _EXEC.match(line)
            if m:
                host, pc = m.group(1), int(m.group(2), 16)
                if last is not None:
                    name, starts, inside = last
                    n = len(starts) if ran == "all" else 0 if ran == "none" else bisect.bisect_left(starts, pc)
                    if inside:
                        per[name] += n
                    else:
                        outside += n
                if new_pc == pc:
                    i = bisect.bisect_right(addrs, pc) - 1
                    blocks[host] = (names[i] if i >= 0 else "?", thumb_starts(pc, new_hw))
                    new_pc = None
                if host not in blocks and host != "0x0":
                    raise SystemExit(f"block {host} at {pc:#x} ran before in_asm listed it (a new trace format?)")
                name, starts = blocks.get(host, ("?", []))
                timer = name == _TIMER
                calls += timer and not (last and last[0] == _TIMER)  # a new call of the SysTick read
                last, ran = (name, starts, calls % 2 == 1 and not timer), "all"
            elif line.startswith("Stopped execution of TB"):
                ran = "none"
            elif line.startswith("cpu_io_recompile"):
                ran = "to next"
            elif line.startswith("IN:"):
                new_pc, new_hw = None, []
            elif m := _INSN.match(line):
                new_pc = int(m.group(1), 16) if new_pc is None else new_pc
                new_hw += [int(h, 16) for h in m.group(2).split()]
    return per, outside


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="cnn-s")
    ap.add_argument("--generator", default="ConvT")
    ap.add_argument("--target", default="cortex-m55")
    ap.add_argument("--mode", default="integer")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    torch.manual_seed(0)
    base = create_base_model(a.base, in_channels=1, num_classes=10).eval()
    gen = create_generator(a.generator, in_channels=1).eval()
    image = build_image(base, 8)
    x = (np.random.default_rng(0).random((1, 1, 32, 32), dtype=np.float32) * 2 - 1)
    x_calib = torch.rand(64, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    integer = a.mode == "integer"
    programs = calibrate_programs(base, image, {"generator": gen}, x_calib) if integer else None
    with tempfile.TemporaryDirectory() as d:
        b = build_for_target(BuildConfig(target=a.target, mode=a.mode), base, image, gen, Path(d) / "b",
                             programs=programs)
        log = Path(d) / "trace.log"
        plain = harness.qemu_system_argv

        def traced(*args, **kw):
            return plain(*args, **kw) + ["-d", "in_asm,exec,nochain", "-D", str(log)]

        harness.qemu_system_argv = traced  # a developer's trace, for this process only
        try:
            r = harness.run_on_target(b, image.codes.tobytes(), quantize_to_int8(x, INPUT_SCALE) if integer else x)
        finally:
            harness.qemu_system_argv = plain
        per, outside = profile(log, Path(b.path) / "firmware.elf")
    counts = [int(c[0]) for c in (r.instructions_base, r.instructions_generator, r.instructions_base_nf)
              if c is not None]
    total, systick = sum(per.values()), sum(counts)
    print(f"# {a.base} + {a.generator} on {a.target} ({a.mode}), one sample: SysTick base(x), G, base(F(x)) = "
          f"{', '.join(f'{c:,}' for c in counts)} instructions; traced {total:,} between the SysTick reads and "
          f"{outside:,} outside them (boot, I/O)")
    print("| symbol | instructions | share |")
    print("|---|---|---|")
    for name, n in per.most_common(a.top):
        print(f"| {name} | {n:,} | {n / total:.1%} |")
    ratio = total / systick
    print(f"check: profile sum {total:,} vs SysTick {systick:,}: ratio {ratio:.5f} "
          f"({'within' if abs(ratio - 1) <= _TOLERANCE else 'OUTSIDE'} the {_TOLERANCE:.1%} tolerance)")
    if abs(ratio - 1) > _TOLERANCE:  # the per-symbol table above counts something SysTick does not: do not trust it
        raise SystemExit(1)


if __name__ == "__main__":
    main()
