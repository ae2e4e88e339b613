"""The `cci-local` command: the click group, assembled from one module per stage or
group of commands under cci_local/commands/.  Errors the user can act on are
``CciError`` (cci_local/errors.py): turned into one message and an exit code here.

Which file to open: docs/architecture.md."""

from __future__ import annotations

import sys

import click
from rich.markup import escape

from . import __version__
from .commands.adapters import adapters_group
from .commands.ask import ask_cmd, chat_cmd
from .commands.audit import audit_cmd
from .commands.browse import browse_cmd
from .commands.common import Context, console
from .commands.fidelity import fidelity_cmd
from .commands.generate import generate
from .commands.imports import import_cmd
from .commands.ingest import ingest_cmd, status
from .commands.models import doctor, models, prompt
from .commands.psychometrics import psychometrics_cmd
from .commands.report import export_cmd, report_cmd
from .commands.run import collect_cmd, run_cmd
from .commands.scrub import scrub_cmd
from .commands.serve import serve_cmd
from .commands.survey import survey_cmd
from .commands.topics import topics
from .commands.train import train_cmd
from .errors import CciError


class Group(click.Group):
    """A click group that prints a ``CciError`` as ``error: ...`` and exits with its code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CciError as e:
            console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False,
                          soft_wrap=True)
            sys.exit(e.exit_code)


@click.group(cls=Group)
@click.version_option(__version__, prog_name="cci-local")
@click.option("--db", "db_path", type=click.Path(dir_okay=False), envvar="CCI_LOCAL_DB",
              help="The store (SQLite file). Default ./cci-local.db, or $CCI_LOCAL_DB.")
@click.pass_context
def cli(ctx, db_path):
    """Turn online communities' discussions into models that speak for them, locally."""
    ctx.obj = Context(db_path)


# In pipeline order, then the tools around it.
for command in (run_cmd, collect_cmd, ingest_cmd, scrub_cmd, status, topics, generate, train_cmd,
                survey_cmd, psychometrics_cmd, fidelity_cmd, audit_cmd, ask_cmd, chat_cmd,
                serve_cmd, browse_cmd,
                report_cmd, export_cmd, adapters_group, import_cmd, prompt, models, doctor):
    cli.add_command(command)
