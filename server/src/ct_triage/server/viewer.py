"""Links into the site's image viewer (``CT_TRIAGE_VIEWER_URL_TEMPLATE``).

A template is an ``http(s)://`` URL, or a path on this server (``/...``), holding
``{study}`` (the StudyInstanceUID) and/or ``{accession}`` (the AccessionNumber), e.g. OHIF's
``http://pacs/ohif/viewer?StudyInstanceUIDs={study}``. Values are percent-encoded before they
are put in, so an accession number cannot change the link's meaning.
"""

from __future__ import annotations

import string
from urllib.parse import quote

__all__ = ["PLACEHOLDERS", "check_viewer_template", "viewer_url"]

#: The fields a template may use.
PLACEHOLDERS = frozenset({"study", "accession"})


def check_viewer_template(template: str) -> str:
    """Validate a viewer URL template; return it unchanged.

    Raises
    ------
    ValueError
        Not an http(s) URL or a path, an unknown or malformed ``{field}``, or no field at all.
    """
    if not template.startswith(("http://", "https://", "/")):
        raise ValueError(f"viewer URL template {template!r} must start with http://, https:// or /")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ValueError(f"viewer URL template {template!r}: {exc}") from exc
    unknown = fields - PLACEHOLDERS
    if unknown:
        raise ValueError(
            f"viewer URL template {template!r}: unknown field(s) {sorted(unknown)}; "
            "use {study} and/or {accession}"
        )
    if not fields:
        raise ValueError(f"viewer URL template {template!r} needs {{study}} or {{accession}}")
    return template


def viewer_url(template: str | None, *, study_uid: str | None, accession: str | None) -> str | None:
    """The viewer link of a study; ``None`` without a template or without the values it needs."""
    if not template:
        return None
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    values = {"study": study_uid or "", "accession": accession or ""}
    if any(not values[f] for f in fields):
        return None
    return template.format(**{k: quote(v, safe="") for k, v in values.items()})
