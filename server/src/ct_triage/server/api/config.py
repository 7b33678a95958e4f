"""The API's view of the process settings.

:meth:`ApiConfig.from_settings` derives the API's paths and limits from
:class:`~ct_triage.server.settings.Settings` (where every default is), so the rest of the
package sees one frozen, typed object.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ct_triage.dicom_bridge.inputs import ZipLimits
from ct_triage.server.settings import Settings


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """What the HTTP layer needs from the settings.

    Parameters
    ----------
    data_dir
        The working folder.
    uploads_dir
        Where uploads are streamed (``<data_dir>/spool/uploads``).
    tokens_db
        SQLite file of the hashed API tokens (``<data_dir>/api-tokens.db``).
    audit_log
        Append-only JSON-lines audit log (``<data_dir>/audit.jsonl``).
    upload_max_bytes
        Largest request body accepted by ``POST /uploads``.
    zip_limits
        Entry count, expanded size and ratio limits for uploaded zips.
    tls_cert, tls_key
        HTTPS certificate and key (PEM); both or neither.
    pacs_configured
        Whether a PACS (DIMSE or DICOMweb) is configured (readiness checks it).
    viewer_url_template
        Link from the worklist into the site's viewer (``{study}``, ``{accession}``), or None.
    """

    data_dir: Path
    uploads_dir: Path
    tokens_db: Path
    audit_log: Path
    upload_max_bytes: int
    zip_limits: ZipLimits
    tls_cert: Path | None
    tls_key: Path | None
    pacs_configured: bool
    viewer_url_template: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiConfig:
        """The API fields of ``settings``; the files live under ``data_dir``."""
        data = Path(settings.data_dir)
        return cls(
            data_dir=data,
            uploads_dir=data / "spool" / "uploads",
            tokens_db=data / "api-tokens.db",
            audit_log=data / "audit.jsonl",
            upload_max_bytes=settings.upload_max_bytes,
            zip_limits=ZipLimits(
                max_entries=settings.upload_zip_max_entries,
                max_total_bytes=settings.upload_zip_max_total_bytes,
                max_ratio=settings.upload_zip_max_ratio,
                ratio_min_bytes=ZipLimits().ratio_min_bytes,
            ),
            tls_cert=settings.http_tls_cert,
            tls_key=settings.http_tls_key,
            pacs_configured=bool(settings.pacs or settings.pacs_dicomweb_url),
            viewer_url_template=settings.viewer_url_template,
        )
