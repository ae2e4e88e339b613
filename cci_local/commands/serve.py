"""`cci-local serve`: each community's aligned model as a model name of one
OpenAI-compatible server.  The work: cci_local/serve.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from .common import base_option, check_name_pattern, communities_argument, console, note, out


@click.command(name="serve")
@communities_argument(required=True)
@base_option("The base MODEL the adapters were trained on (default: the registry's base).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Where to listen; 0.0.0.0 lets other machines in (then set $CCI_LOCAL_API_KEY).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--name", "pattern", default="{community}", show_default=True, metavar="PATTERN",
              callback=check_name_pattern,
              help="A community's model name on the server ({community} is filled in).")
@click.option("--n-ctx", type=click.IntRange(min=256), default=4096, show_default=True)
@click.option("--print", "print_only", is_flag=True,
              help="Start nothing: write llama_cpp.server's config file and print the "
              "commands for it, llama-server, vLLM and the client side.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              default="cci-local-serve.json", show_default=True,
              help="Where --print writes llama_cpp.server's config.")
@click.option("--allow-leaky", is_flag=True,
              help="Serve an adapter even when its privacy audit found training texts it "
              "reproduces word for word.")
@click.pass_obj
def serve_cmd(obj, communities, base, host, port, pattern, n_ctx, print_only, config_path,
              allow_leaky):
    """Serve COMMUNITIES' aligned models from one OpenAI-compatible server: each
    community's model is a model name ('base' is the bare base), one copy of the base
    stays in memory and each community's adapter is switched in per request.  Query it
    with any OpenAI client, or with `cci-local survey --aligned-server URL`.

    Each adapter's privacy audit is shown first (or that none ran); an adapter the
    audit found reproducing training texts word for word is refused unless
    --allow-leaky."""
    from ..gate import clear
    from ..llm import default_model
    from ..serve import commands, llama_cpp_config, serve, served_models
    from ..store import select_communities

    names = select_communities(obj.db, list(communities))
    base = default_model("base", base)
    base_path, models = served_models(obj.db, names, base, pattern)
    for line in clear(obj.db, [{"community": m.community, "id": m.adapter_id} for m in models],
                      allow_leaky=allow_leaky, what="serve"):
        note(line)
    if print_only:
        config = Path(config_path)
        config.write_text(json.dumps(llama_cpp_config(base_path, models, host=host, port=port,
                                                      n_ctx=n_ctx), indent=2) + "\n")
        note(f"wrote llama_cpp.server's config to {config}")
        for title, text in commands(base_path, models, base_name=base, pattern=pattern,
                                    host=host, port=port, config_path=config, n_ctx=n_ctx):
            out.print(f"[bold]# {title}[/bold]", highlight=False)
            click.echo(text)
        return
    key = os.environ.get("CCI_LOCAL_API_KEY")
    console.print(f"serving {', '.join(m.name for m in models)} and 'base' on "
                  f"http://{host}:{port}/v1 (one copy of {base_path.name}, adapters switched "
                  "per request); Ctrl-C stops", highlight=False)
    serve(base_path, models, host=host, port=port, n_ctx=n_ctx, api_key=key)
