"""Is one received CT image usable on its own? The listener's check before it acknowledges.

A series is analysed from every instance spooled for it, so one instance that can never be
loaded (no Pixel Data, pixels cut short, a matrix of 65535 x 65535, no position) would make
the whole series decline, and resending the good images would not help. The Storage SCP
therefore refuses such an instance with a failure status instead of acknowledging it
(PS3.4 B.2.3); the sender sees the reason in the ErrorComment and the instance never enters
the spool. A later, good copy of the same SOP Instance UID is then stored as usual.

Only what one instance shows by itself is checked: the Type 1 attributes of the CT Image
IOD (PS3.3 A.3) that loading needs (Image Pixel Module C.7.6.3, Image Plane Module C.7.6.2,
CT Image Module C.8.2.1: rescale) and that the pixel data decode to Rows x Columns
(:mod:`.load` applies the same limits). What depends on the other instances (a slice at the
wrong place, another patient, another matrix size) is left to loading and selection, which
decline the series with a reason; a corrected re-send of such an instance replaces it.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from typing import Final

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from ct_triage.dicom_bridge.load import MAX_FIELD_OF_VIEW_MM, MAX_MATRIX, PIXEL_SPACING_RANGE_MM

__all__ = [
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS",
    "Refusal",
    "check_ct_image",
]

#: Error: Data Set does not match SOP Class (PS3.4 B.2.3, A9xx): a required attribute of
#: the IOD is missing or has a value no CT image has.
STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900
#: Error: Cannot understand (PS3.4 B.2.3, Cxxx): the pixel data do not decode.
STATUS_CANNOT_UNDERSTAND: Final = 0xC000

#: Largest distance of a direction cosine vector from unit length (PS3.3 C.7.6.2.1.1).
_UNIT_TOL: Final = 0.01
#: Largest |cos| between the row and column directions (they are orthogonal).
_ORTHOGONAL_TOL: Final = 0.01
#: UID syntax (PS3.5 9.1): digits and dots, no empty component, at most 64 characters.
_UID_SYNTAX: Final = re.compile(r"[0-9]+(?:\.[0-9]+)*")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an instance is refused, and the C-STORE status that says so.

    Parameters
    ----------
    status
        :data:`STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS` or :data:`STATUS_CANNOT_UNDERSTAND`.
    reason
        One short line, no patient data; the first 64 characters go into the
        ErrorComment (0000,0902) of the response (LO, PS3.7 C.4).
    """

    status: int
    reason: str

    @property
    def error_comment(self) -> str:
        """The reason cut to the 64 characters of an LO value."""
        return self.reason[:64]


def _floats(ds: Dataset, keyword: str, count: int) -> list[float] | None:
    """The element's values as finite floats, or ``None`` when absent, short or invalid."""
    value = ds.get(keyword)
    if value is None:
        return None
    items = [value] if isinstance(value, (str, int, float)) else list(value)
    try:
        out = [float(v) for v in items]
    except (TypeError, ValueError):
        return None
    if len(out) != count or not all(math.isfinite(v) for v in out):
        return None
    return out


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "" or isinstance(value, (list, tuple)):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _invalid(reason: str) -> Refusal:
    return Refusal(STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS, reason)


def _check_pixel_module(ds: Dataset) -> Refusal | None:
    """Image Pixel Module (PS3.3 C.7.6.3) as the CT Image Module constrains it (C.8.2.1)."""
    if "PixelData" not in ds:
        return _invalid("no Pixel Data (7FE0,0010)")
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if rows is None or cols is None:
        return _invalid("no valid Rows/Columns")
    if not (1 <= rows <= MAX_MATRIX and 1 <= cols <= MAX_MATRIX):
        return _invalid(f"image of {rows}x{cols} pixels (at most {MAX_MATRIX})")
    if _int(ds, "SamplesPerPixel") != 1:
        return _invalid("SamplesPerPixel is not 1")
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric != "MONOCHROME2":  # MONOCHROME1 is a CT's too, but loading declines it
        return _invalid("PhotometricInterpretation is not MONOCHROME2")
    bits, stored = _int(ds, "BitsAllocated"), _int(ds, "BitsStored")
    if bits not in (8, 16, 32) or stored is None or not 1 <= stored <= bits:
        return _invalid("no valid BitsAllocated/BitsStored")
    if _int(ds, "PixelRepresentation") not in (0, 1):
        return _invalid("no valid PixelRepresentation")
    if _int(ds, "NumberOfFrames") not in (None, 1):
        return _invalid("more than one frame in a CT Image")
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is not None and not syntax.is_compressed:
        expected = rows * cols * bits // 8  # native: PS3.5 8.1.1, padded to an even length
        if len(ds.PixelData) not in (expected, expected + 1):
            return _invalid(f"Pixel Data of {len(ds.PixelData)} bytes, not {expected}")
    return None


def _check_identity(ds: Dataset) -> Refusal | None:
    """Modality, ImageType and Frame of Reference (PS3.3 C.7.3.1, C.8.2.1, C.7.4.1)."""
    if str(ds.get("Modality", "") or "").strip() != "CT":
        return _invalid("Modality is not CT")
    image_type = ds.get("ImageType")
    values = [image_type] if isinstance(image_type, str) else list(image_type or [])
    if len(values) < 2 or not all(str(v).strip() for v in values[:2]):
        return _invalid("no valid ImageType (at least two values)")
    frame = str(ds.get("FrameOfReferenceUID", "") or "")
    if len(frame) > 64 or not _UID_SYNTAX.fullmatch(frame):
        return _invalid("no valid FrameOfReferenceUID")
    return None


def _check_plane_module(ds: Dataset, rows: int, cols: int) -> Refusal | None:
    """Image Plane Module (PS3.3 C.7.6.2): spacing, orientation, position."""
    spacing = _floats(ds, "PixelSpacing", 2)
    lo, hi = PIXEL_SPACING_RANGE_MM
    if spacing is None or not all(lo <= v <= hi for v in spacing):
        return _invalid(f"no valid PixelSpacing ({lo:g} to {hi:g} mm)")
    if max(rows * spacing[0], cols * spacing[1]) > MAX_FIELD_OF_VIEW_MM:
        return _invalid(f"field of view over {MAX_FIELD_OF_VIEW_MM:.0f} mm")
    iop = _floats(ds, "ImageOrientationPatient", 6)
    if iop is None:
        return _invalid("no valid ImageOrientationPatient")
    row, col = np.asarray(iop[:3]), np.asarray(iop[3:])
    if (
        abs(float(np.linalg.norm(row)) - 1.0) > _UNIT_TOL
        or abs(float(np.linalg.norm(col)) - 1.0) > _UNIT_TOL
        or abs(float(row @ col)) > _ORTHOGONAL_TOL
    ):
        return _invalid("ImageOrientationPatient is not two orthogonal unit vectors")
    if _floats(ds, "ImagePositionPatient", 3) is None:
        return _invalid("no valid ImagePositionPatient")
    return None


def _check_rescale(ds: Dataset) -> Refusal | None:
    """CT Image Module (PS3.3 C.8.2.1): RescaleSlope/Intercept finite, slope not zero."""
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        if keyword not in ds or ds[keyword].value in (None, ""):
            continue  # Type 1, but loading reads absent values as 1 and 0
        value = _floats(ds, keyword, 1)
        if value is None or (keyword == "RescaleSlope" and value[0] == 0.0):
            return _invalid(f"no valid {keyword}")
    return None


def _check_pixels(ds: Dataset, rows: int, cols: int) -> Refusal | None:
    """The pixel data decode (native or encapsulated, PS3.5 8) to ``rows x cols``."""
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # decoder plugins raise many types
        detail = str(exc).split(" - ")[0].strip().splitlines()[0] if str(exc) else ""
        return Refusal(
            STATUS_CANNOT_UNDERSTAND,
            f"pixel data truncated or corrupt ({type(exc).__name__}: {detail})"[:200],
        )
    if pixels.shape != (rows, cols):
        return Refusal(
            STATUS_CANNOT_UNDERSTAND,
            f"pixel data decode to {pixels.shape}, not ({rows}, {cols})",
        )
    return None


def check_ct_image(data: bytes) -> Refusal | None:
    """Check that one CT Image Storage instance can be loaded on its own.

    Parameters
    ----------
    data
        The Part 10 encoded instance (``event.encoded_dataset()``), header already valid
        (:func:`~.spool.read_instance_header`).

    Returns
    -------
    Refusal or None
        ``None`` when the instance is usable, else the status and reason to answer with.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        refusal = _check_pixel_module(ds)
        if refusal is not None:
            return refusal
        rows, cols = int(ds.Rows), int(ds.Columns)
        return (
            _check_identity(ds)
            or _check_plane_module(ds, rows, cols)
            or _check_rescale(ds)
            or _check_pixels(ds, rows, cols)
        )
    except Exception as exc:  # pydicom raises many types on a corrupt body
        return Refusal(STATUS_CANNOT_UNDERSTAND, f"data set does not decode ({type(exc).__name__})")
