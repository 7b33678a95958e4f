"""Retract superseded results from the PACS (a late instance re-ran the series).

When a late instance re-opens a series that was analysed and delivered, the new SEG, SR and
overlay get new SOP Instance UIDs, and the new SR names the old one in its
PredecessorDocumentsSequence (PS3.3 C.17.2). A PACS keeps both, though, and the radiologist
sees two results. What each PACS lets us do about it:

* **Orthanc**: its REST API deletes a series (``POST /tools/lookup`` with the
  SeriesInstanceUID, then ``DELETE /series/{id}``) -- :class:`OrthancRetractor`. Its
  DICOMweb plugin has no DELETE.
* **DICOMweb DELETE** (``DELETE {root}/studies/{study}/series/{series}``): not part of
  PS3.18, but offered by the Google Cloud Healthcare API, the Azure DICOM service and
  others -- :class:`DicomWebRetractor`.
* **Enterprise PACS / VNA** (dcm4chee-arc, most vendors): IHE IOCM -- a Key Object
  Selection "Rejected for Quality Reasons" (DCM 113001) sent by C-STORE hides the listed
  instances. Not implemented here; with such a PACS the old objects stay, and the new SR's
  predecessor reference and newer series say which one counts.

Nothing here deletes what we did not write: the bridge only names the series of our own
earlier result (from its ``report.json``), and only after the new result was delivered.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import requests

from ct_triage.dicom_bridge.dicomweb import BasicAuth, BearerToken, DicomWebError, DicomWebNode

__all__ = ["DicomWebRetractor", "OrthancRetractor", "Retractor", "parse_retract_target"]

LOGGER = logging.getLogger(__name__)

_TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})


class Retractor(Protocol):
    """Deletes whole series of our own earlier results from one PACS."""

    def retract_series(self, study_uid: str, series_uids: Sequence[str]) -> int:
        """Delete the series (already absent ones are fine); returns how many were deleted.

        Raises
        ------
        DicomWebError
            The PACS refused (``transient=False``) or could not be reached (``transient``).
        """
        ...


def _session(node: DicomWebNode) -> requests.Session:
    session = requests.Session()
    session.verify = node.verify
    if isinstance(node.auth, BasicAuth):
        session.auth = (node.auth.username, node.auth.password)
    elif isinstance(node.auth, BearerToken):
        session.headers["Authorization"] = f"Bearer {node.auth.token}"
    return session


def _check(node: DicomWebNode, what: str, response: requests.Response) -> None:
    code = response.status_code
    if code < 300 or code == 404:
        return
    raise DicomWebError(
        f"{what} at {node.url} answered HTTP {code}",
        transient=code in _TRANSIENT_HTTP,
        http_status=code,
    )


def _request(
    node: DicomWebNode, session: requests.Session, method: str, url: str, what: str, **kw: object
) -> requests.Response:
    try:
        response = session.request(method, url, timeout=node.timeout_s, **kw)  # type: ignore[arg-type]
    except requests.RequestException as exc:
        raise DicomWebError(
            f"{what} at {node.url} failed: {type(exc).__name__}", transient=True
        ) from exc
    _check(node, what, response)
    return response


class OrthancRetractor:
    """Delete series through Orthanc's REST API (``node.url`` is Orthanc's root URL)."""

    def __init__(self, node: DicomWebNode) -> None:
        self.node = node

    def __repr__(self) -> str:
        return f"OrthancRetractor({self.node.url})"

    def retract_series(self, study_uid: str, series_uids: Sequence[str]) -> int:
        deleted = 0
        with _session(self.node) as session:
            for uid in series_uids:
                found = _request(
                    self.node,
                    session,
                    "POST",
                    f"{self.node.url}/tools/lookup",
                    "Orthanc lookup",
                    data=uid,
                )
                matches = found.json() if found.status_code == 200 else []
                for m in matches:
                    if m.get("Type") != "Series":
                        continue
                    r = _request(
                        self.node,
                        session,
                        "DELETE",
                        f"{self.node.url}/series/{m['ID']}",
                        "Orthanc delete",
                    )
                    deleted += int(r.status_code != 404)
        return deleted


class DicomWebRetractor:
    """Delete series with ``DELETE {root}/studies/{study}/series/{series}``."""

    def __init__(self, node: DicomWebNode) -> None:
        self.node = node

    def __repr__(self) -> str:
        return f"DicomWebRetractor({self.node.url})"

    def retract_series(self, study_uid: str, series_uids: Sequence[str]) -> int:
        deleted = 0
        with _session(self.node) as session:
            for uid in series_uids:
                r = _request(
                    self.node,
                    session,
                    "DELETE",
                    f"{self.node.url}/studies/{study_uid}/series/{uid}",
                    "DICOMweb DELETE",
                )
                deleted += int(r.status_code != 404)
        return deleted


def parse_retract_target(spec: str) -> tuple[str, str]:
    """``"orthanc:URL"`` or ``"dicomweb:URL"`` -> (kind, URL).

    Raises
    ------
    ValueError
        Another prefix, or not an http(s) URL.
    """
    kind, _, url = spec.partition(":")
    if kind not in ("orthanc", "dicomweb"):
        raise ValueError(
            f"retract target {spec!r} must start with 'orthanc:' (Orthanc REST root URL) "
            "or 'dicomweb:' (a DICOMweb root that supports DELETE)"
        )
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"retract target {spec!r}: needs an http(s) URL")
    return kind, url
