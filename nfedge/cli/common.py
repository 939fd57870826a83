"""The click group every command registers on, and the options and output helpers commands share.

Commands import their stage modules inside the command function: `nfedge --help`, and each command, only
pay for the libraries that command uses (TVM alone takes seconds to import).
"""

from __future__ import annotations

import json

import click

from nfedge.errors import NfedgeError
from nfedge.integer import MODES


class ConfigDefault:
    """An option's default that lives in a stage's config dataclass (`default=ConfigDefault("module", "Class.field")`),
    so the CLI never restates it. Click calls it when it needs the value (parsing) and str()s it for --help; only then
    is the stage module imported, so `nfedge --help` and the other commands do not pay for its torch or TVM.
    Give the option its `type`: click cannot infer it from this object."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self):
        import importlib

        value = importlib.import_module(self.module)
        for part in self.name.split("."):
            value = getattr(value, part)
        return value

    def __str__(self) -> str:
        return str(self())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nfedge")
def cli() -> None:
    """nfedge: NeuralFuse on the edge (quantize, inject SRAM faults, train, build, faultrun)."""


def calibration_option(fn):
    return click.option("--calibration", default=ConfigDefault("nfedge.sram.calibration", "DEFAULT_CALIBRATION"),
                        show_default=True, type=str,
                        help="SRAM table giving --voltage its BER: built-in name or TOML file")(fn)


def data_options(fn):
    fn = click.option("--test-limit", type=int, help="evaluate on a seeded subset of the test set")(fn)
    fn = click.option("--train-limit", type=int, help="train on a seeded subset of the training set")(fn)
    fn = click.option("--data-root", help="dataset folder, or the .npz file (default: the checkpoint's recorded "
                      "root; without a checkpoint, the data set's default location: Fashion-MNIST's Debian package)")(fn)
    fn = click.option("--dataset", default=None, help="fashion-mnist | cifar10 | cifar100 | gtsrb, or your own: "
                      "folder (train/<class>/, test/<class>/ images) | npz (x_train, y_train, x_test, y_test)  "
                      "[default: with a checkpoint, the data set it records; otherwise fashion-mnist]")(fn)
    return fn


def data_config(base_meta: dict | None, dataset, data_root, train_limit, test_limit):
    """The data config: the checkpoint's (if any), with the options given on the command line on top."""
    from nfedge.data import DataConfig

    recorded = dict((base_meta or {}).get("config", {}).get("data") or {})
    d = recorded or DataConfig().to_dict()
    for k, v in (("dataset", dataset), ("root", data_root), ("train_limit", train_limit), ("test_limit", test_limit)):
        if v is not None:
            d[k] = v
    cfg = DataConfig.from_dict(d)
    return cfg.check_recorded_root("the checkpoint") if recorded and data_root is None else cfg


def emit(result: dict, as_json: bool, out: str | None, table: str, files: dict | None = None) -> None:
    """The result on stdout, and in --out as JSON together with the command's other `files` ({path: bytes}):
    all of them are written or none is (a full disk after the first)."""
    from nfedge.fileio import atomic_write_files, json_bytes

    files = dict(files or {})
    if out:
        files[out] = json_bytes(result)
    if files:
        atomic_write_files(files)
    click.echo(json.dumps(result, sort_keys=True) if as_json else table)


def load_bases(base_paths, image_dirs):
    """(model, image, checkpoint metadata) per --base/--image pair; each image must come from its checkpoint."""
    from nfedge.fileio import sha256_file
    from nfedge.sram.image import read_image
    from nfedge.train.checkpoint import load_checkpoint

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


def default_chips(chips: int | None, fault: str, default: int) -> int:
    """--chips when given; else `default` emulated chips, or the one chip of a measured fault map."""
    return chips if chips is not None else (1 if fault == "map" else default)


def condition_cells(cond: dict) -> str:
    """'voltage | BER' table cells of a result condition; a ready image shows its directory."""
    v = cond.get("image") or ("-" if cond["voltage"] is None else f"{cond['voltage']:.3f}")
    return f"{v} | {'-' if cond['ber'] is None else format(cond['ber'], '.4g')}"


_MODE_HELP = ("weight-only: float layers on the image's codes (the paper); integer: int8 activations, int32 "
              "accumulators, fixed-point rescaling (docs/INTEGER.md)")


def mode_option(fn):
    return click.option("--mode", default="weight-only", show_default=True, type=click.Choice(list(MODES)),
                        help=_MODE_HELP)(fn)


def build_mode_option(fn):
    """`nfedge build`'s --mode: no default of its own, the target's (nfedge.deploy.compile.build.default_mode)."""
    return click.option("--mode", default=None, type=click.Choice(list(MODES)),
                        help=_MODE_HELP + ". Default: integer for the bare-metal Cortex-M targets (arm-cortex, "
                        "cortex-m55, cortex-m4) and Ethos-U, weight-only for cortex-a72 and host")(fn)


def executor_option(fn):
    """--executor: where a sweep's tasks run (nfedge.executor, docs/SWEEPS.md)."""
    def parse(ctx, param, value):  # a bad spec fails before any input is read
        from nfedge.executor import ExecutorConfig

        return ExecutorConfig.parse(value)

    return click.option("--executor", "executor", default="local", show_default=True, type=str, callback=parse,
                        help="where the sweep runs: local[:N] (N processes here) or ray[:ADDRESS] (a Ray cluster, "
                        "or a local Ray without an address; pip install nfedge[ray]); docs/SWEEPS.md")(fn)
