"""Benchmark: fault injection into a ResNet18-size 8-bit weight image at 1% BER.

Compares, side by side in one process (medians of --repeats runs):
  nfedge      sampling + applying the faults (O(faulty cells): Poisson time slabs, sorted runs, bit masks),
              and the whole inject_faults call (which also hashes the new image for its manifest)
  naive       one uniform draw per stored bit, packbits, XOR (what the sampling avoids)
  copy        a plain in-memory copy of the image bytes
and the same at file level (read image dir, inject, write image dir vs copying the two files).

    .venv/bin/python bench/bench_inject.py [--weights 11173962] [--ber 0.01] [--repeats 7]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nfedge.sram.faults import FAULT_MODELS, InjectConfig, apply_cell_faults, inject_faults
from nfedge.sram.image import build_image, read_image, with_codes, write_image


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def naive_flip(codes: np.ndarray, ber: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    faulty = rng.random(codes.size * 8) < ber  # one uniform per stored bit
    mask = np.packbits(faulty, bitorder="little")
    return (codes.view(np.uint8) ^ mask).view(np.int8)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", type=int, default=11_173_962, help="codes in the image (ResNet18: 11.17M)")
    ap.add_argument("--ber", type=float, default=0.01)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()

    base = build_image(torch.nn.Linear(a.weights, 1, bias=False), 8)
    codes = np.random.default_rng(0).integers(-127, 128, a.weights).astype(np.int8)
    image = with_codes(base, codes, None)
    cfg = InjectConfig(fault="flip", ber=a.ber, chip=1)

    m = image.manifest

    def sample_and_apply():
        return apply_cell_faults(codes, 8, FAULT_MODELS.get("flip")(cfg, m.stored_bits, m.geometry))

    rows = {
        "nfedge sample + apply faults": median_ms(sample_and_apply, a.repeats),
        "nfedge inject_faults (+ sha256, manifest)": median_ms(lambda: inject_faults(image, cfg), a.repeats),
        "naive (uniform per bit)": median_ms(lambda: naive_flip(codes, a.ber, 1), max(3, a.repeats // 2)),
        "copy (np.copy)": median_ms(lambda: codes.copy(), a.repeats),
    }
    with tempfile.TemporaryDirectory() as tmp:
        src, dst, cp = Path(tmp) / "clean", Path(tmp) / "faulty", Path(tmp) / "copy"
        write_image(image, src)

        def inject_files():
            write_image(inject_faults(read_image(src), cfg)[0], dst)

        def copy_files():
            shutil.copytree(src, cp, dirs_exist_ok=True)

        rows["file: read + inject + write"] = median_ms(inject_files, a.repeats)
        rows["file: copy image dir"] = median_ms(copy_files, a.repeats)

    _, audit = inject_faults(image, cfg)
    print(f"# {a.weights:,} 8-bit weights ({audit.stored_bits:,} stored bits), BER {a.ber}, "
          f"{audit.faulty_cells:,} faulty cells; {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, numpy {np.__version__}")
    print("| what | median ms |\n|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v:.2f} |")
    n, c = rows["nfedge sample + apply faults"], rows["copy (np.copy)"]
    print(f"\nnaive / nfedge = {rows['naive (uniform per bit)'] / n:.1f}x; nfedge / copy = {n / c:.1f}x; "
          f"file level: (read+inject+write) / copy = {rows['file: read + inject + write'] / rows['file: copy image dir']:.1f}x")


if __name__ == "__main__":
    main()
