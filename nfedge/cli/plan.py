"""`nfedge plan`: certified operating points (lowest voltage at which at least 1 - q of chips keep an accuracy floor,
with confidence c, and the net energy saving there) for the base model alone, behind SECDED ECC, parity, MSB
protection, at fewer bits and behind each generator; and every option's certified accuracy at fixed voltages;
docs/PLANNER.md."""

from __future__ import annotations

import click
from click.core import ParameterSource

from nfedge.cli.common import (
    ConfigDefault,
    calibration_option,
    cli,
    data_config,
    data_options,
    emit,
    executor_option,
    load_bases,
)
from nfedge.errors import NfedgeError


def _energy_base(base_path: str, meta: dict) -> str:
    """What `nfedge energy --base` is given for this checkpoint: the file itself (.pt, counted from the real
    module), else its registered model name."""
    from nfedge.models import BASE_MODELS

    if str(base_path).endswith(".pt"):
        return str(base_path)
    if meta.get("source") is None and meta["model"] in BASE_MODELS:
        return meta["model"]
    raise NfedgeError(f"base checkpoint {base_path}: name it *.pt so its energy can be counted (an imported model)")


def _default(field: str) -> ConfigDefault:
    return ConfigDefault("nfedge.analysis.plan", f"PlanConfig.{field}")


def _default_run(field: str) -> ConfigDefault:
    return ConfigDefault("nfedge.stages", f"RunPlanConfig.{field}")


@cli.command("plan")
@click.option("--base", "base_path", required=True, help="base checkpoint (.pt)")
@click.option("--image", "image_dir", required=True, help="its clean memory image")
@click.option("--generator", "generator_paths", multiple=True, help="generator checkpoint (repeat; each is an option)")
@click.option("--retrained", "retrained_paths", multiple=True,
              help="a retrained base checkpoint (`train-base --robust`; repeat): an option only where you may retrain")
@click.option("--floor", type=float, help="accuracy floor in % (absolute)")
@click.option("--floor-drop", default=_default("floor_drop"), show_default=True, type=float,
              help="or the floor as points below the base model's CA")
@click.option("--quantile", default=_default("quantile"), show_default=True, type=float,
              help="at least 1 - q of chips must keep the floor ...")
@click.option("--confidence", default=_default("confidence"), show_default=True, type=float,
              help="... with this confidence (order statistics; 0.05/0.95 needs 59 chips)")
@click.option("--chips", default=_default("chips"), show_default=True, type=int, help="search chips 0..K-1")
@click.option("--confirm-chips", type=int, help="fresh chips K.. that certify the voltage found  [default: K]")
@click.option("--voltage", "voltages", multiple=True, type=float,
              help="a fixed voltage (V/Vmin; repeat): every option's certified accuracy and ES there, ranked")
@click.option("--val-images", default=_default_run("val_images"), show_default=True, type=int,
              help="validation images held out of training (the search's images); 0: search on the test images")
@click.option("--val-seed", default=0, show_default=True, type=int, help="seed of the validation split")
@click.option("--no-parity", is_flag=True, help="leave out the parity-per-64-bit-word option")
@click.option("--msb", "msb", multiple=True, type=int, help="MSB-protection bits (repeat)  [default: 1 and 2]")
@click.option("--fewer-bits", "fewer_bits", multiple=True, type=int, help="requantized precisions (repeat)  [default: 4]")
@click.option("--generator-msb", default=_default("generator_msb"), show_default=True, type=int,
              help="each generator also with this many MSBs protected (0: none)")
@click.option("--fault", default=_default("fault"), show_default=True, type=str, help="flip | stuck-at")
@click.option("--v-min", type=float, help="lowest voltage searched, V/Vmin  [default: the table's]")
@click.option("--v-max", type=float, help="highest voltage searched, V/Vmin  [default: the table's]")
@click.option("--tolerance", default=_default("tolerance"), show_default=True, type=float,
              help="bisection bracket, V/Vmin")
@click.option("--no-ecc", is_flag=True, help="leave out the SECDED (72,64) option")
@click.option("--ecc-uncorrectable", default=_default("ecc_uncorrectable"), show_default=True, type=str,
              help="a detected-uncorrectable ECC word: zero | keep (as read)")
@click.option("--vela-bundle", type=click.Path(file_okay=False),
              help="an Ethos-U bundle (`nfedge build --target ethos-u55-128`): ES from Vela's weight bytes read")
@calibration_option
@data_options
@executor_option
@click.option("--json", "as_json", is_flag=True, help="print the result JSON instead of the table")
@click.option("--out", type=click.Path(dir_okay=False), help="also write the result JSON here")
@click.option("--plot", type=click.Path(dir_okay=False), help="PNG of achievable ES against the floor (CA .. CA-20)")
@click.option("--plot-step", default=_default("curve_step"), show_default=True, type=float,
              help="the plot's voltage grid, V/Vmin")
@click.option("--table", type=click.Path(dir_okay=False), help="also write the Markdown table here")
def plan_cmd(base_path, image_dir, generator_paths, retrained_paths, floor, floor_drop, quantile, confidence, chips,
             confirm_chips, voltages, val_images, val_seed, no_parity, msb, fewer_bits, generator_msb, fault, v_min, v_max,
             tolerance, no_ecc, ecc_uncorrectable, vela_bundle, calibration, dataset, data_root, train_limit, test_limit,
             executor, as_json, out, plot, plot_step, table):
    """Lowest weight-SRAM voltage at which at least 1 - q of chips keep the floor with confidence c (searched on a
    validation split, certified on fresh chips and the test set), and the energy saving there, for every option."""
    from nfedge.analysis.plan import PlanConfig, plan_operating_points
    from nfedge.analysis.plan_plot import plot_png
    from nfedge.analysis.plan_table import plan_markdown
    from nfedge.analysis.split import validation_split
    from nfedge.data import DataConfig
    from nfedge.data import load_dataset
    from nfedge.fileio import sha256_file
    from nfedge.analysis.plan_retrained import load_retrained, plan_retrained
    from nfedge.train.eopm import load_generator

    drop_given = click.get_current_context().get_parameter_source("floor_drop") is ParameterSource.COMMANDLINE
    if floor is not None and drop_given:
        raise NfedgeError("give --floor or --floor-drop, not both")
    ((model, image, meta),) = load_bases([base_path], [image_dir])
    if val_images < 0:
        raise NfedgeError(f"--val-images must be >= 0, got {val_images}")
    extra = {k: tuple(v) for k, v in (("msb", msb), ("fewer_bits", fewer_bits)) if v}
    cfg = PlanConfig(base=_energy_base(base_path, meta), classes=int(meta["num_classes"]), floor=floor,
                     floor_drop=floor_drop, quantile=quantile, confidence=confidence, chips=chips,
                     confirm_chips=chips if confirm_chips is None else confirm_chips, fault=fault, v_min=v_min,
                     v_max=v_max, tolerance=tolerance, ecc=not no_ecc, ecc_uncorrectable=ecc_uncorrectable,
                     parity=not no_parity, generator_msb=generator_msb, voltages=tuple(voltages), calibration=calibration,
                     curve=plot is not None, curve_step=plot_step, curve_chips=min(chips, PlanConfig.curve_chips),
                     vela_bundle=vela_bundle, **extra)
    dcfg = data_config(meta["meta"], dataset, data_root, train_limit, test_limit)
    _, test, _ = load_dataset(dcfg)
    from nfedge.analysis.split import base_training_data
    from nfedge.progress import DEFAULT

    base_data = base_training_data(meta)
    gens, files, trained_on = {}, {}, [base_data]
    for path in generator_paths:
        g, gmeta = load_generator(path)
        label = gmeta["generator"] if gmeta["generator"] not in gens else str(path)
        gens[label] = (gmeta["generator"], g)
        files[label] = {"path": str(path), "sha256": sha256_file(path)}
        if (gmeta.get("meta") or {}).get("data"):  # `nfedge train` records its data; the run's use the base's
            trained_on.append(DataConfig.from_dict(gmeta["meta"]["data"]))
    retrained = load_retrained(retrained_paths, image, cfg.classes)
    trained_on += [r.trained_on for r in retrained]
    val, split = None, None
    if val_images and None in trained_on:  # never a silent overlap: the search then runs on the test images, recorded
        unknown = base_path if base_data is None else "a retrained base"
        DEFAULT.info(f"plan: {unknown} was not trained by nfedge (its training images are unknown): no validation "
                     "split; the voltage is searched on the test images")
    elif val_images:
        val, split = validation_split(dcfg, trained_on, val_images, val_seed)
    from nfedge.executor import open_executor

    with open_executor(executor) as ex:
        r = plan_operating_points(model, image, test.tensors, cfg, generators=gens, validation=val, split_record=split,
                                  executor=ex)
        for rt in retrained:
            r = plan_retrained(r, rt.label, rt.model, rt.image, test.tensors, cfg, val, split, ex)
    r["inputs"] = {"base": {"path": str(base_path), "sha256": sha256_file(base_path)}, "image": str(image_dir),
                   "generators": files, "data": dcfg.to_dict(),
                   "retrained": {rt.label: {"path": rt.path, "sha256": sha256_file(rt.path)} for rt in retrained}}
    md = plan_markdown(r)
    written = {table: (md + "\n").encode()} if table else {}
    if plot:
        written[plot] = plot_png(r)
    emit(r, as_json, out, md, written)
