"""Identifiers of a stored DICOM file (PS3.10) without decoding its dataset.

Delivery sends result files as they are on disk (C-STORE streamed, STOW-RS as the file's
bytes); both need the SOP Class, SOP Instance and Transfer Syntax UIDs up front.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import ImplicitVRLittleEndian

__all__ = ["FileMeta", "read_file_meta"]


@dataclass(frozen=True, slots=True)
class FileMeta:
    """The identifiers delivery needs of one file."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


def read_file_meta(path: Path) -> FileMeta:
    """From the File Meta Information; from the dataset header when that lacks them."""
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
        return FileMeta(
            str(meta.MediaStorageSOPClassUID),
            str(meta.MediaStorageSOPInstanceUID),
            str(meta.TransferSyntaxUID),
        )
    except (AttributeError, InvalidDicomError):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return FileMeta(
            str(ds.SOPClassUID),
            str(ds.SOPInstanceUID),
            str(ds.file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian)),
        )
