"""Profile: instructions per operator of one inference on an emulated Cortex-M (a QEMU execution trace).

Builds `--base` + `--generator` (random weights, 8 bits, 1x32x32, the integer programs calibrated on 64 random
images, as bench/bench_target.py) for `--target` in `--mode`, runs one sample under QEMU with
`-d in_asm,exec,nochain` added (a trace into a temp folder, which is a developer's tool, not something
`nfedge faultrun` allows), and sums each executed translation block's instruction count per firmware symbol.
The total is within a few percent of the SysTick count (QEMU's trace covers boot and I/O too).

    .venv/bin/python bench/profile_target.py [--target cortex-m55] [--mode integer] [--top 25]
"""

from __future__ import annotations

import argparse
import bisect
import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from nfedge.deploy.run import harness
from nfedge.deploy.compile.build import BuildConfig, build_for_target
from nfedge.integer.calibrate import INPUT_SCALE, calibrate_programs
from nfedge.integer.scheme import quantize_to_int8
from nfedge.models import create_base_model, create_generator
from nfedge.sram.image import build_image

_TB = re.compile(r"^IN:.*$")
_ADDR = re.compile(r"^0x([0-9a-f]+):")
_EXEC = re.compile(r"^Trace \d+: 0x[0-9a-f]+ \[[0-9a-f]+/([0-9a-f]+)/")


def symbols(elf: Path) -> tuple[list[int], list[str]]:
    out = subprocess.run(["arm-none-eabi-nm", "-n", str(elf)], capture_output=True, text=True, check=True).stdout
    rows = [(int(a, 16) & ~1, n) for a, t, n in (ln.split()[:3] for ln in out.splitlines() if len(ln.split()) >= 3)
            if t.lower() == "t"]
    rows.sort()
    return [a for a, _ in rows], [n for _, n in rows]


def profile(log: Path, elf: Path) -> Counter:
    sizes: dict[int, int] = {}
    execs: Counter = Counter()
    start = None
    with open(log, errors="replace") as f:
        for line in f:
            m = _EXEC.match(line)
            if m:
                execs[int(m.group(1), 16)] += 1
                continue
            if line.startswith("IN:"):
                start = None
                continue
            m = _ADDR.match(line)
            if m:
                a = int(m.group(1), 16)
                if start is None:
                    start = a
                    sizes[start] = 0
                sizes[start] += 1
    addrs, names = symbols(elf)
    per: Counter = Counter()
    for pc, n in execs.items():
        i = bisect.bisect_right(addrs, pc) - 1
        per[names[i] if i >= 0 else "?"] += n * sizes.get(pc, 0)
    return per


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
        per = profile(log, Path(b.path) / "firmware.elf")
    total = sum(per.values())
    print(f"# {a.base} + {a.generator} on {a.target} ({a.mode}): SysTick base {int(r.instructions_base[0]):,}, "
          f"generator {int(r.instructions_generator[0]):,}; traced {total:,} instructions")
    print("| symbol | instructions | share |")
    print("|---|---|---|")
    for name, n in per.most_common(a.top):
        print(f"| {name} | {n:,} | {n / total:.1%} |")


if __name__ == "__main__":
    main()
