"""`cci-local ingest` and `cci-local status`: corpus files into the store, and what
the store holds per community.  The stage itself: cci_local/ingest/."""

from __future__ import annotations

import sys

import click
import orjson
from rich import box
from rich.table import Table

from ..ingest import FORMATS, CleanOptions, FieldMap, IngestReport, ingest
from ..ingest.pii import describe_counts
from ..store import community_status
from .common import console, date, interrupted, out


@click.command(name="ingest")
@click.argument("sources", nargs=-1, required=True)
@click.option("--community", help="Community for records without a subreddit field; records "
              "of other subreddits are skipped.")
@click.option("--format", "fmt", type=click.Choice(("auto", *FORMATS, "reddit-json")),
              default="auto",
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
@click.option("--keep-pii", is_flag=True,
              help="Store texts with the personal data found in them (phone numbers, addresses, "
              "handles, ages, ...); by default each is replaced by a placeholder such as [phone].")
@click.option("--scrub-names", is_flag=True,
              help="Also replace person names after a cue ('my name is', 'my husband') by [name].")
@click.option("--workers", type=click.IntRange(min=1),
              help="Processes that parse and clean large files (default: one per core).")
@click.option("--text", "text_fields", multiple=True, metavar="FIELD",
              help="Field or column holding the text (repeatable: joined in order, e.g. "
              "--text title --text postText). Any of these mapping options replaces the "
              "recognised names.")
@click.option("--title", "title_field", metavar="FIELD", help="Field holding a post's title.")
@click.option("--created", "created_field", metavar="FIELD",
              help="Field holding the time (Unix seconds, also as a string, or an ISO date).")
@click.option("--author", "author_field", metavar="FIELD", help="Field holding the username "
              "(pseudonymised on ingest).")
@click.option("--id", "id_field", metavar="FIELD", help="Field holding the record's id.")
@click.option("--score", "score_field", metavar="FIELD", help="Field holding the score.")
@click.option("--parent", "parent_field", metavar="FIELD",
              help="Field holding the parent's id (makes the record a comment).")
@click.option("--thread", "thread_field", metavar="FIELD",
              help="Field holding the id of the post a comment belongs to.")
@click.option("--community-field", metavar="FIELD",
              help="Field holding the community's name (else --community, else the file name).")
@click.option("--encoding", metavar="NAME",
              help="Every file's text encoding (utf-8, cp1252, utf-16, latin-1, ...); by "
              "default each file's is decided from its bytes: UTF-8, a byte-order mark, or a "
              "detected legacy encoding (Excel's CSV on Windows is cp1252).")
@click.option("--fields", "fields_file", type=click.Path(exists=True, dir_okay=False),
              help="A TOML mapping file with the same keys: text = [\"postText\"], "
              "created = \"date\", ... (options given here win).")
@click.pass_obj
def ingest_cmd(obj, sources, community, fmt, strict, limit, force, min_words, max_words, bots,
               keep_pii, scrub_names, workers, text_fields, title_field, created_field,
               author_field, id_field, score_field, parent_field, thread_field, community_field,
               encoding, fields_file):
    """Read Reddit dumps (NDJSON, .zst, .gz), CSV exports or JSON into the store.

    SOURCES are files or directories (read recursively); the format and
    compression are told from each file's content.  JSON may be Reddit's
    listings, or posts with a nested comment tree (`comments`, then `replies`
    or `children`, any depth), one per file or many in a list.  Records that
    carry no community take it from --community, else from the file or folder
    name (<Name>_submissions.csv, <Name>_comments.zst, r-<name>/).  Exports with
    other field names: map them (--text, --created, ...).  A file that gives no
    record is an error line with its shape; --strict stops there (exit 2).
    Personal data in the texts (phone numbers, addresses, card numbers, IP
    addresses, other platforms' handles, stated ages) becomes a placeholder such
    as [phone] before anything is stored, unless --keep-pii.
    """
    if keep_pii and scrub_names:
        raise click.UsageError("--scrub-names scrubs names as personal data: it cannot go "
                               "with --keep-pii")
    options = CleanOptions(min_words=min_words, max_words=max_words,
                           extra_bots=frozenset(b.lower() for b in bots), pii=not keep_pii,
                           pii_names=scrub_names)
    fields = FieldMap(tuple(text_fields), title_field, created_field, author_field, id_field,
                      score_field, community_field, parent_field, thread_field)
    if fields_file:
        fields = FieldMap.from_file(fields_file).merged(fields)
    try:
        report = ingest(obj.db, list(sources), community=community, fmt=fmt, strict=strict,
                        limit=limit, force=force, options=options, workers=workers,
                        progress=console.is_terminal, fields=fields, encoding=encoding)
    except KeyboardInterrupt:
        stored = obj.db.execute("SELECT count(*) FROM documents").fetchone()[0]
        interrupted(f"the store keeps {stored:,} documents; run the same command again to "
                    "finish (nothing is added twice)")
    _print_ingest(report, pii=not keep_pii)
    if report.empty and not report.total("added"):
        sys.exit(2)  # nothing at all was found: each file's error line says why


def _print_ingest(report: IngestReport, pii: bool = True) -> None:
    table = Table(box=box.SIMPLE_HEAD, title="ingest", title_justify="left")
    for name in ("file", "format", "records", "added", "duplicate", "dropped", "bad"):
        table.add_column(name, justify="left" if name in ("file", "format") else "right",
                         no_wrap=name != "file")
    for s in report.sources:
        if s.status not in ("ingested", "no records"):
            table.add_row(s.name, s.status, "", "", "", "", "", style="dim")
            continue
        fmt = s.format + (f" ({s.compression})" if s.compression not in ("", "none") else "")
        table.add_row(s.name, fmt, f"{s.records:,}", f"{s.added:,}", f"{s.duplicates:,}",
                      f"{sum(s.dropped.values()):,}", f"{s.bad:,}",
                      style="red" if s.bad or s.status == "no records" else None)
    out.print(table)
    for s in report.sources:
        if s.status == "no records":
            console.print(f"[red]error:[/red] {s.path}: {s.note}", highlight=False,
                          soft_wrap=True)
            continue
        if s.status == "left":
            out.print(f"{s.path}: left, {s.note}", style="dim", highlight=False, soft_wrap=True)
        if s.encoding:
            out.print(f"{s.name}: read as {s.encoding}", style="dim", highlight=False,
                      soft_wrap=True)
        if s.undecodable:
            console.print(f"[yellow]warning:[/yellow] {s.path}: {s.undecodable:,} byte(s) are "
                          "not valid in that encoding; each became U+FFFD and its record was "
                          "kept (if the file is in another encoding, give --encoding NAME)",
                          highlight=False, soft_wrap=True)
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
    named: dict[str, list] = {}
    for s in report.sources:  # only where records took the name, and how many
        if s.community and s.named:
            named.setdefault(s.community, []).append(s)
    for name, sources in named.items():
        count = sum(s.named for s in sources)
        which = sources[0].name if len(sources) == 1 else \
            f"{len(sources)} files ({sources[0].name}, ...)"
        out.print(f"community r/{name} from the file or folder name for {count:,} documents of "
                  f"{which} that carry none", style="dim", highlight=False, soft_wrap=True)
    already = sum(s.status == "already ingested" for s in report.sources)
    if already:
        out.print(f"{already} file(s) already ingested: --force re-reads them, adding only "
                  "what is missing", highlight=False, soft_wrap=True)
    if pii and report.pii():
        out.print(f"scrubbed PII: {describe_counts(report.pii())} (placeholders such as "
                  "[phone]; --keep-pii keeps it)", style="dim", highlight=False, markup=False,
                  soft_wrap=True)
    elif not pii:
        out.print("personal data kept as written (--keep-pii); `cci-local scrub` replaces it "
                  "later", style="dim", highlight=False, soft_wrap=True)
    added = report.total("added")
    out.print(f"added {added:,} document{'' if added == 1 else 's'}", highlight=False)




@click.command()
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
    table = Table(box=box.SIMPLE_HEAD, title=f"status of {obj.db_path}", title_justify="left",
                  pad_edge=False, collapse_padding=True, padding=(0, 1, 0, 0))
    # Source files stay in --json: the table keeps its columns for what stages made.
    keys = [k for k in rows[0] if k not in ("first_utc", "last_utc", "files")]
    cells = []
    for row in rows:
        values = [f"{row[k]:,}" if isinstance(row[k], int) else str(row[k]) for k in keys]
        cells.append([values[0], date(row["first_utc"]), date(row["last_utc"]), *values[1:]])
    # Values never wrap; a header wider than its values wraps onto a second line,
    # so a dozen stage columns still fit 120 columns.
    labels = {"documents": "docs", "submissions": "posts", "template pairs": "templates"}
    for i, key in enumerate(keys[:1] + ["from", "to"] + keys[1:]):
        widest, label = max(len(c[i]) for c in cells), labels.get(key, key)
        table.add_column(label, justify="left" if key in ("community", "from", "to") else "right",
                         min_width=max(widest, *(len(w) for w in label.split())))
    for row in cells:
        table.add_row(*row)
    out.print(table)


