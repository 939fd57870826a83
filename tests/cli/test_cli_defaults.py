"""The CLI's option defaults come from the stage configs (nfedge.cli.common.ConfigDefault), read only when a command
needs them: each resolves to its config's value, and loading the CLI imports no stage module."""

import subprocess
import sys

import click

from nfedge.cli import cli
from nfedge.cli.common import ConfigDefault


def test_every_config_default_resolves_to_its_fields_value():
    seen = 0
    for name, cmd in cli.commands.items():
        for p in cmd.params:
            if isinstance(p.default, ConfigDefault):
                value = p.default()  # a misspelt module, class or field fails here, not in a user's hands
                assert p.type.convert(value, p, None) == value and str(p.default) == str(value), (name, p.name)
                seen += 1
    assert seen >= 25


def test_defaults_are_the_configs():
    from nfedge.analysis.plan import PlanConfig
    from nfedge.deploy.run.faultrun import FaultrunConfig

    ctx = cli.commands["faultrun"].make_context("faultrun", ["--bundle", "b"])
    for option, field in (("samples", "samples"), ("jobs", "jobs"), ("timeout_s", "timeout_s"),
                          ("min_agreement", "min_agreement"), ("fault", "fault")):
        assert ctx.params[option] == getattr(FaultrunConfig, field)
    ctx = cli.commands["plan"].make_context("plan", ["--base", "b.pt", "--image", "i"])
    assert (ctx.params["chips"], ctx.params["floor_drop"], ctx.params["plot_step"]) == \
        (PlanConfig.chips, PlanConfig.floor_drop, PlanConfig.curve_step)
    help_text = cli.commands["faultrun"].get_help(click.Context(cli.commands["faultrun"], info_name="faultrun"))
    assert f"[default: {FaultrunConfig.samples}]" in help_text


def test_the_cli_loads_without_the_stage_modules():
    code = ("import sys, nfedge.cli; heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tvm', "
            "'numpy')); assert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
