"""The one error root of sweep.

Every error a user can cause (a bad file, a missing model, a wrong CPU id) is a
``SweepError`` whose message is written for that user. The CLI catches it once,
prints the message and exits with its ``exit_code``: 2 for bad input, 3 for work
that ran but failed (``WorkFailed``).
"""

from __future__ import annotations


class SweepError(Exception):
    """Base class of every error meant for the user."""

    exit_code = 2


class WorkFailed(SweepError):
    """The input was fine and the work ran, but it failed (a trial, every trial, a verification)."""

    exit_code = 3


class SpaceError(SweepError):
    """A search-space file is malformed or asks for something the host lacks."""


class ModelError(SweepError):
    """A model cannot be found, read or derived."""


class TaskFileError(SweepError):
    """A task file is malformed."""


class StudyError(SweepError):
    """A study cannot be created, continued or read as asked."""


class TableError(SweepError):
    """A file cannot be read as a sweep table (``sweep table``)."""


class ExportError(SweepError):
    """No trial can be exported under the export policy, or not safely (a name a unit would misread)."""
