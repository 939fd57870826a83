"""Training commands: train-base (QAT), import-model (a user's classifier), train (EOPM generator)."""

from __future__ import annotations

import json

import click

from nfedge.cli.common import (
    ConfigDefault,
    calibration_option,
    cli,
    data_config,
    data_options,
    load_bases,
    mode_option,
)
from nfedge.errors import NfedgeError


def _default(field: str) -> ConfigDefault:
    return ConfigDefault("nfedge.train.base", f"TrainBaseConfig.{field}")


@cli.command("train-base")
@click.option("--model", default="cnn-s", show_default=True, help="base model (see `nfedge models`)")
@click.option("--bits", default=8, show_default=True, type=int, help="QAT precision, 2..8")
@click.option("--per-channel", is_flag=True)
@click.option("--epochs", default=4, show_default=True, type=int)
@click.option("--batch-size", default=128, show_default=True, type=int)
@click.option("--lr", default=2e-3, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present) | cpu | cuda")
@mode_option
@click.option("--integer-epochs", default=1, show_default=True, type=int,
              help="integer mode: epochs through the integer twin after the activation ranges are frozen")
@click.option("--robust", default=_default("robust"), show_default=True, type=str,
              help="none | clip (weights clamped) | randbet (clip + random bit error training, Stutz et al.)")
@click.option("--clip", default=_default("clip"), show_default=True, type=float, help="--robust: weight bound w_max")
@click.option("--robust-ber", default=_default("robust_ber"), show_default=True, type=float,
              help="--robust randbet: probability a stored bit is flipped in training")
@data_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="run directory (base.pt, config.json)")
def train_base_cmd(model, bits, per_channel, epochs, batch_size, lr, seed, device, mode, integer_epochs, robust, clip,
                   robust_ber, dataset, data_root, train_limit, test_limit, out):
    """Train a base classifier with quantization-aware training; resumes an interrupted run."""
    from nfedge.train.base import TrainBaseConfig, train_base

    data = data_config(None, dataset, data_root, train_limit, test_limit)
    cfg = TrainBaseConfig(model=model, data=data, bits=bits, per_channel=per_channel, epochs=epochs,
                          batch_size=batch_size, lr=lr, seed=seed, device=device, mode=mode,
                          integer_epochs=integer_epochs, robust=robust, clip=clip, robust_ber=robust_ber)
    path = train_base(cfg, out)
    click.echo(f"wrote {path}", err=True)


@cli.command("import-model")
@click.option("--class", "model_class", help="your classifier: package.module:ClassName or path/to/file.py:ClassName")
@click.option("--kwargs", "kwargs_json", default="{}", show_default=True, help="constructor arguments as a JSON object")
@click.option("--state-dict", type=click.Path(dir_okay=False), help="its state dict (.pt, read with weights_only=True)")
@click.option("--exported-program", type=click.Path(dir_okay=False), help="or a torch.export.save .pt2 file")
@click.option("--input", "input_shape", default="1x32x32", show_default=True, help="one image as CxHxW")
@click.option("--classes", default=10, show_default=True, type=int, help="logits per image")
@click.option("--name", help="model name in the checkpoint (default: class name or file stem)")
@click.option("--dataset", default=None, help="check against this test set and measure accuracy (as --dataset elsewhere)")
@click.option("--data-root", help="dataset folder, or the .npz file")
@click.option("--test-limit", type=int, help="measure accuracy on a seeded subset of the test set")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="directory to write (base.pt, config.json)")
def import_model_cmd(model_class, kwargs_json, state_dict, exported_program, input_shape, classes, name, dataset,
                     data_root, test_limit, out):
    """Turn your own trained classifier (class + state dict, or exported program) into a base checkpoint."""
    from nfedge.analysis.energy import parse_input_shape
    from nfedge.train.import_model import ImportModelConfig, import_model

    try:
        kwargs = json.loads(kwargs_json)
    except json.JSONDecodeError as e:
        raise NfedgeError(f"--kwargs is not valid JSON ({e})") from None
    data = None
    if dataset is not None or data_root is not None or test_limit is not None:
        data = data_config(None, dataset, data_root, None, test_limit)
    cfg = ImportModelConfig(model_class=model_class, kwargs=kwargs, state_dict=state_dict,
                            exported_program=exported_program, input=parse_input_shape(input_shape), classes=classes,
                            name=name, data=data)
    click.echo(f"wrote {import_model(cfg, out)}", err=True)


@cli.command("train")
@click.option("--base", "base_paths", multiple=True, required=True, help="base checkpoint (repeat for a surrogate ensemble)")
@click.option("--image", "image_dirs", multiple=True, required=True, help="its clean memory image (one per --base)")
@click.option("--generator", default="ConvS", show_default=True, help="generator (see `nfedge models`)")
@click.option("--ber", type=float, help="training BER (default 0.01 unless --voltage)")
@click.option("--voltage", type=float, help="training voltage in V/Vmin")
@click.option("--fault", default="flip", show_default=True, help="flip | stuck-at")
@calibration_option
@click.option("--lam", default=5.0, show_default=True, type=float, help="weight of the perturbed loss")
@click.option("--n-perturbed", default=10, show_default=True, type=int, help="perturbed models per step")
@click.option("--epochs", default=5, show_default=True, type=int)
@click.option("--batch-size", default=64, show_default=True, type=int)
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--max-steps", type=int, help="stop after this many steps")
@click.option("--init", "init", default="identity", show_default=True, type=click.Choice(["identity", "default"]),
              help="identity: G starts at 0 (F(x) = x); default: PyTorch's layer init")
@click.option("--init-from", type=click.Path(dir_okay=False),
              help="start from this generator checkpoint's weights (more epochs; Adam state and LR schedule restart)")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16"]),
              help="bf16: autocast the step's passes to bfloat16 (CPU and CUDA)")
@click.option("--objective", default="mean", show_default=True, type=click.Choice(["mean", "cvar", "max"]),
              help="how the N perturbed models' losses combine: their mean (EOPM), the mean of the worst "
              "--tail-fraction of them (CVaR), or the worst")
@click.option("--tail-fraction", default=0.4, show_default=True, type=float,
              help="cvar: the fraction of the N perturbed models averaged (the largest losses)")
@mode_option
@data_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="run directory (generator.pt, config.json)")
def train_cmd(base_paths, image_dirs, generator, ber, voltage, fault, calibration, lam, n_perturbed, epochs, batch_size,
              lr, max_steps, init, init_from, seed, device, precision, objective, tail_fraction, mode, dataset, data_root,
              train_limit, test_limit, out):
    """Train a NeuralFuse generator with EOPM (relaxed: on the deployed base; restricted: on surrogates).

    Runs under torchrun too (gloo on CPU, NCCL on GPUs): torchrun --nproc-per-node 2 -m nfedge train ...
    """
    from pathlib import Path

    import torch.distributed as dist

    from nfedge.data import load_dataset
    from nfedge.fileio import atomic_write_files, json_bytes
    from nfedge.integer.calibrate import checkpoint_ranges
    from nfedge.train.eopm import EOPMConfig, generator_bytes, train_generator

    bases = load_bases(base_paths, image_dirs)
    cfg = EOPMConfig(generator=generator, ber=ber if ber is not None or voltage is not None else 0.01, voltage=voltage,
                     fault=fault, calibration=calibration, lam=lam, n_perturbed=n_perturbed, epochs=epochs,
                     batch_size=batch_size, lr=lr,
                     max_steps=max_steps, seed=seed, device=device, init=init, init_from=init_from,
                     precision=precision, mode=mode, objective=objective, tail_fraction=tail_fraction)
    data = data_config(bases[0][2]["meta"], dataset, data_root, train_limit, test_limit)
    distributed = "RANK" in __import__("os").environ
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    train, _, info = load_dataset(data)
    gen, log = train_generator(cfg, [(m, i) for m, i, _ in bases], train, info.channels, info.image_size,
                               base_ranges=[checkpoint_ranges(meta) for _, _, meta in bases])
    if not distributed or dist.get_rank() == 0:
        meta = {"config": cfg.to_dict(), "data": data.to_dict(), **log,
                "bases": [{"checkpoint": str(b), "image_sha256": i.manifest.image_sha256} for b, (_, i, _) in zip(base_paths, bases)]}
        # both files or neither (a full disk between them), and no folder of ours left if neither
        atomic_write_files({Path(out) / "generator.pt": generator_bytes(gen, cfg.generator, info.channels,
                                                                        info.image_size, meta),
                            Path(out) / "config.json": json_bytes(meta)})
        click.echo(f"wrote {Path(out) / 'generator.pt'}", err=True)
    if distributed:
        dist.destroy_process_group()
