"""The `cci-local` command: a thin click layer over the stage functions."""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone

import click
import orjson
from rich import box
from rich.console import Console
from rich.table import Table

from . import __version__
from .ingest import FORMATS, BadInput, CleanOptions, IngestReport, ingest
from .store import StoreError, community_status, open_store, resolve_path

# Piped output (logs, scripts, CI) gets 120 columns instead of Rich's 80, so that
# tables of file names stay readable; a terminal or $COLUMNS decides otherwise.
_WIDTH = None if os.environ.get("COLUMNS") or sys.stdout.isatty() else 120
console = Console(stderr=True, width=_WIDTH)
out = Console(width=_WIDTH)


class Context:
    def __init__(self, db_path):
        self.db_path = resolve_path(db_path)
        self._db = None

    @property
    def db(self):
        if self._db is None:
            try:
                self._db = open_store(self.db_path)
            except StoreError as e:
                raise click.ClickException(str(e)) from e
        return self._db


@click.group()
@click.version_option(__version__, prog_name="cci-local")
@click.option("--db", "db_path", type=click.Path(dir_okay=False), envvar="CCI_LOCAL_DB",
              help="The store (SQLite file). Default ./cci-local.db, or $CCI_LOCAL_DB.")
@click.pass_context
def cli(ctx, db_path):
    """Turn online communities' discussions into models that speak for them, locally."""
    ctx.obj = Context(db_path)


@cli.command(name="ingest")
@click.argument("sources", nargs=-1, required=True)
@click.option("--community", help="Community for records without a subreddit field; records "
              "of other subreddits are skipped.")
@click.option("--format", "fmt", type=click.Choice(("auto", *FORMATS)), default="auto",
              show_default=True, help="Input format; auto tells it from the content.")
@click.option("--strict", is_flag=True, help="Stop at the first malformed record (exit code 2).")
@click.option("--limit", type=click.IntRange(min=1), help="Read at most N records per file.")
@click.option("--force", is_flag=True,
              help="Re-read files already ingested (adds only what is missing).")
@click.option("--min-words", type=click.IntRange(min=0), default=4, show_default=True,
              help="Drop texts shorter than this after cleaning.")
@click.option("--max-words", type=click.IntRange(min=0), default=256, show_default=True,
              help="Truncate longer texts (the paper used 256); 0 keeps them whole.")
@click.option("--bot", "bots", multiple=True, help="Another author to drop as a bot (repeatable).")
@click.option("--workers", type=click.IntRange(min=1),
              help="Processes that parse and clean large files (default: one per core).")
@click.pass_obj
def ingest_cmd(obj, sources, community, fmt, strict, limit, force, min_words, max_words, bots,
               workers):
    """Read Reddit dumps (NDJSON, .zst, .gz), CSV exports or Reddit JSON into the store.

    SOURCES are files or directories (read recursively); the format and
    compression are told from each file's content.
    """
    options = CleanOptions(min_words=min_words, max_words=max_words,
                           extra_bots=frozenset(b.lower() for b in bots))
    try:
        report = ingest(obj.db, list(sources), community=community, fmt=fmt, strict=strict,
                        limit=limit, force=force, options=options, workers=workers,
                        progress=console.is_terminal)
    except BadInput as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        stored = obj.db.execute("SELECT count(*) FROM documents").fetchone()[0]
        console.print(f"[yellow]interrupted:[/yellow] the store keeps {stored:,} documents; "
                      "run the same command again to finish (nothing is added twice)",
                      highlight=False, soft_wrap=True)
        sys.exit(130)
    _print_ingest(report)


def _print_ingest(report: IngestReport) -> None:
    table = Table(box=box.SIMPLE_HEAD, title="ingest", title_justify="left")
    for name in ("file", "format", "records", "added", "duplicate", "dropped", "bad"):
        table.add_column(name, justify="left" if name in ("file", "format") else "right",
                         no_wrap=name != "file")
    for s in report.sources:
        if s.status != "ingested":
            table.add_row(s.name, s.status, "", "", "", "", "", style="dim")
            continue
        fmt = s.format + (f" ({s.compression})" if s.compression not in ("", "none") else "")
        table.add_row(s.name, fmt, f"{s.records:,}", f"{s.added:,}", f"{s.duplicates:,}",
                      f"{sum(s.dropped.values()):,}", f"{s.bad:,}",
                      style="red" if s.bad else None)
    out.print(table)
    for s in report.sources:
        if s.layout:
            out.print(f"{s.name}: {s.layout}", style="dim", highlight=False, soft_wrap=True)
        if s.dropped:
            reasons = ", ".join(f"{n:,} {why}" for why, n in s.dropped.most_common())
            out.print(f"{s.name}: dropped {reasons}", style="dim", highlight=False,
                      soft_wrap=True)
        if s.status == "skipped":
            out.print(f"{s.path}: skipped, {s.note}", style="dim", highlight=False, soft_wrap=True)
        if s.bad:
            for line in s.error_lines():
                console.print(f"[yellow]warning:[/yellow] {line}", highlight=False, soft_wrap=True)
            if s.bad > len(s.errors):
                console.print(f"[yellow]warning:[/yellow] {s.path}: {s.bad - len(s.errors):,} more "
                              "malformed records (all listed in the store's ingest_errors table)",
                              highlight=False, soft_wrap=True)
    already = sum(s.status == "already ingested" for s in report.sources)
    if already:
        out.print(f"{already} file(s) already ingested: --force re-reads them, adding only "
                  "what is missing", highlight=False, soft_wrap=True)
    added = report.total("added")
    out.print(f"added {added:,} document{'' if added == 1 else 's'}", highlight=False)


def _date(utc):
    return datetime.fromtimestamp(utc, timezone.utc).strftime("%Y-%m-%d") if utc else ""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(obj, as_json):
    """Per community: documents, date range, and what later stages produced."""
    if not obj.db_path.exists():
        raise click.ClickException(
            f"no store at {obj.db_path}: run `cci-local ingest PATH` first (or pass --db)")
    rows = community_status(obj.db)
    if as_json:
        click.echo(orjson.dumps({"db": str(obj.db_path), "communities": rows},
                                option=orjson.OPT_INDENT_2).decode())
        return
    if not rows:
        out.print(f"{obj.db_path}: no documents yet; run `cci-local ingest PATH`")
        return
    table = Table(box=box.SIMPLE_HEAD, title=f"status of {obj.db_path}", title_justify="left")
    keys = [k for k in rows[0] if k not in ("first_utc", "last_utc")]
    for key in keys[:1] + ["from", "to"] + keys[1:]:
        table.add_column(key, justify="left" if key in ("community", "from", "to") else "right",
                         no_wrap=True)
    for row in rows:
        values = [f"{row[k]:,}" if isinstance(row[k], int) else str(row[k]) for k in keys]
        table.add_row(values[0], _date(row["first_utc"]), _date(row["last_utc"]), *values[1:])
    out.print(table)


