"""Why a non-empty corpus file gave no record: its shape, what was expected, and how
to map it (the error line `ingest` prints for such a file)."""

from __future__ import annotations

import orjson

from .readers import BadSource, open_csv, open_text
from .shapes import EXPECTED, describe_value, mapping_hint


def no_records(plan, convert, rep, document=None) -> str:
    """Why a non-empty file gave no record: its shape, what was expected, how to map it.
    ``document``: a JSON file's content as read already (not parsed twice)."""
    if document is not None:
        return _no_records_message(plan, convert, rep, describe_value(document))
    shape = "its shape could not be read"
    stream, raw, *_ = open_text(plan.path, plan.encoding)
    try:
        if plan.format == "csv":
            _, layout, _ = open_csv(stream, convert.fields)
            shape = f"columns {layout.header[:15]}"
        elif plan.format == "ndjson":
            for line in stream:
                if line.strip():
                    shape = "first line: " + describe_value(orjson.loads(line))
                    break
        else:
            shape = describe_value(orjson.loads(stream.read()))
    except (BadSource, ValueError, OSError, EOFError):
        pass
    finally:
        raw.close()
    return _no_records_message(plan, convert, rep, shape)


def _no_records_message(plan, convert, rep, shape: str) -> str:
    first = rep.errors[0][1] if rep.errors else ""
    why = "" if first.startswith(("no text field", "expected a JSON object")) else f" ({first})"
    expected = f"{convert.fields.describe()} to find text" if convert.fields else EXPECTED
    return (f"no records found{why}; {shape}; expected {expected}; "
            f"{mapping_hint(plan.format)}")
