"""Received instances on disk: one Part 10 file per SOP Instance UID, written durably.

Shared by the two ways we fetch images from a PACS, C-GET
(:mod:`ct_triage.dicom_bridge.retrieve`) and WADO-RS (:mod:`ct_triage.dicom_bridge.dicomweb`):
both name a file after the instance's SOP Instance UID, so the UID is checked (PS3.5 9.1)
before it becomes a file name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from ct_triage.models.durable import write_durably

__all__ = ["check_uid", "write_instance_bytes"]

_UID_RE: Final = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def check_uid(uid: str, what: str) -> str:
    """Return ``uid`` when it is a valid DICOM UID (PS3.5 9.1), else raise ``ValueError``.

    Parameters
    ----------
    uid
        The UID: digits and dots, no empty component, at most 64 characters.
    what
        Its name for the error message ("StudyInstanceUID", ...).
    """
    if not _UID_RE.match(uid) or len(uid) > 64:
        raise ValueError(f"{what} {uid!r} is not a valid DICOM UID (PS3.5 9.1)")
    return uid


def write_instance_bytes(dest_dir: Path, sop_instance_uid: str, data: bytes) -> Path:
    """Write one Part 10 file as ``<SOPInstanceUID>.dcm`` atomically and durably.

    The bytes go to a temporary file in ``dest_dir``, are fsynced, renamed into place and
    the directory entry is fsynced (:func:`ct_triage.models.durable.write_durably`), so a file
    that exists is complete.
    """
    check_uid(sop_instance_uid, "SOP Instance UID")
    final = dest_dir / f"{sop_instance_uid}.dcm"
    write_durably(final, data, tmp_prefix=".incoming-", tmp_suffix=".part")
    return final
