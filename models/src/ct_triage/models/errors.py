"""The one error hierarchy of chest-ct-triage.

Every error the product raises on purpose derives from :class:`TriageError`. Each subclass
maps to one outcome at the boundary (CLI exit code, DICOM status, HTTP code); errors are
logged once, at that boundary, and chained with ``raise ... from``.
"""

from __future__ import annotations


class TriageError(Exception):
    """Base class of every deliberate chest-ct-triage error."""

    #: CLI exit status for this error.
    exit_code: int = 1


class StudyDeclined(TriageError):
    """The input is not a usable chest CT (not CT, a localizer, too few slices, ...).

    The message is one line a CT technologist understands; it reaches the user. Whatever
    text it is built from (a decoder's multi-line exception, say), it is kept on one line.
    """

    exit_code = 2

    def __init__(self, message: object = "") -> None:
        super().__init__(" ".join(str(message).split()))


class InvalidInput(StudyDeclined):
    """The input itself is broken: unreadable, truncated, empty, unsafe archive, ..."""


class ModelError(TriageError):
    """The model file or its manifest is missing, tampered with or inconsistent."""


class RuntimeUnavailable(TriageError):
    """A requested inference runtime / execution provider cannot run here."""


class InferenceError(TriageError):
    """The model ran but failed or produced unusable output."""
