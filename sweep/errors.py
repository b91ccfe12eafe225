"""The one error root of sweep.

Every error a user can cause (a bad file, a missing model, a wrong CPU id) is a
``SweepError`` whose message is written for that user. The CLI catches it once,
prints the message and exits with code 2.
"""

from __future__ import annotations


class SweepError(Exception):
    """Base class of every error meant for the user."""


class SpaceError(SweepError):
    """A search-space file is malformed or asks for something the host lacks."""


class ModelError(SweepError):
    """A model cannot be found, read or derived."""


class TaskFileError(SweepError):
    """A task file is malformed."""


class StudyError(SweepError):
    """A study cannot be created, continued or read as asked."""


class ExportError(SweepError):
    """No trial can be exported under the export policy."""
