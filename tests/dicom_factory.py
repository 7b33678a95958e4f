"""Tiny synthetic CT series written with pydicom, for tests.

The pixel content is a deterministic ramp (see :func:`expected_hu`), so a test can compare a
loaded volume voxel for voxel. Geometry follows PS3.3 C.7.6.2 (Image Plane Module): the slice
normal is the cross product of the row and column direction cosines of
ImageOrientationPatient, and ImagePositionPatient is the centre of the first voxel.

Typical use::

    spec = SeriesSpec(n_slices=12, spacing_mm=1.0, kernel="B70f")
    paths = write_series(tmp_path / "ct", spec)
    bad = write_series(tmp_path / "gap", replace(spec, missing=(5,)))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

__all__ = [
    "SeriesSpec",
    "expected_hu",
    "make_slice",
    "write_series",
]

_AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True)
class SeriesSpec:
    """Everything that can vary in a synthetic series (all fields have test-friendly defaults).

    Parameters
    ----------
    n_slices
        Number of slice positions before ``missing`` is applied.
    rows, columns
        Matrix size of each slice.
    pixel_spacing_mm
        PixelSpacing (row spacing, column spacing), PS3.3 C.7.6.2.1.
    spacing_mm
        Distance between slice centres along the normal.
    thickness_mm
        SliceThickness; ``None`` means ``spacing_mm``.
    orientation
        ImageOrientationPatient (row cosines, then column cosines).
    first_position
        ImagePositionPatient of slice 0 (LPS, mm).
    positions_along_normal
        Explicit offsets (mm) of each slice along the normal; overrides ``spacing_mm``.
    tilt_deg
        Gantry tilt: sets GantryDetectorTilt and shears the positions along the column
        direction by ``tan(tilt)`` per mm of table travel, as a tilted acquisition does.
    missing
        Slice indices that are not written (a missing-slice series).
    modality, image_type, kernel, manufacturer, series_number, series_description
        The corresponding DICOM attributes.
    study_uid, series_uid, frame_of_reference_uid
        Fixed UIDs; ``None`` generates fresh ones (per call of :func:`write_series`).
    slope, intercept
        RescaleSlope / RescaleIntercept (PS3.3 C.11.1.1.2); stored = (HU - intercept) / slope.
    pixel_representation
        0 unsigned, 1 two's complement stored values.
    padding_value
        PixelPaddingValue (stored value); if set, a 2x2 block in the top-left corner of
        every slice holds it.
    rle
        Compress with RLE Lossless (pydicom's native encoder).
    photometric
        PhotometricInterpretation.
    with_pixels
        ``False`` writes headers without PixelData.
    file_prefix
        File names are ``{file_prefix}{index:04d}.dcm``, written in reverse order of index.
    """

    n_slices: int = 8
    rows: int = 16
    columns: int = 16
    pixel_spacing_mm: tuple[float, float] = (0.75, 0.75)
    spacing_mm: float = 1.0
    thickness_mm: float | None = None
    orientation: tuple[float, float, float, float, float, float] = _AXIAL
    first_position: tuple[float, float, float] = (-6.0, -6.0, -100.0)
    positions_along_normal: tuple[float, ...] | None = None
    tilt_deg: float = 0.0
    missing: tuple[int, ...] = ()
    modality: str = "CT"
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")
    kernel: str = "STANDARD"
    manufacturer: str = "ACME"
    series_number: int = 2
    series_description: str = "Chest"
    study_uid: str | None = None
    series_uid: str | None = None
    frame_of_reference_uid: str | None = None
    slope: float = 1.0
    intercept: float = -1024.0
    pixel_representation: int = 1
    padding_value: int | None = None
    rle: bool = False
    photometric: str = "MONOCHROME2"
    with_pixels: bool = True
    file_prefix: str = "IM"
    extra: tuple[tuple[str, object], ...] = field(default=())


def expected_hu(spec: SeriesSpec, index: int) -> npt.NDArray[np.int16]:
    """The HU image slice ``index`` is written with (before padding is applied).

    A ramp from about -1000 to +1000 HU that differs for every slice, so a mis-sorted
    volume is detected.
    """
    y, x = np.mgrid[0 : spec.rows, 0 : spec.columns]
    hu: npt.NDArray[np.int64] = ((index * 97 + y * 31 + x * 7) % 2000) - 1000
    return hu.astype(np.int16)


def _normal(orientation: Sequence[float]) -> npt.NDArray[np.float64]:
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:], dtype=np.float64)
    return np.cross(row, col)


def slice_position(spec: SeriesSpec, index: int) -> tuple[float, float, float]:
    """ImagePositionPatient of slice ``index`` (tilt and explicit offsets applied)."""
    if spec.positions_along_normal is not None:
        offset = spec.positions_along_normal[index]
    else:
        offset = index * spec.spacing_mm
    pos = np.asarray(spec.first_position, dtype=np.float64) + offset * _normal(spec.orientation)
    if spec.tilt_deg:
        col = np.asarray(spec.orientation[3:], dtype=np.float64)
        pos = pos + offset * math.tan(math.radians(spec.tilt_deg)) * col
    return (float(pos[0]), float(pos[1]), float(pos[2]))


def make_slice(
    spec: SeriesSpec,
    index: int,
    *,
    study_uid: str,
    series_uid: str,
    frame_of_reference_uid: str,
) -> Dataset:
    """Build the dataset of slice ``index`` of ``spec`` (CT Image IOD, PS3.3 A.3)."""
    sop_class = MRImageStorage if spec.modality == "MR" else CTImageStorage
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop_uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = "Synthetic^Phantom"
    ds.PatientID = "SYNTH-0001"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.Modality = spec.modality
    ds.Manufacturer = spec.manufacturer
    ds.ImageType = list(spec.image_type)
    ds.ConvolutionKernel = spec.kernel
    ds.SeriesNumber = spec.series_number
    ds.SeriesDescription = spec.series_description
    ds.InstanceNumber = index + 1
    ds.SliceThickness = spec.thickness_mm if spec.thickness_mm is not None else spec.spacing_mm
    ds.GantryDetectorTilt = spec.tilt_deg
    ds.ImageOrientationPatient = [float(v) for v in spec.orientation]
    ds.ImagePositionPatient = list(slice_position(spec, index))
    ds.PixelSpacing = list(spec.pixel_spacing_mm)
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = spec.photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = spec.pixel_representation
    ds.RescaleSlope = spec.slope
    ds.RescaleIntercept = spec.intercept
    ds.RescaleType = "HU"
    for keyword, value in spec.extra:
        setattr(ds, keyword, value)
    if spec.padding_value is not None:
        ds.PixelPaddingValue = spec.padding_value
    if spec.with_pixels:
        hu = expected_hu(spec, index).astype(np.float64)
        stored = np.rint((hu - spec.intercept) / spec.slope)
        if spec.padding_value is not None:
            stored[:2, :2] = spec.padding_value
        dtype = np.int16 if spec.pixel_representation else np.uint16
        ds.PixelData = stored.astype(dtype).tobytes()
        if spec.rle:
            ds.compress(RLELossless, encoding_plugin="pydicom")
    return ds


def write_series(folder: Path, spec: SeriesSpec) -> list[Path]:
    """Write ``spec`` as one file per slice under ``folder``; return the paths (index order).

    Missing indices are skipped; files are written in reverse index order so that directory
    order never equals slice order by accident.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = spec.study_uid or generate_uid()
    series_uid = spec.series_uid or generate_uid()
    for_uid = spec.frame_of_reference_uid or generate_uid()
    paths: dict[int, Path] = {}
    for index in reversed(range(spec.n_slices)):
        if index in spec.missing:
            continue
        ds = make_slice(
            spec,
            index,
            study_uid=study_uid,
            series_uid=series_uid,
            frame_of_reference_uid=for_uid,
        )
        path = folder / f"{spec.file_prefix}{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths[index] = path
    return [paths[i] for i in sorted(paths)]
