"""What the spool reads of a received instance: its UIDs, its class and who made it.

Only the header is decoded (no pixel data), and nothing of the patient is kept.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass

import pydicom
from pydicom.uid import (
    Comprehensive3DSRStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from ct_triage.dicom_bridge.part10 import dataset_offset
from ct_triage.models.errors import InvalidInput
from ct_triage.models.identity import PRODUCT_NAME

__all__ = ["IGNORED_SOP_CLASSES", "InstanceHeader", "content_digest", "read_instance_header"]

#: A DICOM UID as we accept it in file names (PS3.5 section 9.1: digits and dots, <= 64).
_UID_RE = re.compile(r"^[0-9.]{1,64}$")

#: SOP Classes of the objects we write (PS3.4 B.5): acknowledged, never analysed.
IGNORED_SOP_CLASSES: frozenset[str] = frozenset(
    {str(SegmentationStorage), str(Comprehensive3DSRStorage), str(SecondaryCaptureImageStorage)}
)


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """The attributes of a received instance the spool needs (no patient data).

    Parameters
    ----------
    sop_class_uid, sop_instance_uid, study_uid, series_uid
        From the data set (PS3.3 C.12.1 SOP Common, C.7.2.1, C.7.3.1).
    transfer_syntax
        From the File Meta Information (PS3.10 7.1), ``""`` if absent.
    manufacturer
        Manufacturer (0008,0070), ``""`` if absent.
    """

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    manufacturer: str

    @property
    def is_own_output(self) -> bool:
        """``True`` for a SEG / SR / SC that chest-ct-triage itself wrote."""
        return self.sop_class_uid in IGNORED_SOP_CLASSES and self.manufacturer == PRODUCT_NAME


def read_instance_header(data: bytes) -> InstanceHeader:
    """Decode the header of a Part 10 encoded instance (PS3.10 section 7).

    Parameters
    ----------
    data
        The instance with preamble, ``DICM`` prefix and File Meta Information, as
        pynetdicom's ``event.encoded_dataset()`` returns it.

    Returns
    -------
    InstanceHeader

    Raises
    ------
    InvalidInput
        The header does not decode, or a required UID is missing or not a valid UID.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        meta = getattr(ds, "file_meta", None)
        header = InstanceHeader(
            sop_class_uid=str(ds.get("SOPClassUID", "") or ""),
            sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
            study_uid=str(ds.get("StudyInstanceUID", "") or ""),
            series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
            transfer_syntax=str(meta.get("TransferSyntaxUID", "") or "") if meta else "",
            manufacturer=str(ds.get("Manufacturer", "") or ""),
        )
    except Exception as exc:  # pydicom raises many types on a corrupt header
        raise InvalidInput(f"data set header does not decode ({type(exc).__name__})") from exc
    for name in ("sop_class_uid", "sop_instance_uid", "study_uid", "series_uid"):
        value = getattr(header, name)
        if not _UID_RE.fullmatch(value):
            raise InvalidInput(f"{name} is missing or not a valid DICOM UID")
    return header


def content_digest(data: bytes) -> str:
    """SHA-256 (hex) of the data set of a Part 10 instance, File Meta Information excluded.

    Two sends of the same instance compare equal even when the File Meta Information differs
    (e.g. another implementation class UID of the sender, PS3.10 7.1).
    """
    return hashlib.sha256(memoryview(data)[dataset_offset(data) :]).hexdigest()
