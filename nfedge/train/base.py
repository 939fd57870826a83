"""`nfedge train-base`: train a base classifier with quantization-aware training (STE) at b bits.

Writes <out>/base.pt (an nfedge checkpoint whose meta holds the resolved config, the per-epoch
history and the fake-quantized test accuracy) and <out>/config.json. After each epoch a resume
point (<out>/resume.pt, with optimizer state) is saved, so an interrupted run continues where it
stopped when started again with the same config.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from nfedge.config import StageConfig, require
from nfedge.data import DataConfig, load_dataset
from nfedge.data.datasets import describe_dataset
from nfedge.fileio import atomic_write_files, json_bytes, made_dirs
from nfedge.integer import MODES
from nfedge.integer.calibrate import calibrate
from nfedge.integer.program import trace_program
from nfedge.integer.qat import LiveWeights
from nfedge.integer.simulate import run_float
from nfedge.models import BASE_MODELS, create_base_model
from nfedge.progress import DEFAULT, Progress
from nfedge.quant import check_bits, fake_quantized_weights
from nfedge.runtime import batches, pick_device, seed_everything, seeded_subset
from nfedge.sram.image import build_image
from nfedge.train.checkpoint import atomic_torch_save, checkpoint_bytes
from nfedge.train.robust import ROBUST_METHODS, bit_error_weights, clip_weights_


@dataclasses.dataclass(frozen=True)
class TrainBaseConfig(StageConfig):
    model: str = "cnn-s"
    data: DataConfig = DataConfig()
    bits: int = 8  # QAT precision (the deployed image's b)
    per_channel: bool = False
    epochs: int = 4
    batch_size: int = 128  # images per step
    lr: float = 2e-3  # Adam learning rate, cosine-annealed to 0 over the run
    weight_decay: float = 1e-4
    seed: int = 0  # initialisation and shuffling
    device: str = "auto"
    # integer: after the weight QAT epochs, activation ranges are observed on `calib_images` seeded training images
    # and frozen, then `integer_epochs` more epochs train through the integer program's fake-quantized twin
    # (docs/INTEGER.md) at lr * integer_lr_factor; the frozen ranges are kept in the checkpoint
    mode: str = "weight-only"
    integer_epochs: int = 1
    integer_lr_factor: float = 0.1
    calib_images: int = 512
    # robust retraining (nfedge.train.robust, Stutz et al. MLSys 2021): none | clip (weights clamped to
    # [-clip, clip] after each step) | randbet (clip, plus CE on the weights with random bit errors at robust_ber)
    robust: str = "none"
    clip: float = 0.1  # w_max, in weight units (Stutz et al.'s CIFAR-10 value)
    robust_ber: float = 0.01  # randbet: probability that a stored bit reads flipped, per step (their p = 1%)

    def validate(self) -> None:
        require(self.model in BASE_MODELS, f"unknown base model {self.model!r}; known: {', '.join(BASE_MODELS.names())}")
        check_bits(self.bits)
        require(self.epochs >= 1 and self.batch_size >= 1 and self.lr > 0, "epochs, batch_size and lr must be positive")
        require(self.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        require(self.integer_epochs >= 0 and self.integer_lr_factor > 0 and self.calib_images >= 1,
                "integer_epochs >= 0, integer_lr_factor > 0 and calib_images >= 1 are required")
        require(self.robust in ROBUST_METHODS, f"robust must be one of {', '.join(ROBUST_METHODS)}, got {self.robust!r}")
        require(isinstance(self.clip, (int, float)) and 0 < self.clip < float("inf"),
                f"clip must be a positive weight bound, got {self.clip!r}")
        require(isinstance(self.robust_ber, (int, float)) and 0 < self.robust_ber < 0.5,
                f"robust_ber must be a bit error rate in (0, 0.5), got {self.robust_ber!r}")


def qat_logits(model: torch.nn.Module, x: torch.Tensor, bits: int, per_channel: bool) -> torch.Tensor:
    """Forward with fake-quantized conv/linear weights (gradients reach the float weights via STE)."""
    return torch.func.functional_call(model, fake_quantized_weights(model, bits, per_channel), (x,))


@torch.no_grad()
def qat_accuracy(model: torch.nn.Module, data, bits: int, per_channel: bool, device: torch.device) -> float:
    model.eval()
    correct = 0
    for x, y in batches(data, 1024):
        correct += int((qat_logits(model, x.to(device), bits, per_channel).argmax(1).cpu() == y).sum())
    return correct / len(data)


def train_base(cfg: TrainBaseConfig, out_dir: str | Path, progress: Progress = DEFAULT) -> Path:
    out = Path(out_dir)
    # the checkpoint records the data's absolute path: later stages run from other folders
    cfg = dataclasses.replace(cfg, data=cfg.data.absolute())
    device = pick_device(cfg.device)
    gen = seed_everything(cfg.seed)
    train, test, info = load_dataset(cfg.data)
    for line in describe_dataset(train, test, info):
        progress.info(line)
    # After the data loaded: a data error creates no folder. A later failure (a full disk) removes the folders this
    # call created unless a resume point is in them: the next run continues from it.
    with made_dirs(out):
        return _train(cfg, out, device, gen, train, test, info, progress)


def _train(cfg: TrainBaseConfig, out: Path, device: torch.device, gen: torch.Generator, train, test, info,
           progress: Progress) -> Path:
    model = create_base_model(cfg.model, in_channels=info.channels, num_classes=info.num_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * -(-len(train) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    history: list[dict[str, float]] = []
    start = 0
    # the bit errors of randbet come from their own stream: shuffling is the same as without them
    errors = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    if cfg.robust != "none":
        clip_weights_(model, cfg.clip)
    resume = out / "resume.pt"
    if resume.is_file():
        state = torch.load(resume, map_location=device, weights_only=True)  # data only, even in our own folder
        if state["config_hash"] == cfg.config_hash():
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            gen.set_state(state["gen"])
            errors.set_state(state["errors"])
            history, start = state["history"], state["epoch"]
            progress.info(f"resuming {cfg.model} from epoch {start}")
    for epoch in range(start, cfg.epochs):
        model.train()
        total, n = 0.0, 0
        bar = progress.manual(f"train-base {cfg.model} epoch {epoch + 1}/{cfg.epochs}", total=len(train), unit="img")
        for x, y in batches(train, cfg.batch_size, shuffle=True, generator=gen):
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(qat_logits(model, x, cfg.bits, cfg.per_channel), y)
            if cfg.robust == "randbet":
                w = bit_error_weights(model, cfg.bits, cfg.per_channel, cfg.robust_ber, errors)
                loss = loss + F.cross_entropy(torch.func.functional_call(model, w, (x,)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if cfg.robust != "none":
                clip_weights_(model, cfg.clip)
            total, n = total + float(loss.detach()) * len(x), n + len(x)
            bar.update(len(x))
        bar.close()
        acc = qat_accuracy(model, test, cfg.bits, cfg.per_channel, device)
        history.append({"epoch": epoch + 1, "train_loss": total / n, "test_accuracy": acc})
        progress.info(f"epoch {epoch + 1}: loss {total / n:.4f}, test accuracy ({cfg.bits}-bit) {acc:.4f}")
        atomic_torch_save(resume, {"config_hash": cfg.config_hash(), "model": model.state_dict(), "opt": opt.state_dict(),
                                   "sched": sched.state_dict(), "gen": gen.get_state(), "errors": errors.get_state(),
                                   "history": history, "epoch": epoch + 1})
    meta = {"config": cfg.to_dict(), "history": history, "test_accuracy": history[-1]["test_accuracy"],
            "dataset": dataclasses.asdict(info)}
    if cfg.mode == "integer":
        meta["integer"] = integer_qat(model, train, test, cfg, gen, progress)
    # base.pt and config.json appear together or not at all (a full disk after the one, before the other)
    ckpt = checkpoint_bytes(model.cpu(), cfg.model, info.channels, info.num_classes, meta)
    atomic_write_files({out / "base.pt": ckpt, out / "config.json": json_bytes(cfg.to_dict())})
    resume.unlink(missing_ok=True)
    return out / "base.pt"


def integer_qat(model: torch.nn.Module, train, test, cfg: TrainBaseConfig, gen: torch.Generator,
                progress: Progress) -> dict:
    """Observe activation ranges, freeze them, fine-tune through the integer twin; returns the checkpoint's
    "integer" entry: the frozen ranges and the twin's test accuracy (BatchNorm statistics frozen: eval mode)."""
    model.eval()
    dev = next(model.parameters()).device
    x_calib = seeded_subset(train.tensors[0], cfg.calib_images, cfg.seed)
    prog = calibrate(trace_program(model, True), model.cpu(), x_calib, image=build_image(model, cfg.bits, cfg.per_channel))
    model.to(dev)
    live = LiveWeights(prog, model, cfg.bits, cfg.per_channel)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr * cfg.integer_lr_factor, weight_decay=cfg.weight_decay)
    for epoch in range(cfg.integer_epochs):
        bar = progress.manual(f"train-base {cfg.model} integer epoch {epoch + 1}/{cfg.integer_epochs}", total=len(train),
                              unit="img")
        for x, y in batches(train, cfg.batch_size, shuffle=True, generator=gen):
            x, y = x.to(dev), y.to(dev)
            loss = F.cross_entropy(run_float(prog, x, None, fake_quant=True, live=live), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if cfg.robust != "none":  # the bound holds in the deployed weights too (no bit errors in these epochs)
                clip_weights_(model, cfg.clip)
            bar.update(len(x))
        bar.close()
    with torch.no_grad():
        x, y = test.tensors
        pred = torch.cat([run_float(prog, x[i: i + 1024].to(dev), None, fake_quant=True, live=live).argmax(1).cpu()
                          for i in range(0, len(x), 1024)])
    acc = float((pred == y).float().mean())
    progress.info(f"integer twin: test accuracy {acc:.4f} (activation ranges frozen from {len(x_calib)} images)")
    return {"ranges": prog.ranges, "twin_test_accuracy": acc, "calib_images": len(x_calib), "seed": cfg.seed}
