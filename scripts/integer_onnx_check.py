"""The ONNX cross-check of integer mode (issue #11 item 5): onnxruntime on the exported integer model against
nfedge's integer reference, over the test set, on the clean image and on faulty ones, with and without a
generator front. One Markdown table.

    .venv/bin/python scripts/integer_onnx_check.py --base runs/base/base.pt --image runs/img \
        [--generator runs/gen/generator.pt] [--test-limit 0 (all)] [--calib 512] [--seed 0] \
        [--ber 0.01] [--chips 2] [--no-float] [--out DIR]
The programs are calibrated with nfedge.integer.calibrate.calibrate_programs on a seeded subset of the training
split (--calib images, --seed). The base program is shared by both rows, as on the firmware: its ranges are seen on x
and on F(x). Faulty images: nfedge.sram.faults.inject_faults (flip) at each --ber, chips 0 .. --chips - 1. Rows
"exact" are the integer export (the bound: bit-exact); rows "float" are the QLinearConv/QDQ-style float32 rescale
with round half to even (nfedge/integer/onnx_export.py), measured on the same reference outputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from nfedge.data import DataConfig, load_dataset
from nfedge.data.datasets import calibration_images
from nfedge.integer.calibrate import INPUT_SCALE, calibrate_programs
from nfedge.integer.onnx_export import agreement, export_integer_onnx, reference_front, reference_output, run_onnx
from nfedge.integer.scheme import quantize_to_int8
from nfedge.sram.faults import InjectConfig, inject_faults
from nfedge.sram.image import read_image
from nfedge.train.checkpoint import load_checkpoint
from nfedge.train.eopm import load_generator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="base checkpoint (base.pt)")
    ap.add_argument("--image", required=True, help="memory image directory (the clean image)")
    ap.add_argument("--generator", help="generator checkpoint (generator.pt): adds rows behind its front F(x)")
    ap.add_argument("--test-limit", type=int, default=0, help="0: the whole test set")
    ap.add_argument("--calib", type=int, default=512, help="calibration images (seeded training subset)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ber", type=float, nargs="*", default=[0.01], help="bit error rates of the faulty images")
    ap.add_argument("--chips", type=int, default=2, help="faulty chips (fault seeds) per BER")
    ap.add_argument("--no-float", action="store_true", help="skip the float (QDQ-style) rescale rows")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--out", help="directory for the .onnx files (default: a temporary one)")
    a = ap.parse_args()

    model, meta = load_checkpoint(a.base)
    image = read_image(a.image)
    data = DataConfig.from_dict(meta["meta"]["config"]["data"])
    x_calib = calibration_images(data, a.calib, a.seed)
    _, test, info = load_dataset(dataclasses.replace(data, test_limit=a.test_limit or None, seed=a.seed))
    x, y = (t.numpy() for t in test.tensors)
    gens = {}
    if a.generator:
        gen, gmeta = load_generator(a.generator)
        gens[gmeta["generator"]] = gen
    programs = calibrate_programs(model, image, gens, x_calib)
    images = {"clean": image}
    for ber in a.ber:
        for chip in range(a.chips):
            images[f"BER {ber:g}, chip {chip}"] = inject_faults(image, InjectConfig(ber=ber, chip=chip))[0]
    x_q = quantize_to_int8(x, INPUT_SCALE)
    out_dir = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="nfedge-onnx-"))
    rescales = ("exact",) if a.no_float else ("exact", "float")
    fronts = {"none": None, **{name: programs[name] for name in gens}}

    rows, secs = [], {"onnx": 0.0, "reference": 0.0}
    for front, gprog in fronts.items():
        t0 = time.perf_counter()
        x_in = reference_front(gprog, x_q) if gprog is not None else x_q
        secs["reference"] += time.perf_counter() - t0
        paths = {}
        for r in rescales:
            paths[r] = out_dir / f"integer-{front}-{r}.onnx"
            export_integer_onnx(programs["base"], paths[r], x.shape[1:], image=image, generator_program=gprog,
                                rescale=r)
        for name, img in images.items():
            t0 = time.perf_counter()
            ref = reference_output(programs["base"], x_in, img)
            secs["reference"] += time.perf_counter() - t0
            for r in rescales:
                t0 = time.perf_counter()
                got = run_onnx(paths[r], x_q, img, threads=a.threads)
                secs["onnx"] += time.perf_counter() - t0
                row = {"front": front, "rescale": r, "image": name, **agreement(got["output"], ref),
                       "acc_onnx": 100 * float(np.mean(got["output"].argmax(1) == y)),
                       "acc_ref": 100 * float(np.mean(ref.argmax(1) == y)),
                       "front_same": float(np.mean(got["front"] == x_in)) if gprog is not None else None}
                rows.append(row)

    print(f"{info.name}, {len(x)} test images, {a.calib} calibration images (seed {a.seed}), "
          f"{image.manifest.bits}-bit image, onnxruntime {ort.__version__} (CPU), models in {out_dir}")
    print("| front | rescale | image | identical predictions | identical logits | max abs logit diff "
          "| identical F(x) | accuracy onnx / reference |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        fs = "-" if r["front_same"] is None else f"{100 * r['front_same']:.3f}%"
        print(f"| {r['front']} | {r['rescale']} | {r['image']} | {100 * r['predictions']:.2f}% "
              f"| {100 * r['outputs']:.3f}% "
              f"| {r['max_diff']} | {fs} | {r['acc_onnx']:.2f} / {r['acc_ref']:.2f} |")
    print(f"logit units: the logits' scale, max|logit| on the calibration set / 2^20. "
          f"onnxruntime {secs['onnx']:.1f} s, "
          f"integer reference {secs['reference']:.1f} s in all")


if __name__ == "__main__":
    main()
