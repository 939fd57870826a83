"""Benchmark: one EOPM training step, nfedge (weights substituted into one BN-folded module) vs a straightforward loop.

The straightforward loop is what a first implementation does: every step, deep-copy the base model N
times, load each copy with its perturbed weights, and run the copies one after another. Both sides
use the same chips (same faulty images, injected outside the timed region), the same generator
weights and the same batch, so their loss values must agree; the script checks that they do. The
nfedge side is the training loop's: BatchNorm folded into the convs once (`fold_batchnorm`, as
`train_generator` does before its first step), each step's N perturbed weight dicts folded inside the
timed step.

    .venv/bin/python bench/bench_eopm.py [--base resnet18] [--generator ConvS] [--n 10] [--batch 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from nfedge.models import create_base_model, create_generator
from nfedge.models.generators import neuralfuse_transform
from nfedge.sram.faults import InjectConfig
from nfedge.sram.image import build_image
from nfedge.train.eopm import eopm_loss
from nfedge.train.perturb import fold_batchnorm, perturbed_weights


def straightforward_loss(gen, model, clean_state, perturbed, x, y, lam):
    fx = neuralfuse_transform(gen, x)
    m0 = copy.deepcopy(model)
    m0.load_state_dict({**clean_state}, strict=False)
    loss = F.cross_entropy(m0(fx), y)
    pert = 0.0
    for w in perturbed:
        mi = copy.deepcopy(model)
        mi.load_state_dict(w, strict=False)
        pert = pert + F.cross_entropy(mi(fx), y)
    return loss + lam * pert / len(perturbed)


def timed(fns: dict, repeats: int) -> dict:
    """{name: (median s, last loss)}. The sides run in rounds, one step each, the order rotating every round,
    so drift in the machine's load falls on all sides alike (the machine is shared and noisy)."""
    names = list(fns)
    out = {n: fns[n]() for n in names}  # warm-up
    ts: dict = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            out[n] = fns[n]()
            ts[n].append(time.perf_counter() - t)
    return {n: (statistics.median(ts[n]), out[n]) for n in names}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="resnet18")
    ap.add_argument("--generator", default="ConvS")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ber", type=float, default=0.01)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    torch.manual_seed(0)
    model = create_base_model(a.base, in_channels=3, num_classes=10).eval()
    gen = create_generator(a.generator, in_channels=3).train()
    image = build_image(model, 8)
    x, y = torch.rand(a.batch, 3, 32, 32) * 2 - 1, torch.randint(0, 10, (a.batch,))
    t = time.perf_counter()
    perturbed = [perturbed_weights(image, InjectConfig(ber=a.ber, chip=c)) for c in range(a.n)]
    t_inject = (time.perf_counter() - t) / a.n
    clean = image.dequantized_weights()
    model.requires_grad_(False)
    folded = fold_batchnorm(model)
    folded_clean = folded.weights(clean)

    model_with_grads = copy.deepcopy(model).requires_grad_(True)  # a plain module, as users train it

    def step(loss_fn):
        def run():
            gen.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward()
            return float(loss.detach())
        return run

    step_nfedge = step(lambda: eopm_loss(gen, [(folded.module, folded_clean, [folded.weights(w) for w in perturbed])],
                                         x, y, lam=5.0))
    step_unfolded = step(lambda: eopm_loss(gen, [(model, clean, perturbed)], x, y, lam=5.0))  # what folding adds
    step_loop = step(lambda: straightforward_loss(gen, model_with_grads, clean, perturbed, x, y, 5.0))

    def bf16_loss():  # the training loop's --precision bf16: the same folded step under bfloat16 autocast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return eopm_loss(gen, [(folded.module, folded_clean, [folded.weights(w) for w in perturbed])], x, y, lam=5.0)

    step_bf16 = step(bf16_loss)

    gen.eval()  # fixed BN statistics so both sides compute the same function
    res = timed({"nfedge": step_nfedge, "loop": step_loop, "unfolded": step_unfolded, "bf16": step_bf16}, a.repeats)
    (t_nf, l_nf), (t_lp, l_lp), (t_uf, l_uf), (t_bf, l_bf) = res["nfedge"], res["loop"], res["unfolded"], res["bf16"]
    assert abs(l_nf - l_lp) <= 1e-3 * abs(l_lp) and abs(l_uf - l_lp) <= 1e-3 * abs(l_lp), (l_nf, l_uf, l_lp)
    print(f"# EOPM step: base {a.base}, generator {a.generator}, N={a.n}, batch {a.batch}, BER {a.ber}; "
          f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| implementation | median s/step | loss |\n|---|---|---|")
    print(f"| nfedge (functional_call, BN folded ({folded.folded} layers), no copies, input grads only) | {t_nf:.2f} | "
          f"{l_nf:.5f} |")
    print(f"| nfedge without BN folding | {t_uf:.2f} | {l_uf:.5f} |")
    print(f"| straightforward (N deep copies per step) | {t_lp:.2f} | {l_lp:.5f} |")
    print(f"| nfedge, --precision bf16 (autocast) | {t_bf:.2f} | {l_bf:.5f} |")
    print(f"\nspeed-up {t_lp / t_nf:.2f}x (without folding {t_lp / t_uf:.2f}x); bf16 over fp32 {t_nf / t_bf:.2f}x; "
          f"fault injection (both, untimed) {t_inject * 1e3:.0f} ms per perturbed model")


if __name__ == "__main__":
    main()
