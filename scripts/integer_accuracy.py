"""Integer mode against weight-only on the host: accuracy of a base checkpoint + image, both modes, one table.

    .venv/bin/python scripts/integer_accuracy.py --base runs/default/base-*/base.pt --image runs/default/image-*/image \
        [--calib 512] [--test-limit 0 (all)] [--seed 0]
Calibration images are a seeded subset of the training split; the test images are the checkpoint's dataset's.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from nfedge.analysis.evaluate import predict
from nfedge.data import DataConfig, load_dataset
from nfedge.data.datasets import calibration_images
from nfedge.integer.calibrate import INPUT_SCALE, calibrate, program_weights
from nfedge.integer.program import trace_program
from nfedge.integer.reference import image_codes, run_integer
from nfedge.integer.scheme import quantize_to_int8
from nfedge.integer.simulate import run_float
from nfedge.sram.image import read_image
from nfedge.train.checkpoint import load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--calib", type=int, default=512, help="calibration images (seeded training subset)")
    ap.add_argument("--test-limit", type=int, default=0, help="0: the whole test set")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    model, meta = load_checkpoint(a.base)
    image = read_image(a.image)
    data = DataConfig.from_dict(meta["meta"]["config"]["data"])
    x_calib = calibration_images(data, a.calib, a.seed)
    _, test, info = load_dataset(dataclasses.replace(data, test_limit=a.test_limit or None, seed=a.seed))
    x, y = test.tensors
    prog = calibrate(trace_program(model, True), model, x_calib, image=image)
    wo = 100 * float((predict(model, image.dequantized_weights(), x) == y).float().mean())
    t0 = time.perf_counter()
    x_q = quantize_to_int8(x.numpy(), INPUT_SCALE)
    out = run_integer(prog, x_q, image_codes(prog, image))
    secs = time.perf_counter() - t0
    integer = 100 * float((torch.from_numpy(out).argmax(1) == y).float().mean())
    twin = run_float(prog, torch.from_numpy(x_q * INPUT_SCALE), program_weights(prog, model, image), fake_quant=True)
    fq = 100 * float((twin.argmax(1) == y).float().mean())
    print(f"{info.name}, {len(x)} test images, {a.calib} calibration images (seed {a.seed}), {image.manifest.bits}-bit image")
    print("| mode | accuracy |\n|---|---|")
    print(f"| weight-only | {wo:.2f} |\n| integer | {integer:.2f} |\n| integer float twin | {fq:.2f} |")
    print(f"integer reference: {secs:.1f} s for {len(x)} images ({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
