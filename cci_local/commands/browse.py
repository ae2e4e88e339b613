"""`cci-local browse`: the store in Datasette, described, with canned queries.
The module behind it: cci_local/browse.py."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from .common import note, out


@click.command(name="browse")
@click.option("--port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Where Datasette listens; the store holds the community's posts, so "
              "think twice before 0.0.0.0.")
@click.option("--open", "open_browser", is_flag=True, help="Open it in a browser.")
@click.option("--metadata", "metadata_out", type=click.Path(dir_okay=False),
              help="Only write Datasette's metadata (descriptions, canned queries) to FILE "
              "and print the command that serves it.")
@click.pass_obj
def browse_cmd(obj, port, host, open_browser, metadata_out):
    """Open the store in Datasette (read only): every table described, and canned
    queries (where aligned models and the base disagree; the training texts an
    adapter reproduces; accuracy per respondent; held-out questions per community)."""
    from ..browse import command, serve, write_metadata

    path = Path(obj.db_path)
    if metadata_out:
        target = write_metadata(obj.db, path, Path(metadata_out))
        cmd = command(path, target, host=host, port=port, open_browser=open_browser)
        out.print(" ".join(cmd), highlight=False, soft_wrap=True)
        return
    with tempfile.TemporaryDirectory() as folder:
        target = write_metadata(obj.db, path, Path(folder) / "metadata.json")
        cmd = command(path, target, host=host, port=port, open_browser=open_browser)
        note(f"Datasette on http://{host}:{port}/{path.stem} (Ctrl-C stops it)")
        raise SystemExit(serve(cmd))
