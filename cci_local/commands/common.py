"""What every command shares: the consoles, the store context, option decorators,
progress bars and small printers.  Commands raise ``CciError`` (cci_local/errors.py)
for anything the user must fix; the group in cci_local/cli.py prints it and exits
with its code, in one place."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone

import click
from rich.console import Console
from rich.progress import ProgressColumn
from rich.text import Text

from ..errors import CciError
from ..store import StoreError
from ..study import Study

# Piped output (logs, scripts, CI) gets 120 columns instead of Rich's 80, so that
# tables of file names stay readable; a terminal or $COLUMNS decides otherwise.
_WIDTH = None if os.environ.get("COLUMNS") or sys.stdout.isatty() else 120
console = Console(stderr=True, width=_WIDTH)  # progress, notes, warnings, errors
out = Console(width=_WIDTH)  # results


class Context(Study):
    """The click context object: the study (cci_local/study.py), whose methods the
    commands call; its store opened on first use."""

    @property
    def db_path(self):
        return self.path

    @property
    def db(self):
        try:
            return super().db
        except StoreError as e:
            raise click.ClickException(str(e)) from e


def fail(message: str, code: int = 2):
    """Stop the command with an error message (2: bad usage or input; 1: the work failed)."""
    error = CciError(message)
    error.exit_code = code
    raise error


def note(text: str) -> None:
    out.print(f"note: {text}", style="dim", highlight=False, soft_wrap=True)


def json_or_notes(data: dict, notes: list[str], as_json: bool) -> bool:
    """With --json, print ``data`` as JSON and return True (the command is done);
    else print the stage's notes and return False (the tables follow)."""
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return True
    for text in notes:
        note(text)
    return False


# --------------------------------------------------------------------------- options


def seed_option(f):
    return click.option("--seed", type=int, default=0, show_default=True)(f)


def json_option(what: str = "the results"):
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON.")


def base_option(help: str = "The base MODEL (default: the registry's base)."):
    return click.option("--base", help=help)


def check_name_pattern(ctx, param, value):
    """A click callback: a served-name pattern must contain {community}."""
    if "{community}" not in value:
        raise click.BadParameter("the pattern must contain {community}, or every community "
                                 "would ask the same model")
    return value


def aligned_server_options(f):
    """--aligned-server URL and --aligned-name PATTERN: aligned models from a server."""
    f = click.option("--aligned-name", default="{community}", show_default=True,
                     callback=check_name_pattern, metavar="PATTERN",
                     help="The served name of a community's aligned model, e.g. "
                     "'cci-{community}'; 'lora:{community}' picks llama-server's --lora "
                     "adapter of the community per request.")(f)
    return click.option("--aligned-server", metavar="URL",
                        help="Ask each community's aligned model of this OpenAI-compatible "
                        "server (cci-local serve, vLLM --enable-lora --lora-modules, "
                        "llama-server --lora) instead of loading its adapter here.")(f)


def parallel_option(what: str = "calls"):
    return click.option("--parallel", type=click.IntRange(min=1), default=1,
                        show_default=True,
                        help=f"{what} at once to server respondents (--aligned-server, an "
                        "openai-compatible base); a model in this process answers one at "
                        "a time.")


def communities_argument(required: bool = False):
    return click.argument("communities", nargs=-1, required=required)


# --------------------------------------------------------------------------- progress


class PerMinute(ProgressColumn):
    def render(self, task) -> Text:
        rate = 60 * task.completed / task.elapsed if task.elapsed else 0
        return Text(f"{rate:,.1f}/min", style="progress.data.speed")


class DocsPerSecond(ProgressColumn):
    def render(self, task) -> Text:
        rate = task.completed / task.elapsed if task.elapsed else 0
        return Text(f"{rate:,.0f} docs/s", style="progress.data.speed")


def progress_bar(label: str):
    """A Rich progress display on stderr with count, rate, elapsed time and ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn(label), BarColumn(bar_width=24), MofNCompleteColumn(),
                    PerMinute(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console, disable=not console.is_terminal)


def advance(bar, task):
    """The progress callback stages take: ("total", n), ("phase", (label, n)), or n done."""
    def progress(kind, n):
        if kind == "total":
            bar.update(task, total=n)
        elif kind == "phase":  # a new stage of the same job: (description, total)
            bar.reset(task, description=n[0], total=n[1])
        else:
            bar.advance(task, n)
    return progress


def staged(label: str, task_name: str, work):
    """Run ``work(progress)`` under a progress bar; its result."""
    bar = progress_bar(label)
    with bar:
        task = bar.add_task(task_name, total=None)
        return work(advance(bar, task))


# --------------------------------------------------------------------------- printers


def ci(est) -> str:
    """An estimate with its 95% interval, or '-' when there is none."""
    if not est.n:
        return "-"
    return f"{est.value:.3f} [{est.low:.2f}, {est.high:.2f}]"


def date(utc) -> str:
    return datetime.fromtimestamp(utc, timezone.utc).strftime("%Y-%m-%d") if utc else ""


def interrupted(message: str) -> None:
    console.print(f"[yellow]interrupted:[/yellow] {message}", highlight=False, soft_wrap=True)
    sys.exit(130)
