"""Undervolting an NPU's weight memory: bit faults in Vela's encoded weight stream against faults in the raw codes at
the same bit error rate, over chips, through the exact integer reference (issue #27 item 4; docs/NPU.md).

    .venv/bin/python scripts/npu_weight_faults.py --base runs/default/base-*/base.pt \
        --image runs/default/image-*/image [--bers 1e-5 1e-4 1e-3 1e-2] [--chips 5] [--test-limit 500]

Encoded: every conv/linear layer's codes (OHWI order, as Vela lays them out) compressed by Vela's own weight codec
(ethosu.mlw_codec.encode, the Ethos-U55/U65 format), each bit of the stream flipped with probability BER (seeded per
chip, BER and layer), decoded again (ethosu.mlw_codec.decode). The decoder aborts the whole process (exit()) on a
stream it cannot parse, so it runs in a child process per stream; a stream it refuses is "undecodable" and the chip
has no accuracy (what the NPU's hardware decoder would do with it is not known here). A decoded stream shorter than
the layer is padded with 0, longer truncated, and values are saturated to int8.
Raw: nfedge.sram.faults.inject_faults at the same BER and chip (one bit flip per faulty cell of the b-bit codes).
Both: the integer program calibrated on the clean image, its output on the test subset, accuracy in %.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

import numpy as np

from nfedge.data import DataConfig, load_dataset
from nfedge.data.datasets import calibration_images
from nfedge.integer.calibrate import INPUT_SCALE, calibrate
from nfedge.integer.program import trace_program
from nfedge.integer.reference import image_codes, run_integer
from nfedge.integer.scheme import quantize_to_int8
from nfedge.sram.faults import InjectConfig, inject_faults
from nfedge.sram.image import read_image
from nfedge.train.checkpoint import load_checkpoint

DECODER = ("import sys, numpy as np\nfrom ethosu import mlw_codec\n"
           "d = mlw_codec.decode(bytearray(sys.stdin.buffer.read()))\n"
           "sys.stdout.buffer.write(np.asarray(d, dtype=np.int32).tobytes())\n")


def encode(codes: np.ndarray) -> bytes:
    from ethosu import mlw_codec

    ohwi = codes.transpose(0, 2, 3, 1) if codes.ndim == 4 else codes  # Vela's weight layout
    return bytes(mlw_codec.encode([int(v) for v in ohwi.reshape(-1)]))


def decode(stream: bytes, like: np.ndarray) -> np.ndarray | None:
    """The decoded codes in `like`'s (OIHW) shape, or None when the codec refuses the stream."""
    r = subprocess.run([sys.executable, "-c", DECODER], input=stream, capture_output=True, timeout=120)
    if r.returncode != 0:
        return None
    d = np.frombuffer(r.stdout, dtype=np.int32).astype(np.int64)
    n = like.size
    d = np.concatenate([d[:n], np.zeros(max(0, n - d.size), np.int64)]).clip(-128, 127)
    if like.ndim == 4:
        o, i, h, w = like.shape
        return d.reshape(o, h, w, i).transpose(0, 3, 1, 2)
    return d.reshape(like.shape)


def flip(stream: bytes, ber: float, rng: np.random.Generator) -> tuple[bytes, int]:
    bits = np.unpackbits(np.frombuffer(stream, np.uint8))
    mask = rng.random(bits.size) < ber
    return np.packbits(bits ^ mask.astype(np.uint8)).tobytes(), int(mask.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--bers", type=float, nargs="+", default=[1e-5, 1e-4, 1e-3, 1e-2])
    ap.add_argument("--chips", type=int, default=5)
    ap.add_argument("--test-limit", type=int, default=500)
    ap.add_argument("--calib", type=int, default=512)
    a = ap.parse_args()
    model, meta = load_checkpoint(a.base)
    image = read_image(a.image)
    data = DataConfig.from_dict(meta["meta"]["config"]["data"])
    prog = calibrate(trace_program(model, True), model, calibration_images(data, a.calib, 0), image=image)
    _, test, info = load_dataset(dataclasses.replace(data, test_limit=a.test_limit, seed=0))
    x, y = test.tensors
    x_q, y = quantize_to_int8(x.numpy(), INPUT_SCALE), y.numpy()

    def accuracy(codes: dict) -> float:
        return 100.0 * float(np.mean(run_integer(prog, x_q, codes).argmax(1) == y))

    clean = image_codes(prog, image)
    streams = {k: encode(v) for k, v in clean.items()}
    raw_bytes, enc_bytes = sum(v.size for v in clean.values()), sum(len(s) for s in streams.values())
    assert all(np.array_equal(decode(streams[k], v), v) for k, v in clean.items())  # the codec round-trips
    print(f"{info.name}, {len(y)} test images, {image.manifest.bits}-bit image, {len(clean)} layers: "
          f"{raw_bytes:,} codes "
          f"-> {enc_bytes:,} encoded bytes; clean accuracy {accuracy(clean):.2f}%")
    print("| BER | raw codes: accuracy mean (worst) | raw: wrong codes | encoded: undecodable chips | "
          "encoded: accuracy mean (worst) of decodable | encoded: wrong codes (decodable) |")
    print("|---|---|---|---|---|---|")
    for ber in a.bers:
        raw_acc, raw_wrong, enc_acc, enc_wrong, undecodable = [], [], [], [], 0
        for chip in range(a.chips):
            faulty, _ = inject_faults(image, InjectConfig(ber=ber, chip=chip))
            fc = image_codes(prog, faulty)
            raw_acc.append(accuracy(fc))
            raw_wrong.append(sum(int(np.sum(fc[k] != clean[k])) for k in clean) / raw_bytes)
            rng = np.random.default_rng([chip, int(round(ber * 1e9))])
            dec = {k: decode(flip(streams[k], ber, rng)[0], clean[k]) for k in clean}
            if any(v is None for v in dec.values()):
                undecodable += 1
                continue
            enc_acc.append(accuracy(dec))
            enc_wrong.append(sum(int(np.sum(dec[k] != clean[k])) for k in clean) / raw_bytes)
        enc = f"{np.mean(enc_acc):.2f} ({min(enc_acc):.2f})" if enc_acc else "-"
        print(f"| {ber:g} | {np.mean(raw_acc):.2f} ({min(raw_acc):.2f}) | {100 * np.mean(raw_wrong):.4f}% | "
              f"{undecodable} of {a.chips} | {enc} | {100 * np.mean(enc_wrong):.4f}% |" if enc_wrong else
              f"| {ber:g} | {np.mean(raw_acc):.2f} ({min(raw_acc):.2f}) | {100 * np.mean(raw_wrong):.4f}% | "
              f"{undecodable} of {a.chips} | {enc} | - |")


if __name__ == "__main__":
    main()
