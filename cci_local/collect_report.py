"""What ``collect()`` reports: a ``KindReport`` per kind (submissions, comments), the
``CollectReport`` of the whole run, and ``CollectError``, which carries the report up
to a failure.  ``cci_local.collect`` re-exports all three."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import WorkFailed


class CollectError(WorkFailed):
    """The collection cannot go on; what was received so far stays on disk.

    ``report`` is the CollectReport up to the failure; ``retryable`` says whether the
    same command may succeed later (the API was down, overloaded or rate limiting)."""

    def __init__(self, message: str, report: CollectReport | None = None,
                 retryable: bool = False):
        super().__init__(message)
        self.report = report
        self.retryable = retryable


@dataclass
class KindReport:
    kind: str  # "submissions" or "comments"
    file: str  # the .zst
    status: str = ""  # collected, resumed, extended, already collected, present, no items
    note: str = ""
    added: int = 0  # items written by this run
    items: int = 0  # items in the file
    pages: int = 0  # pages received by this run
    retries: int = 0
    malformed: int = 0  # objects without an id or created_utc, skipped
    exhausted: bool = False  # the range ran out (rather than the limit)
    written: bool = False  # the .zst was (re)written by this run
    first_utc: int | None = None
    last_utc: int | None = None
    seconds: float = 0.0


@dataclass
class CollectReport:
    subreddit: str
    dumps_dir: str
    base_url: str
    kinds: list[KindReport] = field(default_factory=list)
    requests: int = 0  # HTTP requests sent, retries included
    seconds: float = 0.0

    @property
    def files_written(self) -> list[str]:
        return [k.file for k in self.kinds if k.written]

    @property
    def files(self) -> list[str]:
        """The dump files there are now, written by this run or not."""
        return [k.file for k in self.kinds if Path(k.file).exists()]
