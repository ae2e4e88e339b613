"""`cci-local prompt`, `models` and `doctor`: one model call, the model registry and
what each stage will use, and the environment.  Backends: cci_local/llm/."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich import box
from rich.markup import escape
from rich.table import Table

from .common import fail, out, seed_option


@click.command()
@click.argument("model")
@click.argument("text")
@click.option("--schema", "schema_file", type=click.Path(exists=True, dir_okay=False),
              help="A JSON schema file: the reply is constrained to it and printed as JSON.")
@click.option("--system", help="A system message before TEXT.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True)
@seed_option
@click.option("--no-cache", is_flag=True, help="Call the model even if this prompt was answered.")
@click.pass_obj
def prompt(obj, model, text, schema_file, system, max_tokens, temperature, seed, no_cache):
    """Send TEXT (or - for standard input) to MODEL and print only its reply.

    MODEL: embedded, gguf:PATH, ollama:NAME, openai:NAME, openai-compatible:URL#NAME
    or a name from the model registry (`cci-local models`).
    """
    import jsonschema

    from ..llm import InvalidOutput, Sampling, chat, get_backend

    if text == "-":
        text = sys.stdin.read()
    schema = None
    if schema_file:
        try:
            schema = json.loads(Path(schema_file).read_text(encoding="utf-8"))
            jsonschema.Draft202012Validator.check_schema(schema)
        except (json.JSONDecodeError, jsonschema.SchemaError) as e:
            fail(f"{schema_file}: not a valid JSON schema: {getattr(e, 'message', e)}")
    messages = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": text}]
    try:
        backend = get_backend(model)
        reply = chat(obj.db, backend, messages, schema=schema, use_cache=not no_cache,
                     sampling=Sampling(max_tokens=max_tokens, temperature=temperature, seed=seed))
    except InvalidOutput as e:
        fail(f"the reply does not match the schema: {e.reason}\nraw reply: {e.raw}", 1)
    click.echo(json.dumps(reply.data, ensure_ascii=False) if schema else reply.text)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def models(obj, as_json):
    """The model registry, what is available now, what each stage will use, and the
    community adapters trained into the store."""
    from ..doctor import model_rows, stage_rows
    from ..llm import load_registry
    from ..train import list_adapters

    registry = load_registry()
    rows, stages = model_rows(registry), stage_rows(registry)
    adapters = list_adapters(obj.db) if obj.db_path.exists() else []
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


@click.command()
@click.option("--no-smoke-test", is_flag=True, help="Do not run the embedded model.")
@click.pass_obj
def doctor(obj, no_smoke_test):
    """Check the environment: Python, store, disk, memory, backends, training extras."""
    from ..doctor import checks

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
