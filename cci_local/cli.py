"""The `cci-local` command: a thin click layer over the stage functions."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import click
import orjson
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import ProgressColumn
from rich.table import Table
from rich.text import Text

from . import __version__
from .ingest import FORMATS, BadInput, CleanOptions, FieldMap, IngestReport, ingest
from .ingest.shapes import MappingError
from .store import StoreError, community_status, open_store, resolve_path, save_result

# Progress is Rich's: libraries' own tqdm bars (transformers' GGUF loader has one that its
# disable_progress_bar() does not reach) are off unless the user turns them on.  tqdm
# reads this when it is imported, so it is set before any stage imports a library.
os.environ.setdefault("TQDM_DISABLE", "1")

# Piped output (logs, scripts, CI) gets 120 columns instead of Rich's 80, so that
# tables of file names stay readable; a terminal or $COLUMNS decides otherwise.
_WIDTH = None if os.environ.get("COLUMNS") or sys.stdout.isatty() else 120
console = Console(stderr=True, width=_WIDTH)
out = Console(width=_WIDTH)


def _fail(message: str, code: int = 2) -> None:
    """Print an error and exit: 2 for bad usage or input, 1 when the work failed."""
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


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
@click.option("--fields", "fields_file", type=click.Path(exists=True, dir_okay=False),
              help="A TOML mapping file with the same keys: text = [\"postText\"], "
              "created = \"date\", ... (options given here win).")
@click.pass_obj
def ingest_cmd(obj, sources, community, fmt, strict, limit, force, min_words, max_words, bots,
               workers, text_fields, title_field, created_field, author_field, id_field,
               score_field, parent_field, thread_field, community_field, fields_file):
    """Read Reddit dumps (NDJSON, .zst, .gz), CSV exports or JSON into the store.

    SOURCES are files or directories (read recursively); the format and
    compression are told from each file's content.  JSON may be Reddit's
    listings, or posts with a nested comment tree (`comments`, then `replies`
    or `children`, any depth), one per file or many in a list.  Records that
    carry no community take it from --community, else from the file or folder
    name (<Name>_submissions.csv, <Name>_comments.zst, r-<name>/).  Exports with
    other field names: map them (--text, --created, ...).  A file that gives no
    record is an error line with its shape; --strict stops there (exit 2).
    """
    options = CleanOptions(min_words=min_words, max_words=max_words,
                           extra_bots=frozenset(b.lower() for b in bots))
    fields = FieldMap(tuple(text_fields), title_field, created_field, author_field, id_field,
                      score_field, community_field, parent_field, thread_field)
    try:
        if fields_file:
            fields = FieldMap.from_file(fields_file).merged(fields)
    except MappingError as e:
        _fail(str(e))
    try:
        report = ingest(obj.db, list(sources), community=community, fmt=fmt, strict=strict,
                        limit=limit, force=force, options=options, workers=workers,
                        progress=console.is_terminal, fields=fields)
    except BadInput as e:
        _fail(str(e))
    except KeyboardInterrupt:
        stored = obj.db.execute("SELECT count(*) FROM documents").fetchone()[0]
        console.print(f"[yellow]interrupted:[/yellow] the store keeps {stored:,} documents; "
                      "run the same command again to finish (nothing is added twice)",
                      highlight=False, soft_wrap=True)
        sys.exit(130)
    _print_ingest(report)
    if report.empty and not report.total("added"):
        sys.exit(2)  # nothing at all was found: each file's error line says why


def _print_ingest(report: IngestReport) -> None:
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
    named: dict[str, list[str]] = {}
    for s in report.sources:
        if s.community and s.status == "ingested":
            named.setdefault(s.community, []).append(s.name)
    for name, files in named.items():
        which = files[0] if len(files) == 1 else f"{len(files)} files ({files[0]}, ...)"
        out.print(f"community r/{name} from the file or folder name, for records of {which} "
                  "that carry none", style="dim", highlight=False, soft_wrap=True)
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
    table = Table(box=box.SIMPLE_HEAD, title=f"status of {obj.db_path}", title_justify="left",
                  pad_edge=False, collapse_padding=True, padding=(0, 1, 0, 0))
    # Source files stay in --json: the table keeps its columns for what stages made.
    keys = [k for k in rows[0] if k not in ("first_utc", "last_utc", "files")]
    cells = []
    for row in rows:
        values = [f"{row[k]:,}" if isinstance(row[k], int) else str(row[k]) for k in keys]
        cells.append([values[0], _date(row["first_utc"]), _date(row["last_utc"]), *values[1:]])
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




# --------------------------------------------------------------------------- models


@cli.command()
@click.argument("model")
@click.argument("text")
@click.option("--schema", "schema_file", type=click.Path(exists=True, dir_okay=False),
              help="A JSON schema file: the reply is constrained to it and printed as JSON.")
@click.option("--system", help="A system message before TEXT.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-cache", is_flag=True, help="Call the model even if this prompt was answered.")
@click.pass_obj
def prompt(obj, model, text, schema_file, system, max_tokens, temperature, seed, no_cache):
    """Send TEXT (or - for standard input) to MODEL and print only its reply.

    MODEL: embedded, gguf:PATH, ollama:NAME, openai:NAME, openai-compatible:URL#NAME
    or a name from the model registry (`cci-local models`).
    """
    import jsonschema

    from .llm import BackendError, InvalidOutput, Sampling, UnknownModel, chat, get_backend

    if text == "-":
        text = sys.stdin.read()
    schema = None
    if schema_file:
        try:
            schema = json.loads(Path(schema_file).read_text(encoding="utf-8"))
            jsonschema.Draft202012Validator.check_schema(schema)
        except (json.JSONDecodeError, jsonschema.SchemaError) as e:
            _fail(f"{schema_file}: not a valid JSON schema: {getattr(e, 'message', e)}")
    messages = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": text}]
    try:
        backend = get_backend(model)
        reply = chat(obj.db, backend, messages, schema=schema, use_cache=not no_cache,
                     sampling=Sampling(max_tokens=max_tokens, temperature=temperature, seed=seed))
    except UnknownModel as e:
        _fail(str(e))
    except InvalidOutput as e:
        _fail(f"the reply does not match the schema: {e.reason}\nraw reply: {e.raw}", 1)
    except BackendError as e:
        _fail(str(e), 1)
    click.echo(json.dumps(reply.data, ensure_ascii=False) if schema else reply.text)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def models(obj, as_json):
    """The model registry, what is available now, what each stage will use, and the
    community adapters trained into the store."""
    from .doctor import model_rows, stage_rows
    from .llm import BackendError, load_registry

    try:
        registry = load_registry()
    except BackendError as e:
        raise click.ClickException(str(e)) from e
    rows, stages = model_rows(registry), stage_rows(registry)
    adapters = _adapters(obj)
    if as_json:
        click.echo(json.dumps({
            "adapters": adapters,
            "registry": [str(p) for p in registry.files],
            "models": [{"name": e.name, "model": e.model, "roles": e.roles, "available": ok,
                        "detail": detail, "description": e.description}
                       for e, ok, detail in rows],
            "stages": [{"role": r, "model": m, "from": src, "available": ok, "detail": d}
                       for r, m, src, ok, d in stages]}, indent=2))
        return
    table = Table(box=box.SIMPLE_HEAD, title="models", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("model", overflow="fold")
    table.add_column("roles")
    table.add_column("ready", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for entry, ok, detail in rows:
        table.add_row(entry.name, entry.model, " ".join(entry.roles),
                      "[green]yes[/green]" if ok else "[yellow]no[/yellow]", escape(detail))
    out.print(table)
    table = Table(box=box.SIMPLE_HEAD, title="what each stage will use", title_justify="left")
    for name in ("role", "model", "chosen by", "ready", "detail"):
        table.add_column(name, no_wrap=name != "detail", overflow="fold")
    for role, model, source, ok, detail in stages:
        table.add_row(role, model, source, "[green]yes[/green]" if ok else "[red]no[/red]",
                      escape(detail))
    out.print(table)
    out.print(f"registry: {', '.join(str(p) for p in registry.files)}", style="dim",
              highlight=False, soft_wrap=True)
    if adapters:
        table = Table(box=box.SIMPLE_HEAD, title=f"adapters in {obj.db_path}",
                      title_justify="left")
        for name in ("community", "base", "status", "steps", "final loss", "examples",
                     "adapter"):
            table.add_column(name, overflow="fold",
                             justify="right" if name in ("steps", "final loss", "examples")
                             else "left")
        for a in adapters:
            loss = f"{a['final_loss']:.3f}" if a["final_loss"] is not None else "-"
            table.add_row(a["community"], a["base"], a["status"],
                          f"{a['steps'] or 0}/{a['total_steps'] or '?'}", loss,
                          f"{a['examples']:,}", escape(a["gguf"] or a["path"]))
        out.print(table)


def _adapters(obj) -> list[dict]:
    if not obj.db_path.exists():
        return []
    return [dict(zip(("community", "base", "status", "steps", "total_steps", "final_loss",
                      "examples", "path", "gguf", "modelfile"), r, strict=True))
            for r in obj.db.execute(
                "SELECT community, base, status, steps, total_steps, final_loss, examples, path,"
                " gguf, modelfile FROM adapters ORDER BY community, id")]


@cli.command()
@click.option("--no-smoke-test", is_flag=True, help="Do not run the embedded model.")
@click.pass_obj
def doctor(obj, no_smoke_test):
    """Check the environment: Python, store, disk, memory, backends, training extras."""
    from .doctor import checks

    results = checks(obj.db_path, smoke_test=not no_smoke_test)
    table = Table(box=box.SIMPLE_HEAD, title="doctor", title_justify="left")
    table.add_column("check")
    table.add_column("")
    table.add_column("detail")
    marks = {"ok": "[green]ok[/green]", "warn": "[yellow]warn[/yellow]", "fail": "[red]FAIL[/red]"}
    for check in results:
        table.add_row(check.name, marks[check.status], escape(check.detail))
    out.print(table)
    if any(c.status == "fail" for c in results):
        sys.exit(1)


# --------------------------------------------------------------------------- topics


@cli.command()
@click.argument("communities", nargs=-1)
@click.option("--embedder", type=click.Choice(["wordllama", "tfidf", "minilm"]),
              default="wordllama", show_default=True)
@click.option("--reducer", type=click.Choice(["umap", "pca"]), default="umap", show_default=True)
@click.option("--min-cluster-size", type=click.IntRange(min=2),
              help="HDBSCAN's minimum topic size (default: 40, scaled down for small corpora).")
@click.option("--topics", "n_topics", type=click.IntRange(min=2),
              help="Ask for this many topics (KMeans) instead of letting HDBSCAN find them.")
@click.option("--keywords", "n_keywords", type=click.IntRange(min=1), default=10,
              show_default=True)
@click.option("--chunk-docs", nargs=2, type=click.IntRange(min=1), default=(30, 50),
              show_default=True, help="Documents per community per chunk: MIN MAX.")
@click.option("--max-chunks", type=click.IntRange(min=1), default=5, show_default=True,
              help="Chunk rows per topic at most.")
@click.option("--min-communities", type=click.IntRange(min=1),
              help="Communities a chunk row needs (default: 80% of them, as in the paper).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Refit even if these settings were fitted before.")
@click.pass_obj
def topics(obj, communities, embedder, reducer, min_cluster_size, n_topics, n_keywords,
           chunk_docs, max_chunks, min_communities, seed, force):
    """Fit topics jointly over COMMUNITIES (default: all) and cut chunk rows."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from .embed import EmbedderError
    from .topics import TopicParams, TopicsError, fit_topics

    params = TopicParams(embedder=embedder, reducer=reducer, min_cluster_size=min_cluster_size,
                         n_topics=n_topics, n_keywords=n_keywords, chunk_min_docs=chunk_docs[0],
                         chunk_max_docs=max(chunk_docs), max_chunks=max_chunks,
                         min_communities=min_communities, seed=seed)
    columns = (TextColumn("embedding"), BarColumn(bar_width=24), MofNCompleteColumn(),
               _DocsPerSecond(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("embed", total=None)
        try:
            summary = fit_topics(obj.db, list(communities) or None, params, force=force,
                                 progress=_advance(bar, task))
        except (TopicsError, EmbedderError) as e:
            _fail(str(e))
    _print_topics(summary)


class _DocsPerSecond(ProgressColumn):
    def render(self, task) -> Text:
        rate = task.completed / task.elapsed if task.elapsed else 0
        return Text(f"{rate:,.0f} docs/s", style="progress.data.speed")


def _print_topics(summary) -> None:
    names = list(summary.topics[0]["communities"]) if summary.topics else []
    table = Table(box=box.SIMPLE_HEAD, title=f"topics (run {summary.run_id})",
                  title_justify="left")
    table.add_column("topic", justify="right")
    table.add_column("keywords", overflow="fold")
    table.add_column("size", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("chunk rows", justify="right")
    for t in summary.topics:
        total = sum(t["communities"].values()) or 1
        shares = [f"{100 * t['communities'][n] / total:.0f}%" for n in names]
        table.add_row(str(t["topic"]), ", ".join(t["keywords"][:8]), f"{t['size']:,}", *shares,
                      str(t["chunk_rows"]))
    out.print(table)
    sil = (f"; silhouette {summary.silhouette:.2f} (shuffled topics: "
           f"{summary.silhouette_shuffled:.2f})" if summary.silhouette is not None else "")
    out.print(f"{len(summary.topics)} topics over {summary.n_documents:,} documents; "
              f"{summary.n_outliers:,} outliers dropped{sil}; "
              f"{sum(t['chunk_rows'] for t in summary.topics)} chunk rows", highlight=False)
    for note in summary.notes:
        out.print(f"note: {note}", style="dim", highlight=False, soft_wrap=True)
    if summary.reused:
        out.print("already fitted with these documents and settings (--force refits)",
                  style="dim", highlight=False)


# --------------------------------------------------------------------------- generate


@cli.command()
@click.argument("communities", nargs=-1)
@click.option("--mode", type=click.Choice(["cross", "template"]), default="cross",
              show_default=True,
              help="cross: a teacher writes CommInst and CommSurvey from chunk rows; "
              "template: each real post answers a templated instruction (no model).")
@click.option("--teacher", help="The teacher MODEL (default: the registry's teacher).")
@click.option("--parallel", type=click.IntRange(min=1), default=1, show_default=True,
              help="Teacher calls at once (servers only; an in-process model takes turns).")
@click.option("--max-rows", type=click.IntRange(min=0),
              help="Put at most N chunk rows to the teacher (counting rows done before).")
@click.option("--open", "n_open", type=click.IntRange(min=0), default=3, show_default=True,
              help="Open-ended questions per row.")
@click.option("--choice", "n_choice", type=click.IntRange(min=0), default=2, show_default=True,
              help="Multiple-choice questions per row.")
@click.option("--attempts", type=click.IntRange(min=1), default=3, show_default=True,
              help="Asks per row at most (the first and the retries).")
@click.option("--doc-words", type=click.IntRange(min=10), default=120, show_default=True,
              help="Each document shown to the teacher is cut to this many words.")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.7, show_default=True)
@click.option("--context", type=click.IntRange(min=512),
              help="The teacher's context window in tokens, where the backend cannot tell "
              "(OpenAI-compatible servers: default 8192); prompts are fitted to it.")
@click.option("--min-words", type=click.IntRange(min=1), default=8, show_default=True,
              help="template: posts shorter than this make no pair.")
@click.option("--holdout", type=click.FloatRange(0, 0.9), default=0.15, show_default=True,
              help="Share of chunk rows (template: posts) and, separately, of topics held out.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_obj
def generate(obj, communities, mode, teacher, parallel, max_rows, n_open, n_choice, attempts,
             doc_words, temperature, context, min_words, holdout, seed):
    """Make instruction data for COMMUNITIES (default: all).

    cross (Community-Cross-Instruct): every chunk row of the latest topic run goes
    to the teacher once; its open-ended questions, answered once per community,
    are the training data (CommInst), its multiple-choice questions with each
    community's letter the survey (CommSurvey).  Re-running asks nothing twice.
    """
    from .store import UnknownCommunity

    if mode == "template":
        from .generate import TemplateOptions, template_pairs

        options = TemplateOptions(min_words=min_words, holdout=holdout, seed=seed)
        try:
            report = template_pairs(obj.db, list(communities) or None, options)
        except UnknownCommunity as e:
            _fail(str(e))
        _print_template_pairs(report)
        return
    if n_open + n_choice == 0:
        _fail("--open and --choice are both 0: nothing to ask")
    from .generate import CrossOptions, GenerateError, cross_instruct
    from .llm import BackendError, UnknownModel, get_backend, load_registry

    options = CrossOptions(n_open=n_open, n_choice=n_choice, max_attempts=attempts,
                           max_rows=max_rows, doc_words=doc_words, temperature=temperature,
                           seed=seed, holdout=holdout, parallel=parallel, context=context)
    try:
        name = teacher or load_registry().default("teacher")[0]
        backend = get_backend(name)
    except UnknownModel as e:
        _fail(str(e))
    except BackendError as e:
        _fail(str(e), 1)
    if backend.remote:
        console.print(f"[yellow]note:[/yellow] {backend.describe()} is a remote model: the "
                      "documents shown to it leave this machine", highlight=False)
    bar = _progress("teacher rows")
    try:
        with bar:
            task = bar.add_task("rows", total=None)
            report = cross_instruct(obj.db, list(communities) or None, backend, options,
                                    progress=_advance(bar, task))
    except (UnknownCommunity, GenerateError) as e:
        _fail(str(e))
    except BackendError as e:
        _fail(str(e), 1)
    except KeyboardInterrupt:
        done = obj.db.execute("SELECT count(*) FROM teacher_rows").fetchone()[0]
        console.print(f"[yellow]interrupted:[/yellow] {done:,} rows are stored; run the same "
                      "command again to finish (no stored row is asked again)", highlight=False)
        sys.exit(130)
    finally:
        backend.close()
    _print_cross(report)
    if report.unfinished:
        console.print(f"[yellow]warning:[/yellow] {report.unfinished} rows could not reach the "
                      f"teacher ({report.last_error}); run again to retry them",
                      highlight=False, soft_wrap=True)
        sys.exit(1)


def _progress(label: str):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn(label), BarColumn(bar_width=24), MofNCompleteColumn(),
                    _PerMinute(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console, disable=not console.is_terminal)


def _advance(bar, task):
    def progress(kind, n):
        if kind == "total":
            bar.update(task, total=n)
        elif kind == "phase":  # a new stage of the same job: (description, total)
            bar.reset(task, description=n[0], total=n[1])
        else:
            bar.advance(task, n)
    return progress


class _PerMinute(ProgressColumn):
    def render(self, task) -> Text:
        rate = 60 * task.completed / task.elapsed if task.elapsed else 0
        return Text(f"{rate:,.1f}/min", style="progress.data.speed")


def _print_template_pairs(report) -> None:
    table = Table(box=box.SIMPLE_HEAD, title="template pairs", title_justify="left")
    for name in ("community", "posts", "added now", "pairs", "skipped"):
        table.add_column(name, justify="left" if name in ("community", "skipped") else "right")
    for community, r in report.items():
        skipped = ", ".join(f"{n:,} {why}" for why, n in sorted(r["skipped"].items()))
        table.add_row(community, f"{r['posts']:,}", f"{r['added']:,}", f"{r['pairs']:,}",
                      skipped or "-")
    out.print(table)


def _print_cross(r) -> None:
    out.print(f"teacher: {r.teacher}; chunk rows of topic run {r.topic_run}", highlight=False,
              soft_wrap=True)
    table = Table(box=box.SIMPLE_HEAD, title="teacher rows", title_justify="left")
    table.add_column("rows")
    table.add_column("count", justify="right")
    table.add_row("in scope", f"{r.rows_in_scope:,}")
    table.add_row("done before", f"{r.rows_done_before:,}", style="dim")
    table.add_row("tried now", f"{r.tried:,}")
    table.add_row("accepted", f"{r.accepted:,}", style="green" if r.accepted else None)
    for reason, n in r.rejected.most_common():
        table.add_row(f"rejected: {escape(reason)}", f"{n:,}", style="red")
    if r.unfinished:
        table.add_row("teacher unreachable", f"{r.unfinished:,}", style="red")
    out.print(table)
    if r.kept or r.dropped:
        table = Table(box=box.SIMPLE_HEAD, title="questions", title_justify="left")
        table.add_column("")
        table.add_column("count", justify="right")
        table.add_row("kept: open-ended (CommInst)", f"{r.kept['open']:,}")
        table.add_row("kept: multiple-choice (CommSurvey)", f"{r.kept['choice']:,}")
        if r.non_discriminating:
            table.add_row("  of which every community picks the same letter",
                          f"{r.non_discriminating:,}", style="dim")
        for reason, n in r.dropped.most_common():
            table.add_row(f"dropped: {escape(reason)}", f"{n:,}", style="yellow")
        out.print(table)
    table = Table(box=box.SIMPLE_HEAD, title="in the store", title_justify="left")
    for name in ("community", "CommInst answers", "CommSurvey answers"):
        table.add_column(name, justify="left" if name == "community" else "right")
    for community, counts in r.per_community.items():
        table.add_row(community, f"{counts['open']:,}", f"{counts['choice']:,}")
    out.print(table)
    rate = f", {r.output_tokens / r.seconds:,.1f} tokens/s" if r.output_tokens and r.seconds \
        else ""
    out.print(f"{r.calls:,} model calls ({r.cached:,} answers read from the store), "
              f"{r.retries:,} retries, {r.output_tokens:,} output tokens in {r.seconds:,.1f} s"
              f"{rate}", highlight=False)
    for note in r.notes:
        out.print(f"note: {note}", style="dim", highlight=False, soft_wrap=True)


@cli.command(name="train")
@click.argument("community")
@click.option("--base", help="The base MODEL: a GGUF (embedded, gguf:PATH, a registry name) or a "
              "Hugging Face folder (default: the registry's base).")
@click.option("--trainer", type=click.Choice(["peft", "mlx"]), default="peft", show_default=True,
              help="peft: PyTorch (CPU, CUDA, MPS); mlx: mlx-lm (Apple silicon).")
@click.option("--steps", type=click.IntRange(min=1), help="Optimizer steps (overrides --epochs).")
@click.option("--epochs", type=click.FloatRange(min=0.01), default=3.0, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-4,
              show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Examples per optimizer step.")
@click.option("--micro-batch", type=click.IntRange(min=1), default=4, show_default=True,
              help="Examples per forward pass (gradient accumulation makes up the rest).")
@click.option("--rank", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), default=32.0,
              show_default=True)
@click.option("--dropout", type=click.FloatRange(0, 1), default=0.05, show_default=True)
@click.option("--target", "targets", multiple=True,
              help="Module to adapt (repeatable; default: every linear layer of a block).")
@click.option("--max-len", type=click.IntRange(min=16), default=2048, show_default=True)
@click.option("--kind", "kinds", type=click.Choice(["open", "template"]), multiple=True,
              help="Training pairs: open (CommInst, the default), template, or both.")
@click.option("--max-examples", type=click.IntRange(min=1), help="Train on a seeded sample.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, mps.")
@click.option("--4bit", "four_bit", is_flag=True, help="4-bit base weights (CUDA only).")
@click.option("--grad-checkpoint/--no-grad-checkpoint", default=None,
              help="Recompute activations in the backward pass: much less memory, ~30% slower "
              "(default: on for CUDA, off on CPU).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dry-run", is_flag=True,
              help="Print the plan and a memory estimate; train nothing.")
@click.pass_obj
def train_cmd(obj, community, base, trainer, steps, epochs, lr, batch_size, micro_batch, rank,
              alpha, dropout, targets, max_len, kinds, max_examples, checkpoint_every, device,
              four_bit, grad_checkpoint, seed, dry_run):
    """Train COMMUNITY's LoRA adapter and export it as a GGUF adapter (llama.cpp, Ollama).

    Resumes a killed run from its last checkpoint; a finished run with the same
    data and settings is reused.
    """
    from .llm import load_registry
    from .train import TrainConfig, TrainError, plan, train

    config = TrainConfig(rank=rank, alpha=alpha, dropout=dropout, lr=lr, epochs=epochs,
                         steps=steps, batch_size=batch_size, micro_batch=micro_batch,
                         max_len=max_len, seed=seed, checkpoint_every=checkpoint_every,
                         device=device, load_in_4bit=four_bit,
                         gradient_checkpointing=grad_checkpoint,
                         target_modules=tuple(targets) or TrainConfig.target_modules)
    base = base or load_registry().default("base")[0]
    kinds = tuple(kinds) or ("open",)
    if dry_run:
        try:
            _print_plan(plan(obj.db, community, base, config, kinds=kinds,
                             max_examples=max_examples), base, trainer, config)
        except TrainError as e:
            _fail(str(e))
        return
    bar = _progress("training")
    state = {}

    def on_step(point):
        if "task" not in state:
            state["task"] = bar.add_task("steps", total=point["total"],
                                         completed=point["step"] - 1)
        bar.update(state["task"], completed=point["step"],
                   description=f"loss {point['loss']:.3f}, {point['tokens_per_s']:,.0f} tok/s")
        if not console.is_terminal and point["step"] % max(1, point["total"] // 10) == 0:
            console.print(f"step {point['step']}/{point['total']}: loss {point['loss']:.3f}, "
                          f"{point['tokens_per_s']:,.0f} tokens/s", highlight=False)

    try:
        with bar:
            row = train(obj.db, community, base, config, trainer=trainer, kinds=kinds,
                        max_examples=max_examples, on_step=on_step)
    except TrainError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted:[/yellow] run the same command again to continue "
                      "from the last checkpoint", highlight=False)
        sys.exit(130)
    verb = "already trained" if row["reused"] else "trained"
    out.print(f"r/{row['community']}: {verb} on {row['examples']:,} examples, {row['steps']} "
              f"steps, final loss {row['final_loss']:.3f}", highlight=False)
    out.print(f"adapter:   {row['gguf']}", highlight=False, soft_wrap=True)
    out.print(f"Modelfile: {row['modelfile']}  (ollama create {row['community']}-cci -f "
              f"{row['modelfile']})", highlight=False, soft_wrap=True)


def _print_plan(p, base, trainer, config) -> None:
    table = Table(box=box.SIMPLE_HEAD, title="training plan (nothing trained)",
                  title_justify="left", show_header=False)
    table.add_column("")
    table.add_column("", overflow="fold")
    s = p.shape
    rows = [
        ("base", f"{base}: {s.params / 1e9:.2f}B parameters, {s.layers} layers, hidden "
                 f"{s.hidden}, vocabulary {s.vocab:,}"),
        ("trainer", f"{trainer} on {p.device}, weights {p.dtype}"),
        ("data", f"{p.examples:,} examples, ~{p.answer_tokens:,} answer tokens, longest "
                 f"~{p.longest:,} tokens (max {config.max_len:,})"),
        ("steps", f"{p.steps:,} optimizer steps of {config.batch_size} examples "
                  f"({p.accumulation} micro-batches of {config.micro_batch})"),
        ("LoRA", f"rank {config.rank}, alpha {config.alpha:g}, dropout {config.dropout:g} on "
                 f"{', '.join(config.target_modules)}: {p.lora_params / 1e6:.2f}M parameters"),
        ("schedule", f"AdamW lr {config.lr:g}, cosine, {config.warmup:.0%} warm-up"),
    ]
    rows += [(f"memory: {k}", f"{v:.2f} GiB") for k, v in p.memory.items()]
    rows.append(("memory: total (estimate)", f"{p.total_gib:.2f} GiB"))
    for k, v in rows:
        table.add_row(k, v)
    out.print(table)


@cli.command(name="survey")
@click.argument("communities", nargs=-1)
@click.option("--survey", "survey_file", type=click.Path(dir_okay=False),
              help="A survey FILE of your own (CSV or JSON: question, options, each "
                   "community's answer letter or distribution) instead of CommSurvey.")
@click.option("--base", help="The base MODEL (default: the registry's base).")
@click.option("--split", "split_by", type=click.Choice(["random", "topic"]), default="random",
              show_default=True, help="Held-out chunk rows, or held-out (unseen) topics.")
@click.option("--scoring", type=click.Choice(["letter", "text"]), default="letter",
              show_default=True, help="Score each option's letter as the reply (the paper's "
              "way), or its whole text (for small models that cannot map letters).")
@click.option("--no-persona", is_flag=True, help="Leave out the persona-prompted base.")
@click.option("--no-aligned", is_flag=True, help="Leave out the communities' adapters.")
@click.option("--persona-text", default=None, metavar="TEXT",
              help="The persona system prompt; {community} is replaced.  [default: "
                   "'You are a member of the online community r/{community}. ...']")
@click.option("--question-template", default=None, metavar="TEXT",
              help="How a question is put: must contain {question} and {options}.")
@click.option("--samples", type=click.IntRange(min=1), default=10, show_default=True,
              help="Sampled answers per question where a backend has no log-probabilities.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_obj
def survey_cmd(obj, communities, survey_file, base, split_by, scoring, no_persona, no_aligned,
               persona_text, question_template, samples, as_json):
    """Administer a survey to the base model, the persona-prompted base and each
    community's aligned model: the held-out CommSurvey of COMMUNITIES (default: all),
    or with --survey a file of your own.  Answers are stored; a re-run asks nothing twice."""
    from .evaluate.survey import PERSONA, QUESTION, run_survey
    from .evaluate.survey_file import SurveyFileError, load_survey, survey_communities
    from .llm import BackendError, load_registry
    from .store import UnknownCommunity, normalise_community, select_communities
    from .train import TrainError

    template = question_template or QUESTION
    persona_text = persona_text or PERSONA
    for field, text, needs in (("--question-template", template, ("question", "options")),
                               ("--persona-text", persona_text, ())):
        try:
            text.format(question="", options="", community="")
        except (KeyError, IndexError, ValueError) as e:
            _fail(f"{field}: only {{question}}, {{options}} and {{community}} can be "
                  f"replaced ({type(e).__name__}: {e})")
        missing = [n for n in needs if "{" + n + "}" not in text]
        if missing:
            _fail(f"{field} must contain " + " and ".join("{" + n + "}" for n in missing))
    survey_id = None
    try:
        if survey_file:
            survey_id = load_survey(obj.db, survey_file)
            known = survey_communities(obj.db, survey_id)
            names = [normalise_community(c) for c in communities] or known
            unknown = [c for c in names if c not in known]
            if unknown:
                _fail(f"{survey_file} has no answers for " + ", ".join(f"r/{c}" for c in unknown)
                      + " (it has " + ", ".join(f"r/{c}" for c in known) + ")")
        else:
            names = select_communities(obj.db, list(communities) or None)
        base = base or load_registry().default("base")[0]
        bar = _progress("survey")
        with bar:
            task = bar.add_task("questions", total=None)
            result = run_survey(obj.db, names, base, split_by=split_by, survey_id=survey_id,
                                persona=not no_persona, aligned=not no_aligned,
                                persona_text=persona_text, template=template, scoring=scoring,
                                samples=samples, progress=_advance(bar, task))
    except (UnknownCommunity, TrainError, SurveyFileError) as e:
        _fail(str(e))
    except BackendError as e:
        _fail(str(e), 1)
    data = result.as_dict(names)
    save_result(obj.db, "survey", names, {"base": base, "split": split_by, "scoring": scoring,
                                          "survey": survey_file}, data)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for note in result.notes:
        out.print(f"note: {note}", style="dim", highlight=False, soft_wrap=True)
    if result.items:
        _survey_tables(result, names)


def _survey_tables(result, names: list[str]) -> None:
    from .evaluate.metrics import majority_baseline, random_baseline
    from .evaluate.survey import respondents

    with_dists = any(it.distributions for it in result.items)
    table = Table(box=box.SIMPLE_HEAD, title=f"survey accuracy: {result.source}, "
                  f"{result.scoring} scoring, 95% bootstrap CI", title_justify="left")
    columns = ["answer key", "respondent", "questions", "accuracy", "discriminating only"]
    for name in columns + (["representativeness"] if with_dists else []):
        table.add_column(name, justify="right" if name == "questions" else "left")
    for c in names:
        key = result.key(c)
        if not key:
            continue
        for respondent in respondents(c):
            if respondent in result.answers:
                est = result.scores(respondent, c)
                disc = result.scores(respondent, c, discriminating_only=True)
                extra = [_ci(result.representativeness(respondent, c))] if with_dists else []
                table.add_row(f"r/{c}", respondent, f"{est.n}", _ci(est), _ci(disc), *extra)
        chance = random_baseline([len(it.options) for it in result.items if c in it.answers])
        table.add_row(f"r/{c}", "majority letter", f"{len(key)}",
                      _ci(majority_baseline(list(key.values()))), "", style="dim")
        table.add_row(f"r/{c}", "random", f"{len(key)}", f"{chance:.3f}", "", style="dim")
        for other in names:
            if with_dists and other != c and result.between(c, other).n:
                table.add_row(f"r/{c}", f"r/{other}'s real answers", "", "", "",
                              _ci(result.between(c, other)), style="dim")
    out.print(table)
    topics = {c: result.topics(c) for c in names}
    if any(topics.values()):
        shown = [r for r in ("base", "persona", "aligned")
                 if any(r == k.split(":")[0] for k in result.answers)]
        table = Table(box=box.SIMPLE_HEAD, title="accuracy per topic, 95% bootstrap CI",
                      title_justify="left")
        for name in ["answer key", "topic", "questions", *shown]:
            table.add_column(name, justify="right" if name == "questions" else "left")
        for c in names:
            for t in topics[c]:
                cells = {r: result.scores(r if r == "base" else f"{r}:{c}", c, topic=t)
                         for r in shown}
                n = max(e.n for e in cells.values())
                table.add_row(f"r/{c}", t, f"{n}", *[_ci(cells[r]) for r in shown])
        out.print(table)
    for kind in ("aligned", "persona"):
        matrix = result.matrix(names, kind)
        if len(matrix) < 2:
            continue
        table = Table(box=box.SIMPLE_HEAD, title=f"cross-community matrix ({kind}): rows "
                      "answer, columns are the answer keys", title_justify="left")
        table.add_column("model")
        for c in names:
            table.add_column(f"key r/{c}")
        for row, cells in matrix.items():
            best = max(cells, key=lambda c: cells[c].value if cells[c].n else -1)
            table.add_row(row, *[(f"[bold]{_ci(cells[c])}[/bold]" if c == best else _ci(cells[c]))
                                 for c in names])
        out.print(table)


@cli.command(name="psychometrics")
@click.argument("communities", nargs=-1, required=True)
@click.option("--instrument", required=True, metavar="FILE|NAME",
              help="An instrument file (TOML, see cci_local/evaluate/instruments.py) or a "
                   "shipped one: edeq, weight-concerns.")
@click.option("--items", "item_bank", type=click.Path(dir_okay=False),
              help="Item bank CSV (columns Item, Question) for item texts the instrument "
                   "leaves out (the EDE-Q's).")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Sampled answers per item and persona prefix (count items, and every item "
                   "where a backend has no log-probabilities).")
@click.option("--prefixes", type=click.IntRange(min=1), metavar="N",
              help="Use only the first N persona prefixes of the instrument's pool "
                   "(faster, wider intervals).")
@click.option("--base", help="The base MODEL (default: the registry's base).")
@click.option("--scoring", type=click.Choice(["letter", "text"]), default="letter",
              show_default=True, help="How a choice item's options are scored (see survey).")
@click.option("--no-persona", is_flag=True, help="Leave out the persona-prompted base.")
@click.option("--no-base", is_flag=True, help="Leave out the base model.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
@click.pass_obj
def psychometrics_cmd(obj, communities, instrument, item_bank, repeats, prefixes, base, scoring,
                      no_persona, no_base, seed, as_json):
    """Administer a psychometric instrument to each community's aligned model (and the
    base and persona-prompted base for contrast) and score them like human
    respondents: subscales, global score and flags, with bootstrap CIs, and the
    difference between communities."""

    from .evaluate.instruments import InstrumentError, load_instrument
    from .evaluate.psychometrics import RESAMPLES, difference, run_psychometrics
    from .llm import BackendError, load_registry
    from .store import UnknownCommunity, select_communities
    from .train import TrainError

    try:
        inst = load_instrument(instrument, item_bank)
        names = select_communities(obj.db, list(communities))
        base = base or load_registry().default("base")[0]
        bar = _progress("psychometrics")
        with bar:
            task = bar.add_task("items", total=None)
            result = run_psychometrics(obj.db, names, inst, base, persona=not no_persona,
                                       include_base=not no_base, repeats=repeats,
                                       scoring=scoring, prefixes=prefixes, seed=seed,
                                       progress=_advance(bar, task))
    except (UnknownCommunity, TrainError, InstrumentError) as e:
        _fail(str(e))
    except BackendError as e:
        _fail(str(e), 1)
    scores = result.scores
    measures = result.measures()
    pairs = result.compared()
    kind = pairs[0][0].split(":")[0] if pairs else "aligned"
    data = result.as_dict()
    save_result(obj.db, "psychometrics", names, {"instrument": inst.name, "base": base,
                                                 "scoring": scoring, "prefixes": prefixes,
                                                 "repeats": repeats, "seed": seed}, data)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for note in result.notes:
        out.print(f"note: {note}", style="dim", highlight=False, soft_wrap=True)
    if not scores:
        return
    used = len(result.instrument.personas)
    table = Table(box=box.SIMPLE_HEAD, title=f"{inst.name}: scored like a human respondent, "
                  f"{used} persona prefixes, 95% bootstrap CI",
                  title_justify="left")
    table.add_column("respondent")
    for m in measures:
        table.add_column(m)
    for rule in inst.rules:
        table.add_column(f"{rule.name} (share of resamples)")
    for r, s in scores.items():
        table.add_row(r, *[_ci(s.estimate(m)) for m in measures],
                      *[f"{'yes' if s.rules[x.name] else 'no'} ({s.rule_share[x.name]:.2f})"
                        for x in inst.rules])
    out.print(table)
    if pairs:
        table = Table(box=box.SIMPLE_HEAD, title=f"differences between communities ({kind} "
                      "models): a - b, 95% bootstrap CI, two-sided p", title_justify="left")
        for name in ("a", "b", "score", "difference", "p"):
            table.add_column(name)
        for a, b in pairs:
            for m in measures:
                d, p = difference(scores[a], scores[b], m)
                table.add_row(a, b, m, _ci(d), f"{p:.3f}" if p else f"< {1 / RESAMPLES:g}")
        out.print(table)


@cli.command(name="fidelity")
@click.argument("community")
@click.option("--base", help="The base MODEL (default: the registry's base).")
@click.option("--samples", type=click.IntRange(min=5), default=50, show_default=True,
              help="Generated answers per model.")
@click.option("--real", type=click.IntRange(min=10), default=200, show_default=True,
              help="Real documents of the community to compare with (sampled).")
@click.option("--max-tokens", type=click.IntRange(min=8), default=128, show_default=True)
@click.option("--temperature", type=float, default=0.8, show_default=True)
@click.option("--max-perplexity", type=float,
              help="Drop generated texts above this perplexity (default: the largest a real "
                   "text gets).")
@click.option("--embedder", type=click.Choice(["wordllama", "minilm"]), default="wordllama",
              show_default=True, help="Embeddings for the Frechet distance.")
@click.option("--no-persona", is_flag=True, help="Leave out the persona-prompted base.")
@click.option("--no-base", is_flag=True, help="Leave out the base model.")
@click.option("--judge", metavar="MODEL",
              help="The LLM judge of toxicity and harm (default: the base model).")
@click.option("--detoxify", type=click.Path(dir_okay=False), metavar="CKPT",
              help="Score toxicity with this local Detoxify checkpoint instead of the judge.")
@click.option("--detoxify-config", type=click.Path(file_okay=False), metavar="DIR",
              help="Folder with the checkpoint's transformer config and tokenizer (offline).")
@click.option("--harm-rubric", type=click.Path(dir_okay=False), metavar="FILE",
              help="A text file with the harm judge's rubric (default: disordered eating, "
                   "self-harm, harassment; see `cci_local/evaluate/judges.py`).")
@click.option("--no-judges", is_flag=True, help="Leave out toxicity and harm.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_obj
def fidelity_cmd(obj, community, base, samples, real, max_tokens, temperature, max_perplexity,
                 embedder, no_persona, no_base, judge, detoxify, detoxify_config, harm_rubric,
                 no_judges, seed, as_json):
    """Compare COMMUNITY's aligned model's writing (and the base and persona-prompted
    base's) with the community's real documents: near-copies, duplicates and gibberish
    dropped first; identifiability, Frechet distance, real-vs-generated AUC, emotion
    and sentiment divergence, each with a 95% bootstrap CI, next to a split half of the
    real documents (the ceiling); toxicity (Detoxify from a local checkpoint, else the
    LLM judge) and harm (the LLM judge, with its reasons) of every kept text."""
    from .evaluate.fidelity import REAL, FidelityOptions, JudgeOptions, run_fidelity
    from .llm import BackendError, load_registry
    from .store import UnknownCommunity, select_communities
    from .train import TrainError

    try:
        name = select_communities(obj.db, [community])[0]
        base = base or load_registry().default("base")[0]
        options = FidelityOptions(samples=samples, real=real, max_tokens=max_tokens,
                                  temperature=temperature, seed=seed, embedder=embedder,
                                  max_perplexity=max_perplexity)
        judges = JudgeOptions(judge=judge, detoxify=detoxify, detoxify_config=detoxify_config,
                              enabled=not no_judges)
        if harm_rubric:
            judges.harm_rubric = _read_rubric(harm_rubric)
        bar = _progress("fidelity")
        with bar:
            task = bar.add_task("answers", total=None)
            result = run_fidelity(obj.db, name, base, options, persona=not no_persona,
                                  include_base=not no_base, judges=judges,
                                  progress=_advance(bar, task))
    except (UnknownCommunity, TrainError, ValueError) as e:
        _fail(str(e))
    except BackendError as e:
        _fail(str(e), 1)
    data = result.as_dict()
    save_result(obj.db, "fidelity", name, {"base": base, **asdict(options),
                                           "judges": judges.enabled}, data)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for note in result.notes:
        out.print(f"note: {note}", style="dim", highlight=False, soft_wrap=True)
    table = Table(box=box.SIMPLE_HEAD, title=f"screened before scoring (perplexity cap "
                  f"{result.perplexity_cap:.1f})", title_justify="left")
    reasons = ["empty", "near copy", "duplicate", "gibberish"]
    for column in ["model", "generated", *reasons, "kept"]:
        table.add_column(column, justify="left" if column == "model" else "right")
    for model, counts in result.dropped.items():
        table.add_row(model, str(samples), *[str(counts.get(r, 0)) for r in reasons],
                      str(samples - sum(counts.values())))
    out.print(table)
    table = Table(box=box.SIMPLE_HEAD, title=f"fidelity to r/{result.community}'s real "
                  "documents, 95% bootstrap CI", title_justify="left")
    columns = [("identifiability_f1", "identifiability F1 (higher)"),
               ("frechet", "Frechet distance (lower)"),
               ("auc", "real-vs-generated AUC (0.5 best)"),
               ("emotion_jsd", "emotion JSD (lower)"), ("sentiment_jsd", "sentiment JSD (lower)")]
    table.add_column("texts")
    for _, title in columns:
        table.add_column(title)
    for model, values in result.metrics.items():
        table.add_row(model, *[_ci(values[k]) if k in values else "-" for k, _ in columns],
                      style="dim" if model == REAL else None)
    out.print(table)
    if result.confusion:
        labels = sorted({c for row in result.confusion.values() for c in row})
        table = Table(box=box.SIMPLE_HEAD, title="identifiability: predicted community of each "
                      "text", title_justify="left")
        table.add_column("texts")
        for c in labels:
            table.add_column(f"r/{c}", justify="right")
        for model, row in result.confusion.items():
            table.add_row(model, *[str(row.get(c, 0)) for c in labels])
        out.print(table)
    if result.scorers:
        table = Table(box=box.SIMPLE_HEAD, title="toxicity and harm, mean score 0-1, 95% "
                      "bootstrap CI", title_justify="left")
        table.add_column("texts")
        for criterion in result.scorers:
            table.add_column(f"{criterion} (lower)")
        for model, values in result.metrics.items():
            table.add_row(model, *[_ci(values[c]) if c in values else "-"
                                   for c in result.scorers],
                          style="dim" if model == REAL else None)
        out.print(table)
        for criterion, scorer in result.scorers.items():
            out.print(f"{criterion}: {scorer}", highlight=False, markup=False, soft_wrap=True)
    if result.harmful:
        out.print("highest harm scores, with the judge's reasons:", highlight=False)
        for row in result.harmful:
            text = " ".join(row["text"].split())
            out.print(f"  {row['score']:.2f}  {row['model']}: {text[:100]!r}\n"
                      f"        {row['reason']}", highlight=False, markup=False,
                      soft_wrap=True)


def _read_rubric(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        _fail(f"{path}: cannot read the rubric ({e})")
    if len(text) < 20:
        _fail(f"{path}: the rubric is empty or too short to judge by; write what counts as "
              "harmful and what each rating 0-4 means")
    return text


def _ci(est) -> str:
    if not est.n:
        return "-"
    return f"{est.value:.3f} [{est.low:.2f}, {est.high:.2f}]"


# --------------------------------------------------------------------------- run, report


@cli.command(name="run")
@click.argument("communities", nargs=-1, required=True)
@click.option("--corpus", multiple=True, type=click.Path(exists=True), metavar="PATH",
              help="Corpus files or folders to ingest (repeatable); else Arctic Shift dumps "
                   "in --dumps, documents already in the store, or the Arctic Shift API.")
@click.option("--dumps", type=click.Path(file_okay=False), metavar="DIR",
              help="Where <name>_submissions.zst / <name>_comments.zst dumps are looked for "
                   "and collected to (default: dumps/ beside the store, or $CCI_LOCAL_DUMPS).")
@click.option("--offline", is_flag=True, help="Never fetch from the Arctic Shift API.")
@click.option("--limit", type=click.IntRange(min=1), help="Read at most N records per file.")
@click.option("--teacher", help="The teacher MODEL (default: the registry's teacher).")
@click.option("--base", help="The base MODEL (default: the registry's base).")
@click.option("--max-rows", type=click.IntRange(min=0),
              help="Put at most N chunk rows to the teacher (default: all).")
@click.option("--kind", "kinds", type=click.Choice(["open", "template"]), multiple=True,
              help="Training pairs: open (CommInst, the default), template, or both.")
@click.option("--steps", type=click.IntRange(min=1), help="Training steps (overrides --epochs).")
@click.option("--epochs", type=click.FloatRange(min=0.01), help="Training epochs [default: 3].")
@click.option("--scoring", type=click.Choice(["letter", "text"]),
              help="Survey and psychometrics scoring [default: letter].")
@click.option("--samples", type=click.IntRange(min=5),
              help="Fidelity: generated answers per model [default: 50].")
@click.option("--real", type=click.IntRange(min=10),
              help="Fidelity: real documents compared [default: 200].")
@click.option("--no-judges", is_flag=True, help="Fidelity without toxicity and harm.")
@click.option("--instrument", metavar="FILE|NAME",
              help="Also administer this psychometric instrument (edeq, weight-concerns, a file).")
@click.option("--items", "item_bank", type=click.Path(dir_okay=False),
              help="The instrument's item bank CSV, where it leaves item texts out.")
@click.option("--prefixes", type=click.IntRange(min=1), metavar="N",
              help="Psychometrics: the first N persona prefixes only.")
@click.option("--quick", is_flag=True,
              help="A trial run in minutes on a CPU: 4 teacher rows, 8 training steps on "
                   "CommInst and template pairs, 10 fidelity answers per model, text scoring, "
                   "2 persona prefixes (options given explicitly still win).")
@click.option("--force", "force", multiple=True, type=click.Choice(["ingest", "topics", "train"]),
              help="Redo a stage even where it is done (repeatable).")
@click.option("--until", type=click.Choice(["data", "topics", "generate", "train", "survey",
                                            "fidelity", "psychometrics"]),
              help="Stop after this stage.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print what each stage did as JSON.")
@click.pass_obj
def run_cmd(obj, communities, corpus, dumps, offline, limit, teacher, base, max_rows, kinds,
            steps, epochs, scoring, samples, real, no_judges, instrument, item_bank, prefixes,
            quick, force, until, seed, as_json):
    """Everything for COMMUNITIES in one go: find the data, ingest, topics, generate,
    train, survey, fidelity (and psychometrics with --instrument), then write the
    report beside the store.  What is done already is skipped: a second identical
    run makes no model call; an interrupted one goes on where it stopped."""
    from .pipeline import STAGES, PipelineError, RunOptions, run_pipeline

    given = {k: v for k, v in dict(
        corpus=tuple(corpus) or None, dumps=dumps, limit=limit, teacher=teacher, base=base,
        max_rows=max_rows, kinds=tuple(kinds) or None, steps=steps, epochs=epochs,
        scoring=scoring, samples=samples, real=real, instrument=instrument, items=item_bank,
        prefixes=prefixes).items() if v is not None}
    given |= {"offline": offline, "judges": not no_judges, "seed": seed,
              "force": frozenset(force), "until": until}
    options = RunOptions.quick(**given) if quick else RunOptions(**given)
    progress_bar = _progress("{task.description}")  # the label changes with the stage
    shown = STAGES[:STAGES.index(until) + 1] if until else STAGES
    overall = progress_bar.add_task("run", total=len(shown))
    inner = progress_bar.add_task("", total=None)

    def progress(kind, value):
        if kind == "stage":
            index, name = value
            progress_bar.update(overall, completed=index,
                                description=f"run {index + 1}/{len(shown)}: {name}")
            progress_bar.reset(inner, total=None, description=f"  {name}")
        elif kind == "total":
            progress_bar.reset(inner, total=value)
        elif kind == "phase":
            progress_bar.reset(inner, description=f"  {value[0]}", total=value[1])
        elif kind == "completed":
            progress_bar.update(inner, completed=value)
        else:
            progress_bar.advance(inner, value)

    def log(text):
        console.print(text, highlight=False, markup=False, soft_wrap=True,
                      style="dim" if text.startswith("note:") else None)

    try:
        with progress_bar:
            report = run_pipeline(obj.db, obj.db_path, list(communities), options,
                                  progress=progress, log=log)
    except PipelineError as e:
        _fail(f"{e}\nEverything done so far is kept; run the same command again after "
              "fixing this to go on from there.", 1)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted:[/yellow] everything done so far is kept; run the "
                      "same command again to go on from there", highlight=False)
        sys.exit(130)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    table = Table(box=box.SIMPLE_HEAD, title=f"cci-local run {report.run_id}: "
                  + " ".join(f"r/{c}" for c in report.communities), title_justify="left")
    for name in ("stage", "status", "seconds", "model calls", "result"):
        table.add_column(name, justify="right" if name in ("seconds", "model calls") else "left",
                         overflow="fold", no_wrap=name != "result")
    colours = {"ran": "green", "done before": "dim", "skipped": "dim"}
    for s in report.stages:
        table.add_row(s.stage, f"[{colours.get(s.status, 'red')}]{s.status}[/]",
                      f"{s.seconds:,.1f}", f"{s.calls:,}", escape(s.summary))
    out.print(table)
    for s in report.stages:
        for note in s.notes:
            out.print(f"note ({s.stage}): {note}", style="dim", highlight=False, soft_wrap=True)
    out.print(f"{report.calls:,} model calls in {report.seconds:,.1f} s; report: "
              + ", ".join(str(p) for p in report.reports), highlight=False, soft_wrap=True)


@cli.command(name="collect")
@click.argument("communities", nargs=-1, required=True)
@click.option("--dumps", type=click.Path(file_okay=False), metavar="DIR",
              help="Where the dumps go (default: dumps/ beside the store, or $CCI_LOCAL_DUMPS).")
@click.option("--limit", type=click.IntRange(min=1), default=5000, show_default=True,
              help="Items per kind at most (a larger limit later continues the same files).")
@click.option("--since", help="Only items created at or after: 2022-01-01, epoch seconds, or an "
              "age such as 30d, 6w, 1y.")
@click.option("--until", help="Only items created before this time (same forms).")
@click.option("--kind", "kinds", type=click.Choice(["submissions", "comments"]), multiple=True,
              help="What to collect (default: both).")
@click.option("--url", envvar="CCI_LOCAL_ARCTIC_SHIFT_URL", metavar="URL",
              help="Another Arctic Shift server [default: https://arctic-shift.photon-reddit.com; "
                   "$CCI_LOCAL_ARCTIC_SHIFT_URL].")
@click.pass_obj
def collect_cmd(obj, communities, dumps, limit, since, until, kinds, url):
    """Fetch COMMUNITIES' public posts and comments from the Arctic Shift API into
    <name>_submissions.zst and <name>_comments.zst in the dumps folder, the names and
    format of Arctic Shift's per-subreddit dumps, for `ingest` or `run` to read.

    Paged oldest first, at most one request a second, rate-limit headers and 429s
    honoured, dropped connections retried; an interrupted collection resumes where
    it stopped and never writes an item twice.  Only the subreddit's name and the
    time range leave this machine."""
    from .collect import DEFAULT_URL, KINDS, CollectError, collect
    from .pipeline import dumps_folder

    folder = dumps_folder(obj.db_path, dumps)
    bar = _progress("collecting")
    reports = []
    try:
        with bar:
            task = bar.add_task("items", total=None)
            for name in communities:
                reports.append(collect(name, folder, kinds=tuple(kinds) or KINDS, limit=limit,
                                       since=since, until=until, base_url=url or DEFAULT_URL,
                                       progress=_advance(bar, task)))
    except ValueError as e:
        _fail(str(e))
    except CollectError as e:
        _fail(str(e), 1)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted:[/yellow] what arrived is kept; run the same "
                      "command again to go on from there", highlight=False)
        sys.exit(130)
    table = Table(box=box.SIMPLE_HEAD, title=f"collected into {folder}", title_justify="left")
    for name in ("community", "kind", "status", "new", "items", "pages", "retries", "file"):
        table.add_column(name, justify="right" if name in ("new", "items", "pages", "retries")
                         else "left", overflow="fold")
    for rep in reports:
        for k in rep.kinds:
            table.add_row(f"r/{rep.subreddit}", k.kind, k.status, f"{k.added:,}",
                          f"{k.items:,}", f"{k.pages:,}", f"{k.retries:,}", escape(str(k.file)))
    out.print(table)
    out.print(f"next: cci-local run {' '.join('r/' + r.subreddit for r in reports)} "
              f"(or cci-local ingest {folder})", highlight=False, soft_wrap=True)


@cli.command(name="ask")
@click.argument("question")
@click.argument("communities", nargs=-1, required=True)
@click.option("--base", help="The base MODEL the adapters were trained on (default: the "
              "registry's base).")
@click.option("--with-base", "include_base", is_flag=True,
              help="Add the base model's answer, for contrast.")
@click.option("--persona", is_flag=True,
              help="Add the base model told to answer as a member of each community.")
@click.option("--samples", type=click.IntRange(min=1), default=1, show_default=True,
              help="Answers per model (seeds --seed, --seed + 1, ...).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.7, show_default=True)
@click.option("--options", "options_text", metavar="'A;B;C'",
              help="Make it multiple-choice: the options, separated by semicolons.")
@click.option("--options-file", type=click.Path(exists=True, dir_okay=False),
              help="Multiple-choice options, one a line.")
@click.option("--unordered", is_flag=True,
              help="The options are categories, not a scale (total variation, not W1).")
@click.option("--scoring", type=click.Choice(["letter", "text"]), default="text",
              show_default=True, help="How options are scored (as in `survey`).")
@click.option("--json", "as_json", is_flag=True, help="Print the answers as JSON.")
@click.pass_obj
def ask_cmd(obj, question, communities, base, include_base, persona, samples, seed,
            max_tokens, temperature, options_text, options_file, unordered, scoring, as_json):
    """Put QUESTION (or - for standard input) to each of COMMUNITIES' aligned models and
    show their answers side by side, like a focus group; --with-base and --persona add
    contrast.  With --options, each model's whole distribution over the options (the
    survey stage's scoring) and how far apart the communities are.  Answers are
    stored; asking again makes no model call."""
    from .ask import AskError, ask_question, parse_options, respondents
    from .llm import load_registry
    from .store import UnknownCommunity, select_communities

    if question == "-":
        question = sys.stdin.read()
    try:
        options = None
        if options_text and options_file:
            _fail("give --options or --options-file, not both")
        if options_text:
            options = parse_options(options_text)
        elif options_file:
            options = parse_options(lines=Path(options_file).read_text(
                encoding="utf-8").splitlines())
        names = select_communities(obj.db, list(communities))
        base = base or load_registry().default("base")[0]
        people = respondents(obj.db, names, base, include_base=include_base, persona=persona)
        streaming = not as_json and not options and len(people) * samples == 1
        if streaming:
            out.print(f"[bold]{people[0].label}[/bold]:", highlight=False)
        result = ask_question(obj.db, people, question, options=options, samples=samples,
                              seed=seed, max_tokens=max_tokens, temperature=temperature,
                              scoring=scoring, ordered=not unordered,
                              on_piece=(lambda label, k, text: click.echo(text, nl=False))
                              if streaming else None)
    except (AskError, UnknownCommunity) as e:
        _fail(str(e))
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    if streaming:
        click.echo()
    elif options:
        for label, dist in result.distributions.items():
            out.print(f"[bold]{label}[/bold] ({result.methods[label]})", highlight=False)
            width = max(len(v) for v in options.values())
            for letter, text in options.items():
                p = dist[letter]
                out.print(f"  {letter}) {text:<{width}}  {'█' * round(30 * p):<30} {p:6.1%}",
                          highlight=False, markup=False)
        for (a, b), value in result.agreement.items():
            out.print(f"{a} vs {b}: representativeness {value:.3f} (1 = the same "
                      "distribution)", highlight=False)
    else:
        table = Table(box=box.SIMPLE_HEAD, title=escape(result.question), title_justify="left",
                      show_lines=True)
        table.add_column("#", justify="right")
        for label in result.answers:
            table.add_column(label, overflow="fold", ratio=1)
        for k in range(samples):
            table.add_row(str(k + 1), *[escape(v[k]) for v in result.answers.values()])
        out.print(table)
    console.print(f"{result.calls:,} model calls in {result.seconds:,.1f} s", style="dim",
                  highlight=False)


@cli.command(name="chat")
@click.argument("community")
@click.option("--base", help="The base MODEL the adapter was trained on (default: the "
              "registry's base).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.7, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_obj
def chat_cmd(obj, community, base, max_tokens, temperature, seed):
    """Talk with COMMUNITY's model, turn by turn, replies streamed as they are written.

    /switch r/NAME goes on with another community's model, /base shows the base
    model's answer to your last message, /quit ends.  Reads piped standard input a
    line at a time too.  The transcript is kept in the store."""
    from .ask import AskError
    from .chat import run_chat
    from .llm import Sampling, load_registry
    from .store import UnknownCommunity

    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass

    def read_line(prompt):
        try:
            return input(prompt if interactive else "")
        except EOFError:
            return None

    def write(text):
        sys.stdout.write(text)
        sys.stdout.flush()

    base = base or load_registry().default("base")[0]
    try:
        session = run_chat(obj.db, community, base, read_line=read_line, write=write,
                           sampling=Sampling(max_tokens=max_tokens, temperature=temperature,
                                             seed=seed))
    except (AskError, UnknownCommunity) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        write("\n")
        sys.exit(130)
    console.print(f"conversation {session.id}: {session.turns} turns kept in the store",
                  style="dim", highlight=False)


@cli.command(name="report")
@click.argument("communities", nargs=-1)
@click.option("--format", "fmt", type=click.Choice(["md", "html", "json"]),
              help="Default: from the file name, else html.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="The file to write (default: <store>-report.<format> beside the store).")
@click.pass_obj
def report_cmd(obj, communities, fmt, output):
    """Write what the store knows about COMMUNITIES (default: all) as one document:
    corpus, topics, example pairs, training, survey accuracy with CI bars and the
    cross-community heatmap, fidelity tables and emotion plots, psychometric scores.
    HTML embeds its plots; Markdown writes them to a folder beside it; JSON is the data."""
    from .pipeline import report_paths
    from .report import ReportError, write_report
    from .store import UnknownCommunity, select_communities

    if not obj.db_path.exists():
        _fail(f"no store at {obj.db_path}: run `cci-local run r/NAME` first (or pass --db)")
    if output and not fmt:
        suffix = Path(output).suffix.lstrip(".").lower()
        fmt = suffix if suffix in ("md", "html", "json") else None
    fmt = fmt or "html"
    path = Path(output) if output else report_paths(obj.db_path, (fmt,))[0]
    try:
        names = select_communities(obj.db, list(communities)) if communities else None
        write_report(obj.db, path, fmt, communities=names)
    except (ReportError, UnknownCommunity) as e:
        _fail(str(e))
    out.print(f"wrote {path}", highlight=False, soft_wrap=True)


@cli.command(name="export")
@click.argument("communities", nargs=-1)
@click.option("--format", "fmt", type=click.Choice(["mlx", "openai", "sharegpt", "csv"]),
              required=True)
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), required=True)
@click.option("--kind", "kinds", type=click.Choice(["open", "template"]), multiple=True,
              help="Training pairs to include (default: both).")
@click.option("--split-by", type=click.Choice(["random", "topic"]), default="random",
              show_default=True, help="Which held-out split becomes test.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_obj
def export_cmd(obj, communities, fmt, out_dir, kinds, split_by, seed):
    """Write COMMUNITIES' instruction data as mlx-lm / OpenAI / ShareGPT / CSV files."""
    from .export import TRAINING_KINDS, export
    from .store import UnknownCommunity

    try:
        counts = export(obj.db, fmt, out_dir, list(communities) or None,
                        kinds=tuple(kinds) or TRAINING_KINDS, split_by=split_by, seed=seed)
    except UnknownCommunity as e:
        _fail(str(e))
    for community, subsets in counts.items():
        parts = ", ".join(f"{n:,} {k}" for k, n in subsets.items())
        out.print(f"{community}: {parts}", highlight=False)
    out.print(f"written to {out_dir}", highlight=False)
