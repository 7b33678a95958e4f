"""DICOM files (PS3.10): their identifiers without decoding the dataset, and a fast writer.

Delivery sends result files as they are on disk (C-STORE streamed, STOW-RS as the file's
bytes); both need the SOP Class, SOP Instance and Transfer Syntax UIDs up front
(:func:`read_file_meta`). The writers save their results with :func:`save_dataset`, which
writes the bytes ``Dataset.save_as`` writes, several times faster for the thousand
per-frame functional group items of a SEG.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pydicom
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, dcmwrite, write_data_element
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

__all__ = ["FileMeta", "dataset_offset", "read_file_meta", "save_dataset"]


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


# -- writing ---------------------------------------------------------------------------------
#
# pydicom's writer spends ~25 us per data element in Python; a SEG of 300 slices has ~1 000
# per-frame functional group items of ~20 elements each (0.6 s). The encoder below writes the
# same bytes for the value representations those items use (explicit VR little endian,
# defined-length sequences and items, as pydicom writes them) and hands every other element
# to pydicom's own element writer, so the file is byte-for-byte what ``save_as`` writes
# (tested on SEG, SR and overlay instances).

#: VRs with a 2-byte reserved field and a 4-byte length in explicit VR (PS3.5 7.1.2).
_LONG_VRS: Final = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
#: Text VRs padded with a space; UI is padded with NUL.
_TEXT_VRS: Final = frozenset(
    {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UR", "UT"}
)
_NUMBER_STRING_VRS: Final = frozenset({"DS", "IS"})
_BINARY_FORMATS: Final = {"US": "H", "UL": "I", "SS": "h", "SL": "l", "FD": "d", "FL": "f"}
_ITEM: Final = struct.pack("<HH", 0xFFFE, 0xE000)


def _header(tag: int, vr: str, length: int) -> bytes:
    if vr in _LONG_VRS:
        return struct.pack("<HH2s2xI", tag >> 16, tag & 0xFFFF, vr.encode(), length)
    if length > 0xFFFF:
        raise ValueError(f"value of {vr} element {tag:08X} too long for a 2-byte length")
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), length)


def _strings(value: object) -> str | None:
    """``value`` as pydicom writes a string VR, or None when it is not plain strings."""
    if isinstance(value, str):
        return value
    if isinstance(value, MultiValue | list | tuple) and all(isinstance(v, str) for v in value):
        return "\\".join(value)
    return None


def _number_strings(value: object) -> str:
    """DS / IS values as pydicom writes them (the original string when there is one)."""
    values = value if isinstance(value, MultiValue | list | tuple) else (value,)
    return "\\".join(v.original_string if hasattr(v, "original_string") else str(v) for v in values)


def _value_bytes(elem: DataElement) -> bytes | None:
    """The encoded value of a non-sequence element, or None to let pydicom write it."""
    vr, value = elem.VR, elem.value
    if value is None or (isinstance(value, str | bytes | MultiValue | list) and len(value) == 0):
        return b""
    if vr == "UI" or vr in _TEXT_VRS or vr in _NUMBER_STRING_VRS:
        text = _number_strings(value) if vr in _NUMBER_STRING_VRS else _strings(value)
        if text is None or not text.isascii():
            return None  # dates as objects, character sets: pydicom's job
        raw = text.encode("ascii")
        if len(raw) % 2:
            raw += b"\0" if vr == "UI" else b" "
        return raw
    fmt = _BINARY_FORMATS.get(vr)
    if fmt is not None:
        values = value if isinstance(value, MultiValue | list | tuple) else (value,)
        return struct.pack(f"<{len(values)}{fmt}", *values)
    if vr in ("OB", "OW") and isinstance(value, bytes):
        return value + b"\0" if len(value) % 2 else value
    return None


def _encode_dataset(ds: Dataset, encodings: list[str]) -> bytes:
    """Explicit VR little endian encoding of the elements of ``ds`` (no file meta)."""
    parts: list[bytes] = []
    for elem in ds:
        if elem.tag.group == 0x0002 or (elem.tag.element == 0 and elem.tag.group > 6):
            continue  # file meta is written apart; retired group lengths are not written
        if elem.VR == "SQ" and not elem.is_undefined_length:
            # an item with its own character set or of undefined length (as read from a
            # file): the whole sequence goes to pydicom
            if not any(
                "SpecificCharacterSet" in item
                or getattr(item, "is_undefined_length_sequence_item", False)
                for item in elem.value
            ):
                items = []
                for item in elem.value:
                    body = _encode_dataset(item, encodings)
                    items.append(_ITEM + struct.pack("<I", len(body)) + body)
                value = b"".join(items)
                parts.append(_header(elem.tag, "SQ", len(value)))
                parts.append(value)
                continue
        elif not elem.is_undefined_length and elem.VR != "PN":
            raw = _value_bytes(elem)
            if raw is not None:
                parts.append(_header(elem.tag, elem.VR, len(raw)))
                parts.append(raw)
                continue
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_data_element(fp, elem, encodings)
        parts.append(fp.getvalue())
    return b"".join(parts)


def save_dataset(ds: Dataset, path: Path) -> None:
    """Write ``ds`` as a PS3.10 file, as ``ds.save_as(path, enforce_file_format=True)`` would.

    Explicit VR Little Endian datasets are encoded by this module's fast element encoder
    (same bytes); any other transfer syntax goes to pydicom unchanged.
    """
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax != ExplicitVRLittleEndian:
        ds.save_as(path, enforce_file_format=True)
        return
    # preamble and File Meta Information exactly as pydicom writes them for this dataset
    head = Dataset()
    head.file_meta = ds.file_meta
    head.SOPClassUID = ds.SOPClassUID
    head.SOPInstanceUID = ds.SOPInstanceUID
    fp = DicomBytesIO()
    dcmwrite(fp, head, enforce_file_format=True)
    meta = fp.getvalue()
    # ... minus the two elements written for the meta check; the whole dataset follows
    meta = meta[: dataset_offset(meta)]
    correct_ambiguous_vr(ds, is_little_endian=True)  # "OB or OW" and the like, as pydicom does
    encodings = convert_encodings(ds.get("SpecificCharacterSet", "ISO_IR 6"))
    body = _encode_dataset(ds, encodings)
    with open(path, "wb") as out:
        out.write(meta)
        out.write(body)


def dataset_offset(data: bytes) -> int:
    """Where the data set starts in PS3.10 bytes: after the File Meta Information.

    0 when ``data`` has no preamble + ``DICM`` prefix or its meta group does not start with
    the explicit-VR group length (0002,0000) UL.
    """
    if data[128:132] != b"DICM" or data[132:136] != b"\x02\x00\x00\x00":
        return 0
    if data[136:138] == b"UL":
        (length,) = struct.unpack_from("<I", data, 140)
        return 128 + 4 + 12 + int(length)
    return 0
