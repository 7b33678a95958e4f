"""The API's view of the process settings.

Fields the API needs that :class:`~ct_triage.server.settings.Settings` may not declare yet are
read with ``getattr`` and a default, in this one place, so the rest of the package sees one
frozen, typed object.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ct_triage.dicom_bridge.inputs import ZipLimits
from ct_triage.server.settings import Settings

#: Default upload size limit (one CT study is rarely above 1 GiB; a zip is smaller).
DEFAULT_UPLOAD_MAX_BYTES = 2 * 1024**3


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
        """Read the API fields of ``settings`` (with defaults for fields not declared yet)."""
        data = Path(settings.data_dir)
        uploads = getattr(settings, "uploads_dir", None) or data / "spool" / "uploads"
        cert = getattr(settings, "http_tls_cert", None)
        key = getattr(settings, "http_tls_key", None)
        max_bytes = int(getattr(settings, "upload_max_bytes", DEFAULT_UPLOAD_MAX_BYTES))
        defaults = ZipLimits()
        zip_limits = ZipLimits(
            max_entries=int(getattr(settings, "upload_zip_max_entries", defaults.max_entries)),
            max_total_bytes=int(
                getattr(settings, "upload_zip_max_total_bytes", defaults.max_total_bytes)
            ),
            max_ratio=float(getattr(settings, "upload_zip_max_ratio", defaults.max_ratio)),
            ratio_min_bytes=defaults.ratio_min_bytes,
        )
        return cls(
            data_dir=data,
            uploads_dir=Path(uploads),
            tokens_db=Path(getattr(settings, "api_tokens_db", None) or data / "api-tokens.db"),
            audit_log=Path(getattr(settings, "audit_log", None) or data / "audit.jsonl"),
            upload_max_bytes=max_bytes,
            zip_limits=zip_limits,
            tls_cert=Path(cert) if cert else None,
            tls_key=Path(key) if key else None,
            pacs_configured=bool(settings.pacs or settings.pacs_dicomweb_url),
            viewer_url_template=getattr(settings, "viewer_url_template", None),
        )
