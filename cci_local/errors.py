"""One base class for the errors a user can act on.

A ``CciError`` carries the exit code the command ends with; cci_local/cli.py turns
it into one ``error: ...`` line in one place.  2: the input or the options must be
fixed (the default); 1: the work failed (a model unreachable, a stage that could not
finish).  Errors of the stages subclass it, each in its own module."""

from __future__ import annotations


class CciError(Exception):
    """An error with a message for the user and the command's exit code."""

    exit_code = 2


class WorkFailed(CciError):
    """The input was fine but the work could not be done (exit code 1)."""

    exit_code = 1


class PipelineError(WorkFailed):
    """A stage cannot go on: the message says what to do.  Everything stored so far
    stays, and the next `run` continues from there."""
