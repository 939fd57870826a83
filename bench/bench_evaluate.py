"""Benchmark: the host evaluation sweep, three implementations side by side, and the forward-pass variants tried.

Sides (each gets the same model, image, generators, test images and chips; the script checks that all of them
report the same accuracies before it prints a time):
  nfedge evaluate            today's code: each distinct faulty image scored once, F(x) once per generator, the base
                             model run as analysis.scoring.scoring_copy (2x2 max-pools as elementwise maxima)
  distinct, model as is      the same with the model as it is (torch max_pool2d)
  previous loop              every (voltage, chip) injected and scored from scratch, the model as it is
The sides run in interleaved rounds, the order rotating each round (the machine is shared and noisy: ratios measured
side by side are what counts).

--variants adds a table of one forward pass of the base model over the test images, per faulty image, for the
layouts tried (batch sizes, inference_mode, BatchNorm folded into the convolutions, channels_last, several chips'
weights in one pass with torch.func.vmap), each with the number of predictions that differ from the model as it is
over the chips of one voltage (0 = identical).

    .venv/bin/python bench/bench_evaluate.py [--base cnn-s] [--generators ConvT UNetT UIP] [--images 2000]
        [--chips 10] [--voltages 1.0 0.958 0.917 0.875 0.833 0.792] [--rounds 2]
        [--variants [--variant-chips 4] [--variant-rounds 5]]
The defaults are the main job's evaluate stage (RunConfig: 6 table voltages, 10 chips, 2,000 test images).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
from torch import nn

from nfedge.analysis.evaluate import EvaluateConfig, evaluate, predict, summarize
from nfedge.analysis.scoring import scoring_copy
from nfedge.models import create_base_model, create_generator
from nfedge.models.generators import neuralfuse_transform
from nfedge.progress import QUIET
from nfedge.sram.faults import InjectConfig, inject_faults
from nfedge.sram.image import build_image
from nfedge.sram.sweep import faulty_images
from nfedge.train.perturb import perturbed_weights


def _inputs_as_is(generators, x, bs):
    """x and F(x) per generator, the generators as they are (before scoring_copy)."""
    with torch.no_grad():
        return {None: x, **{n: torch.cat([neuralfuse_transform(g, x[i: i + bs]) for i in range(0, len(x), bs)])
                            for n, g in generators.items()}}


def _accuracy(model, weights, x, y, bs):
    return 100.0 * float((predict(model, weights, x, batch_size=bs) == y).float().mean())


def previous_loop(model, image, test, cfg, generators):
    """The first evaluate loop: every (voltage, chip) scored from scratch."""
    x, y = test
    inputs = _inputs_as_is(generators, x, cfg.batch_size)
    clean_w = image.dequantized_weights()
    out = {"CA": _accuracy(model, clean_w, x, y, cfg.batch_size),
           "CA_NF": {n: _accuracy(model, clean_w, inputs[n], y, cfg.batch_size) for n in generators}, "conditions": []}
    for cond in cfg.conditions():
        pa, pa_nf = [], {n: [] for n in generators}
        for chip in range(cfg.chips):
            w = perturbed_weights(image, cfg.inject_config(cond, chip))
            pa.append(_accuracy(model, w, x, y, cfg.batch_size))
            for n in generators:
                pa_nf[n].append(_accuracy(model, w, inputs[n], y, cfg.batch_size))
        out["conditions"].append({"PA": summarize(pa), "PA_NF": {n: summarize(v) for n, v in pa_nf.items()}})
    return out


def distinct_images(model, image, test, cfg, generators):
    """evaluate's loop with `model` as it is: each distinct image once, a whole pass for each."""
    x, y = test
    inputs = _inputs_as_is(generators, x, cfg.batch_size)
    cache: dict = {}

    def acc(img, name):
        key = (img.manifest.image_sha256, name)
        if key not in cache:
            cache[key] = _accuracy(model, img.dequantized_weights(), inputs[name], y, cfg.batch_size)
        return cache[key]

    out = {"CA": acc(image, None), "CA_NF": {n: acc(image, n) for n in generators}, "conditions": []}
    by_cond: dict = {}
    for index, _, _, faulty in faulty_images(image, cfg):
        c = by_cond.setdefault(index, {"PA": [], "PA_NF": {n: [] for n in generators}})
        c["PA"].append(acc(faulty, None))
        for n in generators:
            c["PA_NF"][n].append(acc(faulty, n))
    out["conditions"] = [{"PA": summarize(c["PA"]), "PA_NF": {n: summarize(v) for n, v in c["PA_NF"].items()}}
                         for c in by_cond.values()]
    return out


def _fold_bn(model: nn.Module, weights: dict) -> tuple[nn.Module, dict]:
    """Conv -> BatchNorm pairs of a Sequential folded into one biased Conv (eval statistics)."""
    model, w = copy.deepcopy(model), dict(weights)
    for prefix, seq in [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Sequential)]:
        for i in range(1, len(seq)):
            conv, bn = seq[i - 1], seq[i]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and conv.bias is None:
                name = f"{prefix}.{i - 1}" if prefix else str(i - 1)
                s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                w[f"{name}.weight"] = w[f"{name}.weight"] * s.view(-1, 1, 1, 1)
                w[f"{name}.bias"] = (bn.bias - bn.running_mean * s).detach()
                seq[i - 1] = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
                seq[i] = nn.Identity()
    return model, w


def variants(model, image, x, voltage, chips, rounds):
    """Seconds per forward pass over x for one faulty image, and predictions differing from the model as it is."""
    ws = [inject_faults(image, InjectConfig(voltage=voltage, chip=c))[0].dequantized_weights() for c in range(chips)]
    fast = scoring_copy(model)
    folded = [_fold_bn(fast, w) for w in ws]
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    cl_ws = [{k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in w.items()} for w in ws]
    stacked = {k: torch.stack([w[k] for w in ws]) for k in ws[0]}

    def run(m, wlist, xs, bs):
        return [torch.cat([torch.func.functional_call(m, w, (xs[i: i + bs],)) for i in range(0, len(xs), bs)])
                for w in wlist]

    def vmapped(bs):
        f = torch.func.vmap(lambda w, xb: torch.func.functional_call(fast, w, (xb,)), in_dims=(0, None))
        out = torch.cat([f(stacked, x[i: i + bs]) for i in range(0, len(x), bs)], dim=1)
        return list(out)

    def inference(bs):
        with torch.inference_mode():
            return run(fast, ws, x, bs)

    table = {"model as is, batch 256 (reference)": lambda: run(model, ws, x, 256),
             **{f"scoring_copy, batch {bs}": (lambda bs=bs: run(fast, ws, x, bs)) for bs in (64, 128, 256, 512)},
             "scoring_copy, batch 256, inference_mode": lambda: inference(256),
             "scoring_copy + BatchNorm folded, batch 256": lambda: [run(m, [w], x, 256)[0] for m, w in folded],
             "model as is, channels_last, batch 256": lambda: run(cl_model, cl_ws, x_cl, 256),
             f"scoring_copy, {chips} chips in one vmap pass, batch 64": lambda: vmapped(64)}
    times: dict[str, list[float]] = {n: [] for n in table}
    preds: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for r in range(rounds):
            names = list(table)[r % len(table):] + list(table)[: r % len(table)]
            for n in names:
                t = time.perf_counter()
                logits = table[n]()
                times[n].append((time.perf_counter() - t) / chips)
                preds[n] = torch.stack([v.argmax(1) for v in logits])
    ref = preds["model as is, batch 256 (reference)"]
    return [(n, statistics.median(times[n]), int((preds[n] != ref).sum())) for n in table], ref.numel()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="cnn-s")
    ap.add_argument("--generators", nargs="*", default=["ConvT", "UNetT", "UIP"])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--chips", type=int, default=10)
    ap.add_argument("--voltages", type=float, nargs="+", default=[1.0, 0.958, 0.917, 0.875, 0.833, 0.792])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variants", action="store_true", help="also time the forward-pass variants (at 0.875 V/Vmin)")
    ap.add_argument("--variant-chips", type=int, default=4, help="chips per variant round")
    ap.add_argument("--variant-rounds", type=int, default=5)
    a = ap.parse_args()
    torch.manual_seed(0)
    model = create_base_model(a.base, in_channels=1, num_classes=10).eval()
    for m in model.modules():  # BatchNorm statistics away from the identity, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(-1.0, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    image = build_image(model, 8)
    gens = {n: create_generator(n, in_channels=1).eval() for n in a.generators}
    g = torch.Generator().manual_seed(1)
    x = torch.rand(a.images, 1, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the model mostly gets right, so faults show in the accuracies
    cfg = EvaluateConfig(voltages=tuple(a.voltages), chips=a.chips)
    head = (f"base {a.base}, generators {' '.join(a.generators) or 'none'}, {a.images} images; {platform.machine()}, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}")

    sides = {"nfedge evaluate": lambda t, c: evaluate(model, image, t, c, generators=gens, progress=QUIET),
             "distinct, model as is": lambda t, c: distinct_images(model, image, t, c, gens),
             "previous loop": lambda t, c: previous_loop(model, image, t, c, gens)}
    times: dict[str, list[float]] = {n: [] for n in sides}
    out = {}
    names = list(sides)
    # One untimed warm-up of every side on a small sweep (one voltage, one chip, 512 images): the first call in a
    # process pays one-off costs (oneDNN kernel selection, allocator growth, lazy imports) that would otherwise be
    # charged to whichever side the first round times first.
    for side in sides.values():
        side((x[:512], y[:512]), EvaluateConfig(voltages=(0.875,), chips=1))
    for r in range(a.rounds):
        for n in names[r % len(names):] + names[: r % len(names)]:
            t = time.perf_counter()
            out[n] = sides[n]((x, y), cfg)
            times[n].append(time.perf_counter() - t)
    nf = out["nfedge evaluate"]
    for n in names[1:]:
        o = out[n]
        assert nf["clean"]["CA"] == o["CA"] and nf["clean"]["CA_NF"] == o["CA_NF"], n
        for c_nf, c in zip(nf["conditions"], o["conditions"], strict=True):
            assert c_nf["PA"] == c["PA"], (n, c_nf["PA"], c["PA"])
            assert {g: e["PA_NF"] for g, e in c_nf["generators"].items()} == c["PA_NF"], n
    med = {n: statistics.median(v) for n, v in times.items()}
    print(f"# evaluate sweep: {head}; {len(a.voltages)} voltages x {a.chips} chips, median of {a.rounds} rounds")
    print("| implementation | seconds | previous loop / this |\n|---|---|---|")
    for n in names:
        print(f"| {n} | {med[n]:.1f} | {med['previous loop'] / med[n]:.2f}x |")
    print(f"\nnfedge evaluate against distinct, model as is: {med['distinct, model as is'] / med['nfedge evaluate']:.2f}x; "
          f"identical accuracies on all {len(names)} sides")
    if a.variants:
        rows, n_pred = variants(model, image, x, 0.875, a.variant_chips, a.variant_rounds)
        print(f"\n# one forward pass of the base model over {a.images} images per faulty image: {head}; 0.875 V/Vmin, "
              f"{a.variant_chips} chips ({n_pred} predictions), median of {a.variant_rounds} rounds")
        print("| variant | seconds per image pass | predictions differing from the model as is |\n|---|---|---|")
        for n, t, d in rows:
            print(f"| {n} | {t:.3f} | {d} |")


if __name__ == "__main__":
    main()
