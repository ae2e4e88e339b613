"""`cci-local import`: instruction data and surveys made elsewhere.
The work: cci_local/importer.py."""

from __future__ import annotations

import click
from rich import box
from rich.table import Table

from .common import out


@click.command(name="import")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "paper-csv", "paper-json", "csv", "mlx", "openai",
                                 "sharegpt"]),
              help="paper-csv: the Community-Cross-Instruct release's CommInst/CommSurvey "
                   "CSVs; paper-json: its per-subreddit JSON; the others: cci-local's "
                   "own export formats.")
@click.option("--community", help="The community of a single-community file whose name "
                                  "does not say it.")
@click.pass_obj
def import_cmd(obj, paths, fmt, community):
    """Import instruction pairs and multiple-choice surveys from PATHS (files or folders).

    \b
    The file's train/test splits become the store's random and unseen-topic
    holdouts; a question already stored is not stored again; a file with a bad
    row stores nothing and the error names its line."""
    from ..importer import import_files

    results = import_files(obj.db, list(paths), fmt=fmt, community=community)
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("file", "format", "rows", "new questions", "new answers", "already stored",
                   "communities"):
        table.add_column(column, justify="left" if column in ("file", "format", "communities")
                         else "right", overflow="fold")
    for r in results:
        table.add_row(r.path, r.format, f"{r.rows:,}", f"{r.questions_added:,}",
                      f"{r.answers_added:,}", f"{r.already:,}", ", ".join(r.communities))
    out.print(table)
    kinds = obj.db.execute(
        "SELECT kind, split, count(*) FROM instructions WHERE source LIKE 'import:%'"
        " GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
    out.print("imported in the store: " + ", ".join(
        f"{n:,} {'open-ended' if k == 'open' else 'multiple-choice'} {s}" for k, s, n in kinds),
        highlight=False)
