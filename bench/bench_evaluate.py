"""Benchmark: the host evaluation sweep, nfedge's `evaluate` against the straightforward loop it replaced.

The straightforward loop is the previous implementation: for every (voltage, chip) it injects the faults,
dequantizes the image and runs the base model on the whole test set, alone and behind every generator, even
when the faulty image equals one already scored (at nominal voltage every chip is the clean image). Both
sides get the same model, image, generators, test images and chips; the script checks that they report the
same accuracies before it prints a time. The sides run in interleaved rounds, the order rotating each round
(the machine is shared and noisy: ratios measured side by side are what counts).

    .venv/bin/python bench/bench_evaluate.py [--base cnn-s] [--generators ConvT UNetT UIP] [--images 2000]
        [--chips 10] [--voltages 1.0 0.958 0.917 0.875 0.833 0.792] [--rounds 2]
The defaults are the main job's evaluate stage (RunConfig: 6 table voltages, 10 chips, 2,000 test images).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from nfedge.analysis.evaluate import EvaluateConfig, evaluate, predict, summarize, transform_inputs
from nfedge.models import create_base_model, create_generator
from nfedge.progress import QUIET
from nfedge.sram.image import build_image
from nfedge.train.perturb import perturbed_weights


def straightforward(model, image, test, cfg, generators):
    """The previous evaluate loop: every (voltage, chip) scored from scratch."""
    x, y = test
    inputs = {None: x, **{n: transform_inputs(g, x, cfg.batch_size) for n, g in generators.items()}}

    def acc(weights, name):
        return 100.0 * float((predict(model, weights, inputs[name], batch_size=cfg.batch_size) == y).float().mean())

    clean_w = image.dequantized_weights()
    out = {"CA": acc(clean_w, None), "CA_NF": {n: acc(clean_w, n) for n in generators}, "conditions": []}
    for cond in cfg.conditions():
        pa, pa_nf = [], {n: [] for n in generators}
        for chip in range(cfg.chips):
            w = perturbed_weights(image, cfg.inject_config(cond, chip))
            pa.append(acc(w, None))
            for n in generators:
                pa_nf[n].append(acc(w, n))
        out["conditions"].append({"PA": summarize(pa), "PA_NF": {n: summarize(v) for n, v in pa_nf.items()}})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="cnn-s")
    ap.add_argument("--generators", nargs="*", default=["ConvT", "UNetT", "UIP"])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--chips", type=int, default=10)
    ap.add_argument("--voltages", type=float, nargs="+", default=[1.0, 0.958, 0.917, 0.875, 0.833, 0.792])
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    torch.manual_seed(0)
    model = create_base_model(a.base, in_channels=1, num_classes=10).eval()
    image = build_image(model, 8)
    gens = {n: create_generator(n, in_channels=1).eval() for n in a.generators}
    g = torch.Generator().manual_seed(1)
    x = torch.rand(a.images, 1, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the model mostly gets right, so faults show in the accuracies
    cfg = EvaluateConfig(voltages=tuple(a.voltages), chips=a.chips)

    sides = {"nfedge": lambda: evaluate(model, image, (x, y), cfg, generators=gens, progress=QUIET),
             "straightforward": lambda: straightforward(model, image, (x, y), cfg, gens)}
    times: dict[str, list[float]] = {n: [] for n in sides}
    out = {}
    names = list(sides)
    for r in range(a.rounds):
        for n in names[r % 2:] + names[: r % 2]:
            t = time.perf_counter()
            out[n] = sides[n]()
            times[n].append(time.perf_counter() - t)
    nf, sf = out["nfedge"], out["straightforward"]
    assert nf["clean"]["CA"] == sf["CA"] and nf["clean"]["CA_NF"] == sf["CA_NF"]
    for c_nf, c_sf in zip(nf["conditions"], sf["conditions"]):
        assert c_nf["PA"] == c_sf["PA"], (c_nf["PA"], c_sf["PA"])
        assert {n: e["PA_NF"] for n, e in c_nf["generators"].items()} == c_sf["PA_NF"]
    t_nf, t_sf = statistics.median(times["nfedge"]), statistics.median(times["straightforward"])
    print(f"# evaluate sweep: base {a.base}, generators {' '.join(a.generators) or 'none'}, {a.images} images, "
          f"{len(a.voltages)} voltages x {a.chips} chips; {platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, median of {a.rounds} rounds")
    print("| implementation | seconds |\n|---|---|")
    print(f"| nfedge evaluate | {t_nf:.1f} |\n| straightforward loop | {t_sf:.1f} |")
    print(f"\nspeed-up {t_sf / t_nf:.2f}x; identical accuracies on both sides")


if __name__ == "__main__":
    main()
