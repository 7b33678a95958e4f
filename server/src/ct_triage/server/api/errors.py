"""The API's errors: one branch of the product's error hierarchy, one HTTP code each.

Routes raise these (or let a :class:`~ct_triage.models.errors.TriageError` from the layers
below propagate); :func:`ct_triage.server.api.app.create_app` installs one handler that turns
every :class:`TriageError` into a JSON body ``{"error": <class>, "detail": <message>}`` with
the status of :func:`status_for`, and logs it once.
"""

from __future__ import annotations

from ct_triage.dicom_bridge.pacs_errors import PacsError
from ct_triage.models.errors import (
    InferenceError,
    ModelError,
    RuntimeUnavailable,
    StudyDeclined,
    TriageError,
)


class ApiError(TriageError):
    """Base of the errors raised by the HTTP layer itself."""

    status_code: int = 500


class BadRequest(ApiError):
    """The request is well-formed HTTP but cannot be accepted (e.g. an unsafe archive)."""

    status_code = 400


class Unauthorized(ApiError):
    """No bearer token, or one that is unknown or revoked."""

    status_code = 401


class Forbidden(ApiError):
    """The token is valid but its role does not allow the action."""

    status_code = 403


class NotFound(ApiError):
    """No such job, batch or result file."""

    status_code = 404


class Conflict(ApiError):
    """The resource exists but is not in a state that allows the request (no result yet)."""

    status_code = 409


class PayloadTooLarge(ApiError):
    """The upload exceeds the configured size limit."""

    status_code = 413


class UnsupportedMediaType(ApiError):
    """The upload's Content-Type is not one we accept."""

    status_code = 415


class ServiceUnavailable(ApiError):
    """A dependency is not ready (store, spool, model, PACS)."""

    status_code = 503


class BadGateway(ApiError):
    """The PACS answered with an error or could not be reached."""

    status_code = 502


def status_for(exc: TriageError) -> int:
    """The HTTP status of any deliberate error of the product.

    Parameters
    ----------
    exc
        The error.

    Returns
    -------
    int
        ``exc.status_code`` for API errors; 400 for a declined or invalid input; 502 for a
        PACS failure (PacsError); 503 for a model or runtime that is unavailable; 500 else.
    """
    if isinstance(exc, ApiError):
        return exc.status_code
    if isinstance(exc, StudyDeclined):
        return 400
    if isinstance(exc, ModelError | RuntimeUnavailable):
        return 503
    if isinstance(exc, InferenceError):
        return 500
    if isinstance(exc, PacsError):
        return 502
    return 500
