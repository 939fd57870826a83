"""Deployment commands: build a bundle with TVM, tune for the host, faultrun on the emulated target."""

from __future__ import annotations

import json

import click

from nfedge.cli.common import (
    ConfigDefault,
    build_mode_option,
    calibration_option,
    cli,
    condition_cells,
    default_chips,
    emit,
    executor_option,
    load_bases,
)
from nfedge.errors import NfedgeError


# The defaults live in the stage configs (imported only when a command needs them; TVM takes seconds).
def _build(field: str) -> ConfigDefault:
    return ConfigDefault("nfedge.deploy.compile.build", f"BuildConfig.{field}")


def _tune(field: str) -> ConfigDefault:
    return ConfigDefault("nfedge.deploy.compile.tune", f"TuneConfig.{field}")


def _faultrun(field: str) -> ConfigDefault:
    return ConfigDefault("nfedge.deploy.run.faultrun", f"FaultrunConfig.{field}")


@cli.command("build")
@click.option("--target", default=_build("target"), show_default=True, type=str,
              help="target descriptor name or TOML path")
@click.option("--bits", type=int, help="expected weight precision (must equal the image's)")
@click.option("--base", "base_path", required=True, help="base checkpoint")
@click.option("--image", "image_dir", required=True, help="its clean memory image")
@click.option("--generator", "generator_path", help="generator checkpoint (omit: base model alone)")
@click.option("--tuning-db", type=click.Path(file_okay=False), help="host target: schedules from `nfedge tune --db`")
@build_mode_option
@click.option("--calib-images", default=_build("calib_images"), show_default=True, type=int,
              help="integer mode: seeded training images that calibrate the integer programs")
@click.option("--emit", "emit", type=click.Choice(["library"]), multiple=True,
              help="library: also the kernels for both float ABIs, for `nfedge export` (bare-metal targets)")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="bundle directory")
def build_cmd(target, bits, base_path, image_dir, generator_path, tuning_db, mode, calib_images, emit, out):
    """Compile generator (nominal voltage) and base model (weights from the image) with TVM for a target."""
    from nfedge.deploy.compile.build import BuildConfig, build_bundle
    from nfedge.progress import DEFAULT

    load_bases([base_path], [image_dir])  # the image must come from this checkpoint
    b = build_bundle(BuildConfig(target=target, bits=bits, tuning_db=tuning_db, mode=mode, calib_images=calib_images,
                                 emit_library="library" in emit), base_path, image_dir, generator_path, out, DEFAULT)
    sizes = b.manifest.get("sizes", {})
    click.echo(f"wrote {out} for {b.target.name}: " + ", ".join(f"{k} {v}" for k, v in sizes.items() if isinstance(v, int)),
               err=True)


@cli.command("export")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(file_okay=False),
              help="a bare-metal bundle built with `nfedge build --emit library`")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="the library folder to write")
@click.option("--no-weights-array", is_flag=True, help="leave out weights/nfedge_weights.c (the image as a C array)")
@click.option("--instructions-from", type=click.Path(dir_okay=False),
              help="`nfedge faultrun --out` JSON of this bundle: its instruction counts go into nfedge_model.json")
def export_cmd(bundle_dir, out, no_weights_array, instructions_from):
    """Export a bundle's model as a library for your own firmware (header, sources, kernels, linker fragment)."""
    from nfedge.deploy.compile.library import ExportConfig, export_library
    from nfedge.progress import DEFAULT

    export_library(ExportConfig(weights_array=not no_weights_array, instructions_from=instructions_from), bundle_dir, out,
                   DEFAULT)
    click.echo(f"wrote {out}: include/nfedge_model.h, CMakeLists.txt, nfedge.mk (docs/INTEGRATION.md)", err=True)


@cli.command("tune")
@click.option("--target", default=_tune("target"), show_default=True, type=str,
              help="target descriptor (only host can be tuned)")
@click.option("--base", "base_path", required=True, help="base checkpoint")
@click.option("--image", "image_dir", required=True, help="its clean memory image")
@click.option("--generator", "generator_path", help="generator checkpoint (omit: base model alone)")
@click.option("--db", "db_dir", required=True, type=click.Path(file_okay=False),
              help="tuning database directory (created, or extended with the tasks it lacks)")
@click.option("--trials", default=_tune("trials"), show_default=True, type=int,
              help="measured candidate schedules in total")
@click.option("--trials-per-round", default=_tune("trials_per_round"), show_default=True, type=int,
              help="candidates per task per round")
@click.option("--max-workers", default=_tune("max_workers"), show_default=True, type=int,
              help="builder processes (0: build in-process)")
@click.option("--timeout", "timeout_s", default=_tune("timeout_s"), show_default=True, type=float,
              help="seconds per candidate")
@click.option("--seed", default=_tune("seed"), show_default=True, type=int)
@click.option("--cpu", default=_tune("cpu"), show_default=True, type=str,
              help="LLVM -mcpu to tune for (native: this machine's)")
@click.option("--threads", default=_tune("threads"), show_default=True, type=int,
              help="cores to tune for (0: all usable)")
@click.option("--json", "as_json", is_flag=True, help="print the database summary as JSON on stdout")
def tune_cmd(target, base_path, image_dir, generator_path, db_dir, trials, trials_per_round, max_workers, timeout_s,
             seed, cpu, threads, as_json):
    """MetaSchedule-tune the host build's operators on this machine; `nfedge build --tuning-db` uses the result."""
    from nfedge.deploy.compile.tune import TuneConfig, tune_for_target
    from nfedge.progress import DEFAULT
    from nfedge.train.checkpoint import checkpoint_input_shape
    from nfedge.train.eopm import load_generator

    ((model, image, meta),) = load_bases([base_path], [image_dir])
    gen = load_generator(generator_path)[0] if generator_path else None
    cfg = TuneConfig(target=target, input_shape=checkpoint_input_shape(meta), trials=trials,
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
@click.option("--chips", type=int, help="emulated chips 0..K-1 per voltage  [default: 3; 1 with --fault map]")
@click.option("--samples", default=_faultrun("samples"), show_default=True, type=int, help="test images per chip")
@click.option("--fault", default=_faultrun("fault"), show_default=True, type=str,
              help="flip | stuck-at | map")
@click.option("--fault-map", type=click.Path(dir_okay=False), help="measured fault map (JSON), for --fault map")
@click.option("--image", "--faulty-image", "images", multiple=True, type=click.Path(file_okay=False),
              help="a ready faulty image directory (e.g. dumped from a chip), run as it is (repeat)")
@calibration_option
@click.option("--min-agreement", default=_faultrun("min_agreement"), show_default=True, type=float,
              help="exit non-zero below this fraction of identical host/target predictions")
@click.option("--jobs", default=_faultrun("jobs"), show_default=True, type=int,
              help="emulator processes in parallel (--executor local:N says the same)")
@executor_option
@click.option("--timeout", "timeout_s", default=_faultrun("timeout_s"), show_default=True, type=float,
              help="seconds per emulator run")
@click.option("--json", "as_json", is_flag=True)
@click.option("--out", type=click.Path(dir_okay=False), help="also write the result JSON here")
@click.option("--data-root", help="where the checkpoint's data set is now (default: the root it recorded)")
@click.option("--allow-emulator", type=click.Path(dir_okay=False),
              help="run this emulator program when the bundle's descriptor names it (nfedge runs only the QEMUs it knows)")
@click.option("--trust-bundle-code", is_flag=True,
              help="run the bundle's code: its native code unconfined (host bundles' .so, Linux bundles where no "
              "confinement exists), and the model class a bundle of an import-model --class checkpoint imports")
def faultrun_cmd(bundle_dir, voltages, bers, chips, samples, fault, fault_map, images, calibration, min_agreement, jobs,
                 executor, timeout_s, as_json, out, data_root, allow_emulator, trust_bundle_code):
    """Run the bundle on its (emulated) target against undervolted SRAM images and compare with the host."""
    from nfedge.deploy.run.faultrun import FaultrunConfig, faultrun
    from nfedge.executor import ExecutorConfig, open_executor

    spec: ExecutorConfig = executor  # parsed by the option
    jobs = spec.workers or jobs  # local:N: N emulator processes run from here (ray: its workers run them)

    chips = default_chips(chips, fault, FaultrunConfig.chips)
    cfg = FaultrunConfig(voltages=tuple(voltages), bers=tuple(bers), chips=chips, samples=samples,
                         fault=fault, fault_map=fault_map, images=tuple(images), calibration=calibration,
                         min_agreement=min_agreement, jobs=jobs, timeout_s=timeout_s)
    if spec.kind == "local":
        r = faultrun(bundle_dir, None, cfg, allow_emulator=allow_emulator, trust_bundle_code=trust_bundle_code,
                     data_root=data_root)
    else:
        with open_executor(spec) as ex:
            r = faultrun(bundle_dir, None, cfg, allow_emulator=allow_emulator, trust_bundle_code=trust_bundle_code,
                         data_root=data_root, executor=ex)
    lines = [f"target {r['target']}, {r['mode']} mode, {r['bits']}-bit, {r['chips']} chips x {r['samples']} samples",
             "| V/Vmin (or image) | BER | model | target acc | host acc | identical predictions | max logit diff |",
             "|---|---|---|---|---|---|---|"]
    for row in r["results"]:
        for n, acc in row["target_accuracy"].items():
            ag = row["agreement"][n]
            lines.append(f"| {condition_cells(row)} | {n} | {acc['mean']:.2f}+-{acc['std']:.2f} | "
                         f"{row['host_accuracy'][n]['mean']:.2f} | {100 * ag['identical_fraction']:.1f}% | {ag['max_logit_diff']:.2e} |")
    # the JSON's identical_outputs, in both modes: integer mode is exact by construction; float logits (weight-only)
    # may differ in their last bits between target and host, which the table's max logit diff measures
    lines.append(f"bit-identical outputs (every logit, worst row): {100 * r['agreement']['identical_outputs']:.1f}%"
                 + ("" if r["mode"] == "integer" else " (float logits: see max logit diff)"))
    lines.append(f"instructions per inference: {r['instructions_per_inference']}")
    emit(r, as_json, out, "\n".join(lines))
    a = r["agreement"]
    if not a["passed"]:
        raise NfedgeError(f"host and target disagree: {100 * a['min_identical_fraction']:.2f}% identical predictions "
                          f"(threshold {100 * a['threshold']:.2f}%), {100 * a['identical_outputs']:.2f}% bit-identical outputs"
                          + (" (integer mode: every output must be identical)" if r["mode"] == "integer" else ""))
