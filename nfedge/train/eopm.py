"""`nfedge train`: train a NeuralFuse generator with EOPM (expectation over perturbed models).

    loss = CE(M0(F(x)), y) + lambda * (1/N) * sum_i CE(Mp_i(F(x)), y),   F(x) = clip(x + G(x), -1, 1)

M0 is the clean quantized base model, Mp_i are N perturbed copies with fresh fault maps (training
chips, disjoint from evaluation chips) every step. Only G is trained. Relaxed access: the base model
is the deployed one; restricted access: one or several surrogates (the loss is averaged over them),
then the generator is transferred. The N perturbed passes substitute N weight dicts into the one base
module (functional_call, nfedge.train.perturb), with its BatchNorms folded into the convs: no model copies.
Multi-process: run under torchrun (gloo on CPU, NCCL on GPU). Every
rank runs the small generator on the whole global batch (so BatchNorm sees the same statistics as
one process would; SyncBatchNorm is GPU-only) and the costly clean + N perturbed base passes on its
slice of it; all ranks draw the same chips and DDP averages the gradients, which equals the
one-process gradient of the same global batch.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from nfedge.config import StageConfig, require
from nfedge.errors import NfedgeError
from nfedge.fileio import atomic_write_bytes
from nfedge.integer import MODES
from nfedge.integer.calibrate import CALIBRATION_IMAGES, INPUT_SCALE, calibrate, program_weights
from nfedge.integer.program import trace_program
from nfedge.integer.scheme import INT8_MAX
from nfedge.integer.simulate import fake_quantize, run_float
from nfedge.models import GENERATORS, create_generator
from nfedge.models.generators import neuralfuse_transform
from nfedge.progress import DEFAULT, Progress
from nfedge.runtime import batches, pick_device, seed_everything, seeded_subset
from nfedge.sram.faults import FAULT_MODELS, InjectConfig, inject_faults
from nfedge.sram.image import WeightImage
from nfedge.train.checkpoint import load_torch_file, torch_bytes
from nfedge.train.perturb import fold_batchnorm, forward_many, perturbed_weights, training_chips

GENERATOR_FORMAT = "nfedge-generator"
PRECISIONS = ("fp32", "bf16")


@dataclasses.dataclass(frozen=True)
class EOPMConfig(StageConfig):
    generator: str = "ConvS"
    ber: float | None = 0.01  # training BER (restricted access: the paper uses 1.5%); or voltage
    voltage: float | None = None
    fault: str = "flip"
    stuck_at_one: float = 0.5
    calibration: str = "sram-14nm"
    lam: float = 5.0  # weight of the perturbed term (paper ablation: 5)
    n_perturbed: int = 10  # N perturbed models per step
    epochs: int = 5
    batch_size: int = 64  # global batch (split over ranks under torchrun)
    lr: float = 1e-3  # Adam, betas (0.5, 0.999) as the public code
    beta1: float = 0.5
    beta2: float = 0.999
    lr_step_every: int = 500  # iterations between StepLR decays (public code)
    lr_gamma: float = 0.96
    max_steps: int | None = None  # stop early (tests, benchmarks)
    seed: int = 0  # generator init, shuffling and training chips
    device: str = "auto"
    init: str = "identity"  # identity: G(x) = 0 at step 0, so F(x) = x and CA(NF) starts at CA; or "default"
    init_from: str | None = None  # continue from this generator checkpoint's weights (fresh Adam state and LR schedule)
    precision: str = "fp32"  # fp32 | bf16: torch.autocast to bfloat16 for the step's passes (CPU and CUDA)
    mode: str = "weight-only"  # integer: train against the base model's integer twin (what integer mode deploys)
    calib_images: int = CALIBRATION_IMAGES  # integer mode: training images (seeded) that calibrate the base program
    # How the N perturbed models' losses CE_i combine (a certificate is decided by the worst chips, docs/PLANNER.md):
    # mean (EOPM, the paper), cvar (the mean of the ceil(tail_fraction * N) largest CE_i: the tail of the chip
    # population) or max (the worst perturbed model)
    objective: str = "mean"
    tail_fraction: float = 0.4  # cvar only: the fraction of the N perturbed models averaged (0.4 of 5: the worst 2)

    def validate(self) -> None:
        require(self.generator in GENERATORS, f"unknown generator {self.generator!r}; known: {', '.join(GENERATORS.names())}")
        require((self.ber is None) != (self.voltage is None), "give exactly one of ber and voltage")
        require(self.fault in FAULT_MODELS and self.fault != "map", f"EOPM takes fault flip or stuck-at, got {self.fault!r}")
        require(self.n_perturbed >= 1 and self.epochs >= 1 and self.batch_size >= 1, "n_perturbed, epochs, batch_size must be >= 1")
        require(self.lam >= 0 and self.lr > 0, "lam must be >= 0 and lr > 0")
        require(self.init in ("identity", "default"), f"init must be identity or default, got {self.init!r}")
        require(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        require(self.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        require(self.calib_images >= 1, "calib_images must be >= 1")
        require(self.objective in OBJECTIVES, f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        require(isinstance(self.tail_fraction, (int, float)) and 0.0 < self.tail_fraction <= 1.0,
                f"tail_fraction must be in (0, 1], got {self.tail_fraction!r}")

    def inject_config(self, chip: int) -> InjectConfig:
        return InjectConfig(fault=self.fault, ber=self.ber, voltage=self.voltage, chip=chip,
                            stuck_at_one=self.stuck_at_one, calibration=self.calibration)


OBJECTIVES = ("mean", "cvar", "max")


def tail_loss(per_model: torch.Tensor, objective: str = "mean", tail_fraction: float = 1.0) -> torch.Tensor:
    """The perturbed term from the N perturbed models' batch-mean losses CE_i: their mean, the mean of the
    ceil(tail_fraction * N) largest (CVaR), or the largest."""
    if objective == "max":
        return per_model.max()
    if objective == "cvar":
        k = max(1, math.ceil(tail_fraction * per_model.numel()))
        return per_model.topk(k).values.mean()
    return per_model.mean()


def eopm_loss(generator: nn.Module, bases: list[tuple[Any, dict, list]], x: torch.Tensor, y: torch.Tensor,
              lam: float, rank: int = 0, world: int = 1, integer: bool = False, objective: str = "mean",
              tail_fraction: float = 1.0) -> torch.Tensor:
    """EOPM loss averaged over base models; each base is (model, clean weights, list of N perturbed weights).
    `objective` / `tail_fraction`: how the N perturbed losses combine (tail_loss; "mean" is the paper's EOPM).

    With world > 1 the base passes use only this rank's slice rank::world of the transformed batch. With
    `integer`, each base is (its calibrated integer program, clean codes, N perturbed codes): the base runs as
    its fake-quantized integer twin (what integer mode deploys), on x and F(x) rounded to the input's int8 grid.
    """
    if integer:
        xq = fake_quantize(x, INPUT_SCALE)
        fx = fake_quantize(neuralfuse_transform(generator, xq), INPUT_SCALE, -INT8_MAX, INT8_MAX)[rank::world]
    else:
        fx = neuralfuse_transform(generator, x)[rank::world]
    y = y[rank::world]
    total = fx.new_zeros(())
    for model, clean, perturbed in bases:
        if integer:
            clean_logits = run_float(model, fx, clean, fake_quant=True)
            pert = torch.stack([run_float(model, fx, w, fake_quant=True) for w in perturbed])
        else:
            clean_logits = torch.func.functional_call(model, clean, (fx,))
            pert = forward_many(model, perturbed, fx)  # [N, B, classes]
        clean_loss = F.cross_entropy(clean_logits, y)
        n = pert.shape[0]
        if objective == "mean":  # one cross-entropy over all N x B rows: = mean_i CE_i (the paper's EOPM)
            pert_loss = F.cross_entropy(pert.reshape(-1, pert.shape[-1]), y.repeat(n))
        else:
            per_model = F.cross_entropy(pert.reshape(-1, pert.shape[-1]), y.repeat(n), reduction="none").view(n, -1)
            pert_loss = tail_loss(per_model.mean(dim=1), objective, tail_fraction)
        total = total + clean_loss + lam * pert_loss
    return total / len(bases)


def init_identity(generator: nn.Module) -> nn.Module:
    """Make G(x) = 0 at the start, so training starts from F(x) = x (the base model's own accuracy).

    Zeroes the generator's last parameterised layer: the BatchNorm before the final tanh (Conv*, DeConv*:
    BN output = shift = 0, tanh(0) = 0) or the final 1x1 conv (UNet*: weight and bias). That layer still
    gets a gradient (for BN, dL/dgamma = sum(dL/dy * x_hat); for the conv, dL/dW = dL/dy * input), so
    training moves on from there. With PyTorch's default init G(x) starts as noise of order 0.5 that
    costs clean accuracy the training must first undo. UIP already starts at tanh(0) = 0.
    """
    layers = [m for m in generator.modules()
              if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.conv._ConvNd))]
    if layers:
        with torch.no_grad():
            layers[-1].weight.zero_()
            if layers[-1].bias is not None:
                layers[-1].bias.zero_()
    return generator


def _world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def train_generator(cfg: EOPMConfig, bases: list[tuple[nn.Module, WeightImage]], train, in_channels: int,
                    input_size: tuple[int, int], progress: Progress = DEFAULT,
                    base_ranges: list[dict[str, float] | None] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train G on `bases` (relaxed: the deployed model; restricted: surrogates). Returns (G, history).
    Integer mode calibrates each base's integer program on `cfg.calib_images` seeded training images, with the
    activation ranges a quantization-aware checkpoint froze (`base_ranges`, one per base) where given."""
    if not bases:
        raise NfedgeError("EOPM needs at least one base model")
    rank, world = _world()
    require(cfg.batch_size % world == 0, f"batch_size {cfg.batch_size} must divide by the {world} processes")
    device = pick_device(cfg.device)
    data_gen = seed_everything(cfg.seed)
    chip_rng = np.random.default_rng([cfg.seed, 1])  # same on every rank: all ranks see the same chips
    gen = create_generator(cfg.generator, in_channels=in_channels, input_size=input_size)
    if cfg.init_from is not None:
        start, _ = load_generator(cfg.init_from)
        require(type(start) is type(gen) and start.state_dict().keys() == gen.state_dict().keys()
                and all(v.shape == gen.state_dict()[k].shape for k, v in start.state_dict().items()),
                f"--init-from {cfg.init_from}: not a {cfg.generator} for {in_channels}x{input_size[0]}x{input_size[1]} inputs")
        gen.load_state_dict(start.state_dict())
    elif cfg.init == "identity":
        init_identity(gen)
    gen = gen.to(device)
    model_g: nn.Module = nn.parallel.DistributedDataParallel(gen) if world > 1 else gen
    # BatchNorm folded into the convs for the N + 1 passes of every step (same function, less memory traffic)
    folded = [fold_batchnorm(model.eval().requires_grad_(False)) for model, _ in bases]
    for fb in folded:
        fb.module.to(device)
    clean = [{k: v.to(device) for k, v in fb.weights(img.dequantized_weights()).items()}
             for fb, (_, img) in zip(folded, bases)]
    programs = []
    if cfg.mode == "integer":
        x_calib = seeded_subset(train.tensors[0], cfg.calib_images, cfg.seed)
        ranges = base_ranges or [None] * len(bases)
        programs = [calibrate(trace_program(m, True), m, x_calib, image=img, ranges=r) for (m, img), r in zip(bases, ranges)]
        clean = [program_weights(p, m, img) for p, (m, img) in zip(programs, bases)]  # the clean codes, once
    opt = torch.optim.Adam(model_g.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step_every, gamma=cfg.lr_gamma)
    history, step = [], 0
    steps_per_epoch = len(train) // cfg.batch_size
    for epoch in range(cfg.epochs):
        model_g.train()
        losses = []
        it = batches(train, cfg.batch_size, shuffle=True, generator=data_gen)
        for x, y in progress.bar(it, desc=f"EOPM {cfg.generator} epoch {epoch + 1}/{cfg.epochs}", total=steps_per_epoch,
                                 unit="step"):
            if len(x) < cfg.batch_size:
                break  # drop the last partial batch: every rank needs an equal slice
            x, y = x.to(device), y.to(device)
            parts = []
            for i, (fb, (model, image), cw) in enumerate(zip(folded, bases, clean)):
                chips = training_chips(chip_rng, cfg.n_perturbed)
                if programs:  # the integer twin reads codes: the faulty image's, as the target will
                    faulty = [inject_faults(image, cfg.inject_config(c))[0] for c in chips]
                    parts.append((programs[i], cw, [program_weights(programs[i], model, f) for f in faulty]))
                    continue
                pw = [fb.weights(perturbed_weights(image, cfg.inject_config(c))) for c in chips]
                parts.append((fb.module, cw, [{k: v.to(device) for k, v in w.items()} for w in pw]))
            # bf16: convs and matmuls of the N + 1 forward and input-gradient passes in bfloat16 (autocast keeps
            # the loss and the reductions it lists in float32); the generator's parameters and Adam stay fp32
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                loss = eopm_loss(model_g, parts, x, y, cfg.lam, rank, world, integer=bool(programs),
                                 objective=cfg.objective, tail_fraction=cfg.tail_fraction)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if world > 1:  # report the global loss (mean over ranks), the same number one process prints
                loss = loss.detach().clone()
                dist.all_reduce(loss)
                loss /= world
            losses.append(float(loss.detach()))
            step += 1
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan"), "steps": step,
                        "step_losses": losses})
        progress.info(f"EOPM epoch {epoch + 1}: loss {history[-1]['loss']:.4f}")
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
    gen.eval()
    return gen.cpu(), {"history": history, "steps": step, "world_size": world}


def generator_bytes(generator: nn.Module, name: str, in_channels: int, input_size: tuple[int, int],
                    meta: dict[str, Any]) -> bytes:
    """A generator checkpoint as torch.save writes it (for writing it atomically together with other files)."""
    return torch_bytes({"format": GENERATOR_FORMAT, "version": 1, "generator": name, "in_channels": in_channels,
                        "input_size": list(input_size), "state_dict": generator.state_dict(), "meta": meta})


def save_generator(path: str | Path, generator: nn.Module, name: str, in_channels: int, input_size: tuple[int, int],
                   meta: dict[str, Any]) -> None:
    atomic_write_bytes(path, generator_bytes(generator, name, in_channels, input_size, meta))


def load_generator(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    ckpt = load_torch_file(path, "generator checkpoint", GENERATOR_FORMAT)
    gen = create_generator(ckpt["generator"], in_channels=ckpt["in_channels"], input_size=tuple(ckpt["input_size"]))
    gen.load_state_dict(ckpt["state_dict"])
    return gen.eval(), {k: v for k, v in ckpt.items() if k != "state_dict"}
