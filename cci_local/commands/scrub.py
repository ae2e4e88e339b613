"""`cci-local scrub`: personal data in a store's texts -> placeholders, in place.
The work itself: cci_local/ingest/scrub.py (the scrubber: cci_local/ingest/pii.py)."""

from __future__ import annotations

import click

from ..ingest.pii import ENTITIES, describe_counts
from ..ingest.scrub import rescrub
from .common import console, fail, interrupted, json_option, json_or_notes, out, progress_bar


@click.command(name="scrub")
@click.option("--names", is_flag=True,
              help="Also replace person names after a cue ('my name is', 'my husband') by [name].")
@json_option("the counts")
@click.pass_obj
def scrub_cmd(obj, names, as_json):
    """Replace personal data in the stored texts by placeholders, as ingest does.

    For a store ingested with --keep-pii, or before ingest scrubbed: phone
    numbers, street addresses, card numbers, IP addresses, other platforms'
    handles and stated ages in every document (and in the community answers
    made from them) become [phone], [address], [card], [ip], [handle], [age].
    Ids, communities, pseudonyms and every later stage's tables stay.  Batches
    of one transaction each: Ctrl-C loses nothing, and running it again goes on
    where it stopped; once it has finished, a second run replaces nothing.
    """
    if not obj.db_path.exists():
        fail(f"no store at {obj.db_path}: nothing to scrub (pass --db, or run "
             "`cci-local ingest PATH` first)")
    db = obj.db
    bar = progress_bar("scrub")
    try:
        with bar:
            task = bar.add_task("documents", total=None)

            def on_batch(table, done, total):
                bar.update(task, description=table, completed=done, total=total)

            report = rescrub(db, names=names, on_batch=on_batch)
    except KeyboardInterrupt:
        interrupted("what was scrubbed is stored; run `cci-local scrub` again to go on")
    data = {"documents": report.documents, "changed": report.changed,
            "answers": report.answers, "answers_changed": report.answers_changed,
            "replaced": {e: report.pii.get(e, 0) for e in ENTITIES if names or e != "name"},
            "answers_replaced": {e: n for e, n in report.answers_pii.items()},
            "resumed": report.resumed, "seconds": round(report.seconds, 2)}
    notes = ["went on from an interrupted run"] if report.resumed else []
    if json_or_notes(data, notes, as_json):
        return
    out.print(f"scrubbed PII: {describe_counts(report.pii)}", highlight=False)
    out.print(f"documents: {report.changed:,} of {report.documents:,} rewritten", highlight=False)
    if report.answers:
        out.print(f"community answers: {report.answers_changed:,} of {report.answers:,} rewritten"
                  f" ({describe_counts(report.answers_pii)})", highlight=False)
    if report.changed or report.answers_changed:
        console.print("note: adapters, embeddings and the prompt cache made from the old texts "
                      "stay as they are; `cci-local train` now trains a new adapter on the "
                      "scrubbed pairs (their data hash changed)", style="dim", highlight=False,
                      soft_wrap=True)
