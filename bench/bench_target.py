"""Benchmark: instructions per inference (and per MAC) of base model and generator on emulated Cortex-M.

Builds `--base` + `--generator` (random weights, 8 bits, 1x32x32) for each target and each lowering
schedule (nfedge.deploy.compile.lower.SCHEDULES: "none" = as fused, "inline" = epilogues folded into their
producers) and each arithmetic mode (weight-only: float32 layers; integer: int8/int32, docs/INTEGER.md, the
programs calibrated on 64 random images), runs one sample under QEMU -icount (deterministic SysTick counts)
and prints a Markdown table with RAM and code sizes.

    .venv/bin/python bench/bench_target.py [--base cnn-s] [--generator ConvT] [--targets cortex-m55 cortex-m4]
                                           [--schedules none inline] [--modes weight-only integer]
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch

from nfedge.analysis.dataflow import count_macs
from nfedge.deploy.compile.build import BuildConfig, build_for_target
from nfedge.deploy.run.harness import run_on_target
from nfedge.deploy.compile.lower import SCHEDULES
from nfedge.integer import MODES
from nfedge.integer.calibrate import INPUT_SCALE, calibrate_programs
from nfedge.integer.scheme import quantize_to_int8
from nfedge.models import create_base_model, create_generator
from nfedge.sram.image import build_image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="cnn-s")
    ap.add_argument("--generator", default="ConvT")
    ap.add_argument("--targets", nargs="+", default=["cortex-m55", "cortex-m4"])
    ap.add_argument("--schedules", nargs="+", choices=SCHEDULES, default=list(SCHEDULES),
                    help="lowering schedules to compare side by side (default: all)")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="arithmetic modes (default: both)")
    a = ap.parse_args()
    torch.manual_seed(0)
    base = create_base_model(a.base, in_channels=1, num_classes=10).eval()
    gen = create_generator(a.generator, in_channels=1).eval()
    image = build_image(base, 8)
    macs_b, macs_g = count_macs(base, (1, 32, 32)), count_macs(gen, (1, 32, 32))
    x = (np.random.default_rng(0).random((1, 1, 32, 32), dtype=np.float32) * 2 - 1)
    x_calib = torch.rand(64, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    programs = calibrate_programs(base, image, {"generator": gen}, x_calib)
    print(f"# {a.base} ({macs_b:,} MACs) + {a.generator} ({macs_g:,} MACs), 8-bit weights, batch 1")
    print("| target | mode | schedule | base instr | base instr/MAC | generator instr | generator instr/MAC | overhead "
          "| est. ms at clock | RAM bytes | code bytes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for t in a.targets:
        for mode in a.modes:
            integer = mode == "integer"
            xin = quantize_to_int8(x, INPUT_SCALE) if integer else x
            for sched in a.schedules:
                with tempfile.TemporaryDirectory() as d:
                    b = build_for_target(BuildConfig(target=t, schedule=sched, mode=mode), base, image, gen, d,
                                         programs=programs if integer else None)
                    r = run_on_target(b, image.codes.tobytes(), xin)
                    ib, ig = int(r.instructions_base[0]), int(r.instructions_generator[0])
                    ms = 1e3 * (r.estimated_seconds_base + r.estimated_seconds_generator)
                    sz = b.manifest["sizes"]
                    print(f"| {t} | {mode} | {sched} | {ib:,} | {ib / macs_b:.2f} | {ig:,} | {ig / macs_g:.2f} | "
                          f"{ig / ib:.1%} | {ms:.0f} | {sz['ram_bytes']:,} | {sz['code_bytes']:,} |", flush=True)


if __name__ == "__main__":
    main()
