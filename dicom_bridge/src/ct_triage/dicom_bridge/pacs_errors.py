"""The PACS error family: a PACS could not be reached, refused us, or a retrieve failed.

One base, :class:`PacsError` (a :class:`~ct_triage.models.errors.TriageError`), for every
PACS exchange we start -- DIMSE (C-ECHO, C-FIND, C-MOVE, C-GET, C-STORE) and DICOMweb
(:class:`~ct_triage.dicom_bridge.dicomweb.DicomWebError`) alike -- with ``transient`` saying
whether trying again later may help. The callers map it once, at their boundary: the
delivery outbox to a retry or a dead letter, the HTTP API to 502.
"""

from __future__ import annotations

from ct_triage.dicom_bridge.qr_results import RetrieveResult
from ct_triage.models.errors import TriageError

__all__ = ["AssociationRejected", "PacsError", "PacsUnreachable", "RetrieveFailed"]


class PacsError(TriageError):
    """A PACS (DIMSE or DICOMweb) could not be queried or retrieved from, or stored to.

    Attributes
    ----------
    transient
        ``True`` when trying again later may succeed (connection refused, timeout,
        abort, HTTP 5xx); ``False`` for a refusal that will not change by itself
        (rejected association, wrong credentials, failure status).
    """

    transient: bool = False

    def __init__(self, message: str, *, transient: bool | None = None) -> None:
        super().__init__(message)
        if transient is not None:
            self.transient = transient


class PacsUnreachable(PacsError):
    """No TCP connection / no answer: refused, timed out, or aborted by the peer."""

    transient = True


class AssociationRejected(PacsError):
    """The peer sent an A-ASSOCIATE-RJ (PS3.8 9.3.4) or accepted no presentation context."""


class RetrieveFailed(PacsError):
    """A C-MOVE/C-GET ended with a failure status, a cancel, or an abort part way.

    Attributes
    ----------
    result
        The partial result: sub-operation counts and the files already received.
    """

    def __init__(self, message: str, result: RetrieveResult, *, transient: bool) -> None:
        super().__init__(message, transient=transient)
        self.result = result
