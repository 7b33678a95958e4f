"""DICOMweb client: QIDO-RS search, WADO-RS series retrieve, STOW-RS store (PS3.18).

A thin, typed layer over :mod:`dicomweb_client` that

* authenticates with HTTP basic credentials or a bearer token, never printing them;
* turns HTTP and network failures into :class:`DicomWebError` (a :class:`PacsError`)
  saying whether trying again may help (``transient``): 401/403 are permanent with a
  message naming the server, 5xx/408/429, refused connections and timeouts transient;
* writes retrieved instances atomically with fsync;
* reports STOW-RS outcomes per instance from the response's ReferencedSOPSequence and
  FailedSOPSequence (PS3.18 10.5.3, Table 10.5.3-1), including on HTTP 400/409.

dicomweb-client's own HTTP retry is switched off: retrying is the caller's job (the
delivery outbox), with its own backoff and dead-letter rules.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from ct_triage.dicom_bridge.instance_files import write_instance_bytes
from ct_triage.dicom_bridge.pacs_errors import PacsError
from ct_triage.dicom_bridge.part10 import read_file_meta
from ct_triage.dicom_bridge.qr_results import SeriesMatch, StudyMatch

__all__ = [
    "BasicAuth",
    "BearerToken",
    "DicomWebClient",
    "DicomWebError",
    "DicomWebNode",
    "StowOutcome",
    "StowResult",
]

LOGGER = logging.getLogger(__name__)

_TRANSIENT_HTTP: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
_AUTH_HTTP: Final = frozenset({401, 403})

_STUDY_FIELDS: Final = (
    "StudyInstanceUID",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "ModalitiesInStudy",
    "StudyDescription",
    "NumberOfStudyRelatedInstances",
)
_SERIES_FIELDS: Final = (
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "NumberOfSeriesRelatedInstances",
)


class DicomWebError(PacsError):
    """A DICOMweb request failed. ``http_status`` is ``None`` for network errors."""

    def __init__(self, message: str, *, transient: bool, http_status: int | None = None):
        super().__init__(message, transient=transient)
        self.http_status = http_status


@dataclass(frozen=True)
class BasicAuth:
    """HTTP basic authentication (RFC 7617). The password never appears in a repr."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class BearerToken:
    """OAuth 2 bearer token (RFC 6750). Never appears in a repr."""

    token: str = field(repr=False)


@dataclass(frozen=True)
class DicomWebNode:
    """A DICOMweb service root (PS3.18 8.2), e.g. ``https://pacs/dicom-web``.

    Parameters
    ----------
    url
        Base URL of the service (``http`` or ``https``, no credentials in it).
    auth
        Basic credentials, a bearer token, or ``None``.
    verify
        TLS verification: ``True`` (system CAs), a CA bundle path, or ``False``.
    timeout_s
        Per-request connect/read timeout.
    """

    url: str
    auth: BasicAuth | BearerToken | None = None
    verify: bool | str = True
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("DICOMweb URL must be http(s)://host[:port]/path")
        if parts.username or parts.password:
            raise ValueError("put DICOMweb credentials in auth=, not in the URL")
        object.__setattr__(self, "url", self.url.rstrip("/"))


@dataclass(frozen=True)
class StowOutcome:
    """One instance's STOW-RS outcome (PS3.18 Table 10.5.3-1).

    ``failure_reason`` is FailureReason (0008,1197), a DIMSE-style status such as 0xC000;
    ``warning_reason`` is WarningReason (0008,1196) for stored instances.
    """

    sop_instance_uid: str
    stored: bool
    failure_reason: int | None = None
    warning_reason: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class StowResult:
    """Per-instance outcomes of one STOW-RS request and its HTTP status."""

    http_status: int
    outcomes: tuple[StowOutcome, ...]

    @property
    def ok(self) -> bool:
        """Every instance stored."""
        return all(o.stored for o in self.outcomes)


#: What dicomweb-client asks for with every QIDO-RS / metadata request. PS3.18 8.7.3 lets a
#: client list several types, but Orthanc's DICOMweb plugin compares the header as one string
#: and logs "Unsupported return MIME type" for each such request.
_JSON_ACCEPT_LIST: Final = "application/dicom+json, application/json"


class _SingleJsonAccept(requests.adapters.HTTPAdapter):
    """Send ``Accept: application/dicom+json`` (the QIDO-RS media type, PS3.18 10.6.3.2)
    where dicomweb-client would send a list of JSON types; other requests pass unchanged."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        if request.headers.get("Accept") == _JSON_ACCEPT_LIST:
            request.headers["Accept"] = "application/dicom+json"
        return super().send(request, *args, **kwargs)


class DicomWebClient:
    """QIDO-RS / WADO-RS / STOW-RS against one :class:`DicomWebNode`. Use as a context manager.

    Parameters
    ----------
    node
        The service.
    session
        A prepared :class:`requests.Session` (tests, proxies); one is made otherwise.
    """

    def __init__(self, node: DicomWebNode, *, session: requests.Session | None = None):
        self.node = node
        self._session = session or requests.Session()
        self._session.verify = node.verify
        for scheme in ("http://", "https://"):
            self._session.mount(scheme, _SingleJsonAccept())
        if isinstance(node.auth, BasicAuth):
            self._session.auth = (node.auth.username, node.auth.password)
        elif isinstance(node.auth, BearerToken):
            self._session.headers["Authorization"] = f"Bearer {node.auth.token}"
        self._client = DICOMwebClient(node.url, session=self._session, timeout=node.timeout_s)
        self._client.set_http_retry_params(retry=False)

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()

    def __enter__(self) -> DicomWebClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- errors --------------------------------------------------------------------------
    def _http_error(self, what: str, status: int) -> DicomWebError:
        url = self.node.url
        if status in _AUTH_HTTP:
            return DicomWebError(
                f"DICOMweb server at {url} refused the credentials (HTTP {status})",
                transient=False,
                http_status=status,
            )
        return DicomWebError(
            f"DICOMweb {what} at {url} failed with HTTP {status}",
            transient=status in _TRANSIENT_HTTP,
            http_status=status,
        )

    @contextmanager
    def _translate(self, what: str) -> Iterator[None]:
        url = self.node.url
        try:
            yield
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            raise self._http_error(what, status) from exc
        except requests.Timeout as exc:
            raise DicomWebError(
                f"DICOMweb {what} at {url} timed out after {self.node.timeout_s:g} s",
                transient=True,
            ) from exc
        except requests.ConnectionError as exc:
            raise DicomWebError(
                f"could not connect to DICOMweb server at {url} ({type(exc).__name__})",
                transient=True,
            ) from exc

    # -- QIDO-RS -------------------------------------------------------------------------
    def search_studies(
        self,
        *,
        study_uid: str | None = None,
        accession: str | None = None,
        modality: str | None = "CT",
        date_range: tuple[date, date] | None = None,
        limit: int | None = None,
    ) -> list[StudyMatch]:
        """QIDO-RS SearchForStudies (PS3.18 10.6, 8.3.4 matching), no patient fields."""
        filters: dict[str, Any] = {}
        if study_uid:
            filters["StudyInstanceUID"] = study_uid
        if accession:
            filters["AccessionNumber"] = accession
        if modality:
            filters["ModalitiesInStudy"] = modality
        if date_range:
            start, end = date_range
            if end < start:
                raise ValueError(f"date range ends ({end}) before it starts ({start})")
            filters["StudyDate"] = f"{start:%Y%m%d}-{end:%Y%m%d}"
        with self._translate("QIDO-RS study search"):
            items = self._client.search_for_studies(
                search_filters=filters, fields=list(_STUDY_FIELDS), limit=limit
            )
        matches = [StudyMatch.from_dataset(Dataset.from_json(i)) for i in items]
        LOGGER.info("QIDO-RS studies at %s: %d match(es)", self.node.url, len(matches))
        return matches

    def search_series(self, study_uid: str, *, modality: str | None = None) -> list[SeriesMatch]:
        """QIDO-RS SearchForSeries within one study (PS3.18 10.6)."""
        filters: dict[str, Any] = {"Modality": modality} if modality else {}
        with self._translate("QIDO-RS series search"):
            items = self._client.search_for_series(
                study_instance_uid=study_uid, search_filters=filters, fields=list(_SERIES_FIELDS)
            )
        matches = [SeriesMatch.from_dataset(Dataset.from_json(i), study_uid) for i in items]
        LOGGER.info("QIDO-RS series of study %s: %d series", study_uid, len(matches))
        return matches

    # -- WADO-RS -------------------------------------------------------------------------
    def retrieve_series(self, study_uid: str, series_uid: str, dest_dir: Path) -> list[Path]:
        """WADO-RS RetrieveSeries (PS3.18 10.4) into ``dest_dir`` as ``<SOPInstanceUID>.dcm``.

        Each instance is written atomically and fsynced as it arrives; if the transfer
        breaks, the files already written stay and the error says how many.
        """
        dest_dir.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        try:
            with self._translate("WADO-RS series retrieve"):
                for ds in self._client.iter_series(study_uid, series_uid):
                    buf = io.BytesIO()
                    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
                    written.append(
                        write_instance_bytes(dest_dir, str(ds.SOPInstanceUID), buf.getvalue())
                    )
        except DicomWebError as exc:
            if written:
                exc.args = (f"{exc.args[0]} ({len(written)} instance(s) received and kept)",)
            raise
        LOGGER.info("WADO-RS series %s: %d instance(s) written", series_uid, len(written))
        return written

    # -- STOW-RS -------------------------------------------------------------------------
    def store(self, items: Sequence[Path | Dataset], *, batch_size: int = 32) -> StowResult:
        """STOW-RS StoreInstances (PS3.18 10.5), ``batch_size`` instances per request.

        A file is sent as it is on disk (a PS3.10 file is what ``application/dicom`` means),
        so a large SEG is not decoded and re-encoded on the way out; a dataset is encoded
        once. Returns per-instance outcomes parsed from the response (also for HTTP 400/409,
        whose bodies list the failures). An instance the server neither referenced nor
        listed as failed is reported not stored.

        Raises
        ------
        DicomWebError
            Credentials refused, network error, timeout, or an HTTP error without a
            usable STOW-RS response body.
        """
        outcomes: list[StowOutcome] = []
        http_status = 200
        for start in range(0, len(items), batch_size):
            batch = [_part10(i) for i in items[start : start + batch_size]]
            status, response = self._stow_batch([data for _, data in batch])
            http_status = max(http_status, status)
            outcomes += _outcomes([uid for uid, _ in batch], response)
        failed = sum(not o.stored for o in outcomes)
        LOGGER.info(
            "STOW-RS to %s: %d stored, %d failed", self.node.url, len(outcomes) - failed, failed
        )
        return StowResult(http_status=http_status, outcomes=tuple(outcomes))

    def _stow_batch(self, parts: Sequence[bytes]) -> tuple[int, Dataset]:
        boundary = uuid.uuid4().hex
        head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body = b"".join(head + data + b"\r\n" for data in parts) + f"--{boundary}--\r\n".encode()
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        }
        with self._translate("STOW-RS store"):
            response = self._session.post(
                f"{self.node.url.rstrip('/')}/studies",
                data=body,
                headers=headers,
                timeout=self.node.timeout_s,
            )
            if response.status_code >= 400:
                failure = _stow_body(response)
                if failure is None:
                    response.raise_for_status()
                    raise AssertionError("unreachable")  # pragma: no cover
                return response.status_code, failure
            if not response.content:
                return response.status_code, Dataset()
            try:
                return response.status_code, Dataset.from_json(response.json())
            except (ValueError, TypeError, KeyError) as exc:
                raise DicomWebError(
                    f"DICOMweb STOW-RS store at {self.node.url}: unreadable response ({exc})",
                    transient=False,
                    http_status=response.status_code,
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover


def _part10(item: Path | Dataset) -> tuple[str, bytes]:
    """``(SOPInstanceUID, PS3.10 bytes)`` of a file (as stored) or a dataset (encoded)."""
    if isinstance(item, Path):
        return read_file_meta(item).sop_instance_uid, item.read_bytes()
    with io.BytesIO() as buf:
        pydicom.dcmwrite(buf, item)
        return str(item.get("SOPInstanceUID", "")), buf.getvalue()


def _stow_body(response: requests.Response | None) -> Dataset | None:
    """The STOW-RS response dataset of an HTTP error, when the server sent one."""
    if response is None or response.status_code in _AUTH_HTTP:
        return None
    if response.status_code in _TRANSIENT_HTTP:
        return None
    try:
        payload = response.json()
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    try:
        ds = Dataset.from_json(payload)
    except (ValueError, TypeError, KeyError):
        return None
    if "FailedSOPSequence" not in ds and "ReferencedSOPSequence" not in ds:
        return None
    return ds


def _outcomes(uids: Sequence[str], response: Dataset) -> list[StowOutcome]:
    stored: dict[str, int | None] = {}
    for item in response.get("ReferencedSOPSequence", []):
        uid = str(item.get("ReferencedSOPInstanceUID", ""))
        warning = item.get("WarningReason")
        stored[uid] = None if warning is None else int(warning)
    failed: dict[str, int | None] = {}
    for item in response.get("FailedSOPSequence", []):
        uid = str(item.get("ReferencedSOPInstanceUID", ""))
        reason = item.get("FailureReason")
        failed[uid] = None if reason is None else int(reason)
    out: list[StowOutcome] = []
    for uid in uids:
        if uid in failed:
            reason = failed[uid]
            text = "" if reason is None else f"FailureReason 0x{reason:04X}"
            out.append(StowOutcome(uid, stored=False, failure_reason=reason, detail=text))
        elif uid in stored:
            out.append(StowOutcome(uid, stored=True, warning_reason=stored[uid]))
        else:
            out.append(
                StowOutcome(uid, stored=False, detail="not acknowledged in the STOW-RS response")
            )
    return out
