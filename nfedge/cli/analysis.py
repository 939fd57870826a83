"""Host-side analysis commands: evaluate (accuracy under faults), models, energy."""

from __future__ import annotations

import json

import click
from click.core import ParameterSource

from nfedge.cli.common import (
    ConfigDefault,
    calibration_option,
    cli,
    condition_cells,
    data_config,
    data_options,
    default_chips,
    emit,
    executor_option,
    load_bases,
    mode_option,
)


# The defaults live in the stage configs (imported only when a command needs them).
def _evaluate(field: str) -> ConfigDefault:
    return ConfigDefault("nfedge.analysis.evaluate", f"EvaluateConfig.{field}")


def _energy(field: str) -> ConfigDefault:
    return ConfigDefault("nfedge.analysis.energy", f"EnergyConfig.{field}")


def _format_eval(r: dict) -> str:
    gens = list(r["clean"]["CA_NF"])
    lines = [f"CA {r['clean']['CA']:.2f}" + "".join(f"   CA(NF {g}) {v:.2f}" for g, v in r["clean"]["CA_NF"].items()),
             "| voltage (or image) | BER | PA mean+-std (worst) |" + "".join(f" PA(NF {g}) | RP {g} |" for g in gens),
             "|---|---|---|" + "---|---|" * len(gens)]

    def stat(s):
        return f"{s['mean']:.2f}+-{s['std']:.2f} ({s['worst']:.2f})"

    for c in r["conditions"]:
        row = f"| {condition_cells(c)} | {stat(c['PA'])} |"
        row += "".join(f" {stat(e['PA_NF'])} | {e['RP']['mean']:+.2f} |" for e in c["generators"].values())
        lines.append(row)
    return "\n".join(lines)


@cli.command("evaluate")
@click.option("--base", "base_path", required=True, help="base checkpoint")
@click.option("--image", "image_dir", required=True, help="its clean memory image")
@click.option("--generator", "generator_paths", multiple=True, help="generator checkpoint (repeat; omit: base alone)")
@click.option("--voltage", "voltages", multiple=True, type=float, help="V/Vmin (repeat)")
@click.option("--ber", "bers", multiple=True, type=float, help="BER fraction (repeat)")
@click.option("--chips", type=int, help="evaluation chips 0..K-1 per voltage  [default: 10; 1 with --fault map]")
@click.option("--fault", default=_evaluate("fault"), show_default=True, type=str, help="flip | stuck-at | map")
@click.option("--fault-map", type=click.Path(dir_okay=False), help="measured fault map (JSON), for --fault map")
@click.option("--faulty-image", "images", multiple=True, type=click.Path(file_okay=False),
              help="a ready faulty image directory (e.g. dumped from a chip), evaluated as it is (repeat)")
@calibration_option
@mode_option
@click.option("--calib-images", default=ConfigDefault("nfedge.integer.calibrate", "CALIBRATION_IMAGES"), show_default=True,
              type=int,
              help="integer mode: seeded training images that calibrate the integer programs")
@data_options
@executor_option
@click.option("--json", "as_json", is_flag=True)
@click.option("--out", type=click.Path(dir_okay=False), help="also write the result JSON here")
def evaluate_cmd(base_path, image_dir, generator_paths, voltages, bers, chips, fault, fault_map, images, calibration,
                 mode, calib_images, dataset, data_root, train_limit, test_limit, executor, as_json, out):
    """Host-simulated CA, PA, CA(NF), PA(NF), RP over evaluation chips (mean, std, worst chip)."""
    from nfedge.analysis.evaluate import EvaluateConfig, evaluate
    from nfedge.data import load_dataset
    from nfedge.data.datasets import calibration_images
    from nfedge.integer.calibrate import calibrate_programs, checkpoint_ranges
    from nfedge.train.eopm import load_generator

    ((model, image, meta),) = load_bases([base_path], [image_dir])
    cfg = EvaluateConfig(voltages=tuple(voltages), bers=tuple(bers), chips=default_chips(chips, fault, EvaluateConfig.chips), fault=fault,
                         fault_map=fault_map, images=tuple(images), calibration=calibration, mode=mode)
    data = data_config(meta["meta"], dataset, data_root, train_limit, test_limit)
    _, test, _ = load_dataset(data)
    gens = {}
    for path in generator_paths:
        g, gmeta = load_generator(path)
        gens[gmeta["generator"] if gmeta["generator"] not in gens else str(path)] = g
    programs = None
    if mode == "integer":
        programs = calibrate_programs(model, image, gens, calibration_images(data, calib_images), checkpoint_ranges(meta))
    from nfedge.executor import open_executor

    with open_executor(executor) as ex:
        r = evaluate(model, image, test.tensors, cfg, generators=gens, programs=programs, executor=ex)
    emit(r, as_json, out, _format_eval(r))


@cli.command("models")
@click.option("--input", "input_shape", default="3x32x32", show_default=True, help="input as CxHxW")
@click.option("--classes", default=10, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True)
def models_cmd(input_shape, classes, as_json):
    """List registered base models and generators with parameters, MACs and weight-memory accesses."""
    from nfedge.analysis.energy import list_models, parse_input_shape

    rows = list_models(parse_input_shape(input_shape), classes)
    if as_json:
        click.echo(json.dumps(rows))
        return

    def cell(v) -> str:  # a model that cannot run at this input has parameters but no MACs or accesses
        return "-" if v is None else f"{v:,}"

    click.echo("\n".join(["| name | kind | params | MACs | weight accesses |", "|---|---|---|---|---|"] + [
        f"| {r['name']} | {r['kind']} | {cell(r.get('params'))} | {cell(r.get('macs'))} | {cell(r.get('weight_accesses'))}"
        + (f" ({r['error']})" if r.get("error") else "") + " |" for r in rows]))


@cli.command("energy")
@click.option("--base", default=_energy("base"), show_default=True, type=str,
              help="base model name or an nfedge checkpoint (.pt)")
@click.option("--generator", default=_energy("generator"), show_default=True, type=str,
              help="generator name ('none' for the base alone)")
@click.option("--input", "input_shape", default=_energy("input"), show_default=True, type=str, help="input as CxHxW")
@click.option("--classes", default=_energy("classes"), show_default=True, type=int)
@click.option("--voltage", default=_energy("voltage"), show_default=True, type=float,
              help="base-model SRAM voltage in V/Vmin")
@click.option("--ber", type=float, help="or the BER; the voltage is found from the calibration table")
@click.option("--calibration", default=_energy("calibration"), show_default=True, type=str)
@click.option("--vela-bundle", type=click.Path(file_okay=False),
              help="an Ethos-U bundle (build --target ethos-u55-128 --mode integer): ES also from Vela's weight reads")
@click.option("--json", "as_json", is_flag=True)
def energy_cmd(base, generator, input_shape, classes, voltage, ber, calibration, vela_bundle, as_json):
    """Weight-memory accesses, MACs, energy saving ES (paper Eq. 6) and MAC-ES (Eq. 7)."""
    from nfedge.analysis.energy import EnergyConfig, estimate_energy

    voltage_given = click.get_current_context().get_parameter_source("voltage") is ParameterSource.COMMANDLINE
    if ber is not None and not voltage_given:
        voltage = None  # --ber alone: the table gives the voltage
    cfg = EnergyConfig(base=base, generator=None if generator.lower() == "none" else generator, input=input_shape,
                       classes=classes, voltage=voltage, ber=ber, calibration=calibration, vela_bundle=vela_bundle)
    r = estimate_energy(cfg)
    lines = [f"{k}: {v}" for k, v in r.items()]
    click.echo(json.dumps(r, sort_keys=True) if as_json else "\n".join(lines))
