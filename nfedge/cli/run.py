"""The whole chain (`nfedge run`) and its report."""

from __future__ import annotations

import json

import click

from nfedge.cli.common import cli


@cli.command("run")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="run config JSON (only the fields that differ from the default); default: the built-in job")
@click.option("--out", default="runs/default", show_default=True, type=click.Path(file_okay=False))
@click.option("--print-config", is_flag=True, help="print the resolved config and exit")
@click.option("--json", "as_json", is_flag=True, help="print the stage log and summary as JSON")
def run_cmd(config_path, out, print_config, as_json):
    """Run the whole chain (train-base, quantize, train, plan, evaluate, build, faultrun, report), reusing cached
    stages."""
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
    plan = f"{r['summary']['plan_table']}\n\n" if r["summary"].get("plan_table") else ""
    click.echo(f"{plan}{r['summary']['table']}\n\nstages run: {ran}\nwall time {time.time() - t:.0f} s; report: {r['report']}")


@cli.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False))
def report_cmd(run_dir):
    """Rewrite the report (Markdown + PNG plots) of a finished `nfedge run` directory."""
    from nfedge.pipeline import rewrite_report

    out = rewrite_report(run_dir)
    click.echo(f"wrote {out / 'REPORT.md'}")
