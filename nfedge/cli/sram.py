"""Memory-image commands: quantize a checkpoint into an image, inject undervolted-SRAM faults."""

from __future__ import annotations

import json

import click

from nfedge.cli.common import cli


@cli.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="nfedge base-model checkpoint (.pt)")
@click.option("--bits", default=8, show_default=True, type=int, help="weight precision, 2..8")
@click.option("--per-channel", is_flag=True, help="one scale per output channel (default: per tensor, as the paper)")
@click.option("--sram-rows", default=8192, show_default=True, type=int, help="rows per SRAM bank")
@click.option("--sram-cols", default=128, show_default=True, type=int, help="bit cells per row")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="image directory to write")
def quantize(checkpoint: str, bits: int, per_channel: bool, sram_rows: int, sram_cols: int, out: str) -> None:
    """Quantize a base model's weights into a memory image (weights.bin + manifest.json)."""
    from nfedge.fileio import sha256_file
    from nfedge.sram.image import QuantizeConfig, quantize_to_image, write_image
    from nfedge.train.checkpoint import load_checkpoint

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
    from nfedge.sram.faults import InjectConfig, inject_faults
    from nfedge.sram.image import read_image, write_image

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
