"""The `nfedge` command line: thin click wrappers over the library's stage functions.

Errors (NfedgeError and click's usage errors) are printed as ONE line on stderr with exit code 1
(usage: 2); results that a script reads go to stdout (--json), progress to stderr.
"""

from __future__ import annotations

import json
import sys

import click

from nfedge.errors import NfedgeError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nfedge")
def cli() -> None:
    """nfedge: NeuralFuse on the edge (quantize, inject SRAM faults, train, build, faultrun)."""


@cli.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="nfedge base-model checkpoint (.pt)")
@click.option("--bits", default=8, show_default=True, type=int, help="weight precision, 2..8")
@click.option("--per-channel", is_flag=True, help="one scale per output channel (default: per tensor, as the paper)")
@click.option("--sram-rows", default=8192, show_default=True, type=int, help="rows per SRAM bank")
@click.option("--sram-cols", default=128, show_default=True, type=int, help="bit cells per row")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="image directory to write")
def quantize(checkpoint: str, bits: int, per_channel: bool, sram_rows: int, sram_cols: int, out: str) -> None:
    """Quantize a base model's weights into a memory image (weights.bin + manifest.json)."""
    from nfedge.checkpoint import load_checkpoint
    from nfedge.fileio import sha256_file
    from nfedge.memory import QuantizeConfig, quantize_to_image, write_image

    cfg = QuantizeConfig(bits=bits, per_channel=per_channel, sram_rows=sram_rows, sram_cols=sram_cols)
    model, _ = load_checkpoint(checkpoint)
    image = quantize_to_image(model, cfg, source_sha256=sha256_file(checkpoint))
    write_image(image, out)
    m = image.manifest
    click.echo(f"wrote {out}: {len(m.tensors)} tensors, {m.total_bytes} bytes, {m.bits} bits, {m.banks} SRAM bank(s)", err=True)


@cli.command()
@click.option("--image", "image_dir", required=True, type=click.Path(), help="clean image directory")
@click.option("--ber", type=float, help="bit-error rate as a fraction (0.01 = 1%)")
@click.option("--voltage", type=float, help="SRAM voltage in V/Vmin (BER from the calibration table)")
@click.option("--chip", required=True, type=int, help="chip seed (which cells are weak)")
@click.option("--fault", default="flip", show_default=True, help="flip | stuck-at | map")
@click.option("--stuck-at-one", default=0.5, show_default=True, type=float, help="stuck-at: fraction of faulty cells stuck at 1")
@click.option("--calibration", default="sram-14nm", show_default=True, help="built-in table name or TOML file")
@click.option("--fault-map", type=click.Path(dir_okay=False), help="measured fault map (JSON), for --fault map")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="faulty image directory to write")
@click.option("--json", "as_json", is_flag=True, help="print the audit as JSON on stdout")
def inject(image_dir: str, ber: float | None, voltage: float | None, chip: int, fault: str, stuck_at_one: float,
           calibration: str, fault_map: str | None, out: str, as_json: bool) -> None:
    """Write the image as an undervolted chip stores it, and report what changed."""
    from nfedge.faults import InjectConfig, inject_faults
    from nfedge.memory import read_image, write_image

    cfg = InjectConfig(fault=fault, ber=ber, voltage=voltage, chip=chip, stuck_at_one=stuck_at_one,
                       calibration=calibration, fault_map=fault_map)
    faulty, audit = inject_faults(read_image(image_dir), cfg)
    write_image(faulty, out)
    report = {**audit.to_dict(), "image_sha256": faulty.manifest.image_sha256, "out": out}
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
    else:
        click.echo(f"chip {chip}: {audit.faulty_cells} faulty cells of {audit.stored_bits} stored bits "
                   f"(BER {audit.ber:.4g}), {audit.flipped_bits} bits changed -> {out}")


def _calibration_option(fn):
    return click.option("--calibration", default="sram-14nm", show_default=True,
                        help="SRAM table giving --voltage its BER: built-in name or TOML file")(fn)


def _data_options(fn):
    fn = click.option("--test-limit", type=int, help="evaluate on a seeded subset of the test set")(fn)
    fn = click.option("--train-limit", type=int, help="train on a seeded subset of the training set")(fn)
    fn = click.option("--data-root", help="dataset folder (default: the Debian package's, Fashion-MNIST)")(fn)
    fn = click.option("--dataset", default=None, help="fashion-mnist | cifar10 | cifar100 | gtsrb")(fn)
    return fn


def _data_config(base_meta: dict | None, dataset, data_root, train_limit, test_limit):
    """The data config: the checkpoint's (if any), with the options given on the command line on top."""
    from nfedge.data import DataConfig

    d = dict((base_meta or {}).get("config", {}).get("data") or {}) or DataConfig().to_dict()
    for k, v in (("dataset", dataset), ("root", data_root), ("train_limit", train_limit), ("test_limit", test_limit)):
        if v is not None:
            d[k] = v
    return DataConfig.from_dict(d)


def _emit(result: dict, as_json: bool, out: str | None, table: str) -> None:
    from nfedge.fileio import atomic_write_json

    if out:
        atomic_write_json(out, result)
    click.echo(json.dumps(result, sort_keys=True) if as_json else table)


@cli.command("train-base")
@click.option("--model", default="cnn-s", show_default=True, help="base model (see `nfedge models`)")
@click.option("--bits", default=8, show_default=True, type=int, help="QAT precision, 2..8")
@click.option("--per-channel", is_flag=True)
@click.option("--epochs", default=4, show_default=True, type=int)
@click.option("--batch-size", default=128, show_default=True, type=int)
@click.option("--lr", default=2e-3, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present) | cpu | cuda")
@_data_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="run directory (base.pt, config.json)")
def train_base_cmd(model, bits, per_channel, epochs, batch_size, lr, seed, device, dataset, data_root, train_limit,
                   test_limit, out):
    """Train a base classifier with quantization-aware training; resumes an interrupted run."""
    from nfedge.train_base import TrainBaseConfig, train_base

    data = _data_config(None, dataset, data_root, train_limit, test_limit)
    cfg = TrainBaseConfig(model=model, data=data, bits=bits, per_channel=per_channel, epochs=epochs,
                          batch_size=batch_size, lr=lr, seed=seed, device=device)
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
@click.option("--data-root", help="dataset folder")
@click.option("--test-limit", type=int, help="measure accuracy on a seeded subset of the test set")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="directory to write (base.pt, config.json)")
def import_model_cmd(model_class, kwargs_json, state_dict, exported_program, input_shape, classes, name, dataset,
                     data_root, test_limit, out):
    """Turn your own trained classifier (class + state dict, or exported program) into a base checkpoint."""
    from nfedge.byo import ImportModelConfig, import_model
    from nfedge.energy import parse_input_shape

    try:
        kwargs = json.loads(kwargs_json)
    except json.JSONDecodeError as e:
        raise NfedgeError(f"--kwargs is not valid JSON ({e})") from None
    data = None
    if dataset is not None or data_root is not None or test_limit is not None:
        data = _data_config(None, dataset, data_root, None, test_limit)
    cfg = ImportModelConfig(model_class=model_class, kwargs=kwargs, state_dict=state_dict,
                            exported_program=exported_program, input=parse_input_shape(input_shape), classes=classes,
                            name=name, data=data)
    click.echo(f"wrote {import_model(cfg, out)}", err=True)


def _bases(base_paths, image_dirs):
    from nfedge.checkpoint import load_checkpoint
    from nfedge.fileio import sha256_file
    from nfedge.memory import read_image

    if len(base_paths) != len(image_dirs):
        raise NfedgeError(f"give one --image per --base ({len(base_paths)} bases, {len(image_dirs)} images)")
    out = []
    for b, i in zip(base_paths, image_dirs):
        model, meta = load_checkpoint(b)
        image = read_image(i)
        if image.manifest.source_sha256 and image.manifest.source_sha256 != sha256_file(b):
            raise NfedgeError(f"image {i} was not quantized from checkpoint {b} (source sha256 differs)")
        out.append((model, image, meta))
    return out


@cli.command("train")
@click.option("--base", "base_paths", multiple=True, required=True, help="base checkpoint (repeat for a surrogate ensemble)")
@click.option("--image", "image_dirs", multiple=True, required=True, help="its clean memory image (one per --base)")
@click.option("--generator", default="ConvS", show_default=True, help="ConvL ConvS DeConvL DeConvS UNetL UNetS UIP")
@click.option("--ber", type=float, help="training BER (default 0.01 unless --voltage)")
@click.option("--voltage", type=float, help="training voltage in V/Vmin")
@click.option("--fault", default="flip", show_default=True, help="flip | stuck-at")
@_calibration_option
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
@_data_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="run directory (generator.pt, config.json)")
def train_cmd(base_paths, image_dirs, generator, ber, voltage, fault, calibration, lam, n_perturbed, epochs, batch_size,
              lr, max_steps, init, init_from, seed, device, dataset, data_root, train_limit, test_limit, out):
    """Train a NeuralFuse generator with EOPM (relaxed: on the deployed base; restricted: on surrogates).

    Runs under torchrun too (gloo on CPU, NCCL on GPUs): torchrun --nproc-per-node 2 -m nfedge train ...
    """
    from pathlib import Path

    import torch.distributed as dist

    from nfedge.data import load_dataset
    from nfedge.eopm import EOPMConfig, save_generator, train_generator
    from nfedge.fileio import atomic_write_json

    bases = _bases(base_paths, image_dirs)
    cfg = EOPMConfig(generator=generator, ber=ber if ber is not None or voltage is not None else 0.01, voltage=voltage,
                     fault=fault, calibration=calibration, lam=lam, n_perturbed=n_perturbed, epochs=epochs,
                     batch_size=batch_size, lr=lr,
                     max_steps=max_steps, seed=seed, device=device, init=init, init_from=init_from)
    data = _data_config(bases[0][2]["meta"], dataset, data_root, train_limit, test_limit)
    distributed = "RANK" in __import__("os").environ
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    train, _, info = load_dataset(data)
    gen, log = train_generator(cfg, [(m, i) for m, i, _ in bases], train, info.channels, info.image_size)
    if not distributed or dist.get_rank() == 0:
        meta = {"config": cfg.to_dict(), "data": data.to_dict(), **log,
                "bases": [{"checkpoint": str(b), "image_sha256": i.manifest.image_sha256} for b, (_, i, _) in zip(base_paths, bases)]}
        save_generator(Path(out) / "generator.pt", gen, cfg.generator, info.channels, info.image_size, meta)
        atomic_write_json(Path(out) / "config.json", meta)
        click.echo(f"wrote {Path(out) / 'generator.pt'}", err=True)
    if distributed:
        dist.destroy_process_group()


def _format_eval(r: dict) -> str:
    gens = list(r["clean"]["CA_NF"])
    lines = [f"CA {r['clean']['CA']:.2f}" + "".join(f"   CA(NF {g}) {v:.2f}" for g, v in r["clean"]["CA_NF"].items()),
             "| voltage | BER | PA mean+-std (worst) |" + "".join(f" PA(NF {g}) | RP {g} |" for g in gens),
             "|---|---|---|" + "---|---|" * len(gens)]

    def stat(s):
        return f"{s['mean']:.2f}+-{s['std']:.2f} ({s['worst']:.2f})"

    for c in r["conditions"]:
        v = "-" if c["voltage"] is None else f"{c['voltage']:.3f}"
        row = f"| {v} | {c['ber']:.4g} | {stat(c['PA'])} |"
        row += "".join(f" {stat(e['PA_NF'])} | {e['RP']['mean']:+.2f} |" for e in c["generators"].values())
        lines.append(row)
    return "\n".join(lines)


@cli.command("evaluate")
@click.option("--base", "base_path", required=True, help="base checkpoint")
@click.option("--image", "image_dir", required=True, help="its clean memory image")
@click.option("--generator", "generator_paths", multiple=True, help="generator checkpoint (repeat; omit: base alone)")
@click.option("--voltage", "voltages", multiple=True, type=float, help="V/Vmin (repeat)")
@click.option("--ber", "bers", multiple=True, type=float, help="BER fraction (repeat)")
@click.option("--chips", default=10, show_default=True, type=int, help="evaluation chips 0..K-1")
@click.option("--fault", default="flip", show_default=True)
@_calibration_option
@_data_options
@click.option("--json", "as_json", is_flag=True)
@click.option("--out", type=click.Path(dir_okay=False), help="also write the result JSON here")
def evaluate_cmd(base_path, image_dir, generator_paths, voltages, bers, chips, fault, calibration, dataset, data_root,
                 train_limit, test_limit, as_json, out):
    """Host-simulated CA, PA, CA(NF), PA(NF), RP over evaluation chips (mean, std, worst chip)."""
    from nfedge.data import load_dataset
    from nfedge.eopm import load_generator
    from nfedge.evaluate import EvaluateConfig, evaluate

    ((model, image, meta),) = _bases([base_path], [image_dir])
    cfg = EvaluateConfig(voltages=tuple(voltages), bers=tuple(bers), chips=chips, fault=fault, calibration=calibration)
    _, test, _ = load_dataset(_data_config(meta["meta"], dataset, data_root, train_limit, test_limit))
    gens = {}
    for path in generator_paths:
        g, gmeta = load_generator(path)
        gens[gmeta["generator"] if gmeta["generator"] not in gens else str(path)] = g
    r = evaluate(model, image, test.tensors, cfg, generators=gens)
    _emit(r, as_json, out, _format_eval(r))


@cli.command("models")
@click.option("--input", "input_shape", default="3x32x32", show_default=True, help="input as CxHxW")
@click.option("--classes", default=10, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True)
def models_cmd(input_shape, classes, as_json):
    """List registered base models and generators with parameters, MACs and weight-memory accesses."""
    from nfedge.energy import list_models, parse_input_shape

    rows = list_models(parse_input_shape(input_shape), classes)
    table = "\n".join(["| name | kind | params | MACs | weight accesses |", "|---|---|---|---|---|"] + [
        f"| {r['name']} | {r['kind']} | {r['params']:,} | {r['macs']:,} | {r['weight_accesses']:,} |"
        if r.get("params") is not None else f"| {r['name']} | {r['kind']} | - | - | - ({r.get('error', '')}) |" for r in rows])
    click.echo(json.dumps(rows) if as_json else table)


@cli.command("energy")
@click.option("--base", default="cnn-s", show_default=True, help="base model name or an nfedge checkpoint (.pt)")
@click.option("--generator", default="ConvS", show_default=True, help="generator name ('none' for the base alone)")
@click.option("--input", "input_shape", default="1x32x32", show_default=True, help="input as CxHxW")
@click.option("--classes", default=10, show_default=True, type=int)
@click.option("--voltage", type=float, help="base-model SRAM voltage in V/Vmin (default 0.833)")
@click.option("--ber", type=float, help="or the BER; the voltage is found from the calibration table")
@click.option("--calibration", default="sram-14nm", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def energy_cmd(base, generator, input_shape, classes, voltage, ber, calibration, as_json):
    """Weight-memory accesses, MACs, energy saving ES (paper Eq. 6) and MAC-ES (Eq. 7)."""
    from nfedge.energy import EnergyConfig, estimate_energy

    cfg = EnergyConfig(base=base, generator=None if generator.lower() == "none" else generator, input=input_shape,
                       classes=classes, voltage=voltage if voltage is not None or ber is not None else 0.833, ber=ber,
                       calibration=calibration)
    r = estimate_energy(cfg)
    lines = [f"{k}: {v}" for k, v in r.items()]
    click.echo(json.dumps(r, sort_keys=True) if as_json else "\n".join(lines))


@cli.command("build")
@click.option("--target", default="arm-cortex", show_default=True, help="target descriptor name or TOML path")
@click.option("--bits", type=int, help="expected weight precision (must equal the image's)")
@click.option("--base", "base_path", required=True, help="base checkpoint")
@click.option("--image", "image_dir", required=True, help="its clean memory image")
@click.option("--generator", "generator_path", help="generator checkpoint (omit: base model alone)")
@click.option("--tuning-db", type=click.Path(file_okay=False), help="host target: schedules from `nfedge tune --db`")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="bundle directory")
def build_cmd(target, bits, base_path, image_dir, generator_path, tuning_db, out):
    """Compile generator (nominal voltage) and base model (weights from the image) with TVM for a target."""
    from nfedge.compile import BuildConfig
    from nfedge.faultrun import build_bundle

    _bases([base_path], [image_dir])  # the image must come from this checkpoint
    b = build_bundle(BuildConfig(target=target, bits=bits, tuning_db=tuning_db), base_path, image_dir, generator_path,
                     out)
    sizes = b.manifest.get("sizes", {})
    click.echo(f"wrote {out} for {b.target.name}: " + ", ".join(f"{k} {v}" for k, v in sizes.items() if isinstance(v, int)),
               err=True)


@cli.command("tune")
@click.option("--target", default="host", show_default=True, help="target descriptor (only host can be tuned)")
@click.option("--base", "base_path", required=True, help="base checkpoint")
@click.option("--image", "image_dir", required=True, help="its clean memory image")
@click.option("--generator", "generator_path", help="generator checkpoint (omit: base model alone)")
@click.option("--db", "db_dir", required=True, type=click.Path(file_okay=False),
              help="tuning database directory (created, or extended with the tasks it lacks)")
@click.option("--trials", default=256, show_default=True, type=int, help="measured candidate schedules in total")
@click.option("--trials-per-round", default=8, show_default=True, type=int, help="candidates per task per round")
@click.option("--max-workers", default=0, show_default=True, type=int, help="builder processes (0: build in-process)")
@click.option("--timeout", "timeout_s", default=60.0, show_default=True, type=float, help="seconds per candidate")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--cpu", default="native", show_default=True, help="LLVM -mcpu to tune for (native: this machine's)")
@click.option("--threads", default=0, show_default=True, type=int, help="cores to tune for (0: all usable)")
@click.option("--json", "as_json", is_flag=True, help="print the database summary as JSON on stdout")
def tune_cmd(target, base_path, image_dir, generator_path, db_dir, trials, trials_per_round, max_workers, timeout_s,
             seed, cpu, threads, as_json):
    """MetaSchedule-tune the host build's operators on this machine; `nfedge build --tuning-db` uses the result."""
    from nfedge.eopm import load_generator
    from nfedge.faultrun import image_input_shape
    from nfedge.progress import DEFAULT
    from nfedge.tune import TuneConfig, tune_for_target

    ((model, image, _),) = _bases([base_path], [image_dir])
    gen = load_generator(generator_path)[0] if generator_path else None
    cfg = TuneConfig(target=target, input_shape=image_input_shape(base_path), trials=trials,
                     trials_per_round=trials_per_round, max_workers=max_workers, timeout_s=timeout_s, seed=seed,
                     cpu=cpu, threads=threads)
    db = tune_for_target(cfg, model, image, gen, db_dir, DEFAULT)
    m = db.manifest
    summary = {"db": db_dir, "db_sha256": db.sha256, "tvm_target": m["tvm_target"], "seed": m["seed"],
               "tasks": m["tasks"], "runs": m["runs"]}
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    else:
        tuned = sum(t["best_us"] is not None for t in m["tasks"])
        click.echo(f"{db_dir}: {tuned} of {len(m['tasks'])} operators tuned for {m['tvm_target'].get('mcpu')} "
                   f"({sum(r['trials'] for r in m['runs'])} trials, seed {m['seed']}); "
                   f"use it with: nfedge build --target host --tuning-db {db_dir} ...")


@cli.command("faultrun")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(file_okay=False))
@click.option("--voltage", "voltages", multiple=True, type=float, help="V/Vmin (repeat)")
@click.option("--ber", "bers", multiple=True, type=float, help="BER fraction (repeat)")
@click.option("--chips", default=3, show_default=True, type=int)
@click.option("--samples", default=32, show_default=True, type=int, help="test images per chip")
@click.option("--fault", default="flip", show_default=True)
@_calibration_option
@click.option("--min-agreement", default=0.99, show_default=True, type=float,
              help="exit non-zero below this fraction of identical host/target predictions")
@click.option("--jobs", default=2, show_default=True, type=int, help="emulator processes in parallel")
@click.option("--timeout", "timeout_s", default=900.0, show_default=True, type=float, help="seconds per emulator run")
@click.option("--json", "as_json", is_flag=True)
@click.option("--out", type=click.Path(dir_okay=False), help="also write the result JSON here")
def faultrun_cmd(bundle_dir, voltages, bers, chips, samples, fault, calibration, min_agreement, jobs, timeout_s, as_json,
                 out):
    """Run the bundle on its (emulated) target against undervolted SRAM images and compare with the host."""
    from nfedge.faultrun import FaultrunConfig, faultrun

    cfg = FaultrunConfig(voltages=tuple(voltages), bers=tuple(bers), chips=chips, samples=samples, fault=fault,
                         calibration=calibration, min_agreement=min_agreement, jobs=jobs, timeout_s=timeout_s)
    r = faultrun(bundle_dir, None, cfg)
    lines = [f"target {r['target']}, {r['bits']}-bit, {r['chips']} chips x {r['samples']} samples",
             "| V/Vmin | BER | model | target acc | host acc | identical | max logit diff |", "|---|---|---|---|---|---|---|"]
    for row in r["results"]:
        for n, acc in row["target_accuracy"].items():
            ag = row["agreement"][n]
            lines.append(f"| {row['voltage']} | {row['ber']:.4g} | {n} | {acc['mean']:.2f}+-{acc['std']:.2f} | "
                         f"{row['host_accuracy'][n]['mean']:.2f} | {100 * ag['identical_fraction']:.1f}% | {ag['max_logit_diff']:.2e} |")
    lines.append(f"instructions per inference: {r['instructions_per_inference']}")
    _emit(r, as_json, out, "\n".join(lines))
    a = r["agreement"]
    if not a["passed"]:
        raise NfedgeError(f"host and target disagree: {100 * a['min_identical_fraction']:.2f}% identical predictions "
                          f"< {100 * a['threshold']:.2f}%")


@cli.command("run")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="run config JSON (only the fields that differ from the default); default: the built-in job")
@click.option("--out", default="runs/default", show_default=True, type=click.Path(file_okay=False))
@click.option("--print-config", is_flag=True, help="print the resolved config and exit")
@click.option("--json", "as_json", is_flag=True, help="print the stage log and summary as JSON")
def run_cmd(config_path, out, print_config, as_json):
    """Run the whole chain (train-base, quantize, train, evaluate, build, faultrun, report), reusing cached stages."""
    import time

    from nfedge.pipeline import load_run_config, run_pipeline

    cfg = load_run_config(config_path)
    if print_config:
        click.echo(cfg.to_json())
        return
    t = time.time()
    r = run_pipeline(cfg, out)
    if as_json:
        click.echo(json.dumps(r, sort_keys=True))
        return
    ran = ", ".join(f"{s['name']} {s['seconds']:.0f}s" for s in r["stages"] if not s["reused"]) or "none (all reused)"
    click.echo(f"{r['summary']['table']}\n\nstages run: {ran}\nwall time {time.time() - t:.0f} s; report: {r['report']}")


@cli.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False))
def report_cmd(run_dir):
    """Rewrite the report (Markdown + PNG plots) of a finished `nfedge run` directory."""
    from pathlib import Path

    from nfedge import stages
    from nfedge.pipeline import RunConfig

    root = Path(run_dir)
    if not (root / "run.json").is_file():
        raise NfedgeError(f"{root} is not an nfedge run directory (no run.json)")
    cfg = RunConfig.from_json((root / "run.json").read_text())

    def newest(prefix):
        done = sorted(root.glob(f"{prefix}-*/DONE.json"), key=lambda p: p.stat().st_mtime)
        if not done:
            raise NfedgeError(f"{root} has no finished {prefix} stage")
        return done[-1].parent

    gens = {g: newest(f"gen-{g}") for g in cfg.generators}
    target = newest("faultrun") if list(root.glob("faultrun-*/DONE.json")) else None
    out = stages.report_stage(cfg, root, newest("base"), newest("image"), gens, newest("evaluate"), target)
    click.echo(f"wrote {out / 'REPORT.md'}")


def cli_reference_markdown() -> str:
    """docs/CLI.md: every command's --help, at a fixed width (a test keeps the file in sync)."""
    parts = ["# nfedge command reference", "", "Generated from the click help by "
             "`.venv/bin/python -c 'from nfedge.cli import cli_reference_markdown as r; print(r(), end=\"\")' > docs/CLI.md`.", ""]
    commands = [("nfedge", cli)] + [(f"nfedge {n}", c) for n, c in sorted(cli.commands.items())]
    for name, cmd in commands:
        ctx = click.Context(cmd, info_name=name, terminal_width=100, max_content_width=100)
        parts += [f"## `{name}`", "", "```", cmd.get_help(ctx), "```", ""]
    return "\n".join(parts)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except NfedgeError as e:
        click.echo(f"nfedge: error: {e}", err=True)
        sys.exit(1)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("nfedge: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        click.echo(f"nfedge: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
