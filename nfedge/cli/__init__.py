"""The `nfedge` command line: thin click wrappers over the library's stage functions, one module per part
of the pipeline (sram, train, analysis, deploy, run), all registered on the group in nfedge.cli.common.

Errors (NfedgeError, an OSError such as a full disk, and click's usage errors) are printed as ONE line on stderr
with exit code 1 (usage: 2); results that a script reads go to stdout (--json), progress to stderr.
"""

from __future__ import annotations

import sys

import click

from nfedge.cli import analysis, deploy, plan, run, sram, train  # noqa: F401 - the commands register on `cli`
from nfedge.cli.common import cli
from nfedge.errors import NfedgeError, os_error_message

__all__ = ["cli", "cli_reference_markdown", "main"]


def cli_reference_markdown() -> str:
    """docs/CLI.md: every command's --help, at a fixed width (a test keeps the file in sync)."""
    parts = ["# nfedge command reference", "", "Generated from the click help by "
             "`.venv/bin/python -c 'from nfedge.cli import cli_reference_markdown as r; print(r(), end=\"\")' > docs/CLI.md`.", ""]
    commands = [("nfedge", cli)] + [(f"nfedge {n}", c) for n, c in sorted(cli.commands.items())]
    for name, cmd in commands:
        ctx = click.Context(cmd, info_name=name, terminal_width=100, max_content_width=100)
        parts += [f"## `{name}`", "", "```", cmd.get_help(ctx), "```", ""]
    return "\n".join(parts)


def _command(args: list[str]) -> str | None:
    """The subcommand in `args` ("quantize"), to say what failed when an OSError names no file."""
    return next((a for a in args if a in cli.commands), None)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except NfedgeError as e:
        click.echo(f"nfedge: error: {e}", err=True)
        sys.exit(1)
    except OSError as e:  # a full disk, a read-only file system, a vanished file: the user's to fix, not a bug
        click.echo(f"nfedge: error: {os_error_message(e, _command(sys.argv[1:]))}", err=True)
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
