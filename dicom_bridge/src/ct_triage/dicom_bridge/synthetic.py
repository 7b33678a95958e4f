"""Write a synthetic phantom as a CT Image Storage series (PS3.3 A.3 CT Image IOD).

One file per slice (``CT000001.dcm`` ...), explicit VR little endian, with the Patient,
General Study, Patient Study-free, General Series, Frame of Reference, General Equipment,
General Image, Image Plane, Image Pixel, CT Image, VOI LUT and SOP Common modules.

The pixel encoding follows one of the vendor habits listed in :data:`QUIRKS` (drawn from the
seed unless given); all of them decode to the phantom's HU exactly with a correct reader
(PS3.3 C.11.1.1.2 Modality LUT: ``HU = stored * RescaleSlope + RescaleIntercept``, and
PS3.3 C.7.5.1.1.2 Pixel Padding Value: stored padding values are not image data and must be
shown as air, ``-1024``):

``int16_hu``
    signed, BitsStored 16, intercept 0: stored value = HU; outside the field of view -1024.
``uint16_offset``
    unsigned, BitsStored 12, intercept -1024: stored = HU + 1024; outside the FOV 0.
``pad_2048``
    signed, BitsStored 16, intercept 0, PixelPaddingValue -2048 outside the circular FOV.
``pad_3024``
    GE-like: signed, BitsStored 16, intercept -1024, PixelPaddingValue -2000 (HU -3024)
    outside the circular FOV.

Everything is derived from the seed and the spec (``2.25.`` UIDs from name-based UUIDs of
the seed, the spec and the instance, PS3.5 B.2; fixed dates and times), so the same phantom
written twice gives identical bytes.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from ct_triage.models.errors import TriageError
from ct_triage.models.identity import PRODUCT_NAME, PRODUCT_VERSION
from ct_triage.models.phantom import Phantom

__all__ = ["QUIRKS", "PixelEncoding", "encoding_for", "write_phantom_series"]

logger = logging.getLogger(__name__)

#: Fixed acquisition date and time of every phantom (no wall clock: reproducible bytes).
STUDY_DATE: Final = "20200401"
STUDY_TIME: Final = "101500"


@dataclass(frozen=True, slots=True)
class PixelEncoding:
    """How HU are stored (PS3.3 C.7.6.3 Image Pixel, C.11.1.1.2 Modality LUT).

    Parameters
    ----------
    name
        Quirk name (a key of :data:`QUIRKS`).
    signed
        PixelRepresentation 1 (two's complement) or 0 (unsigned).
    bits_stored
        BitsStored (HighBit is one less).
    intercept
        RescaleIntercept (RescaleSlope is 1).
    padding
        PixelPaddingValue (a *stored* value) written outside the circular field of view, or
        ``None``: no padding, the air value is stored there.
    """

    name: str
    signed: bool
    bits_stored: int
    intercept: int
    padding: int | None

    def stored(
        self, hu: npt.NDArray[np.int16], outside: npt.NDArray[np.bool_]
    ) -> npt.NDArray[np.int16] | npt.NDArray[np.uint16]:
        """Stored pixel values of one slice of HU (``outside``: outside the FOV)."""
        values = hu.astype(np.int32) - self.intercept
        if self.padding is not None:
            values[outside] = self.padding
        lo, hi = (
            (-(1 << (self.bits_stored - 1)), (1 << (self.bits_stored - 1)) - 1)
            if self.signed
            else (0, (1 << self.bits_stored) - 1)
        )
        if values.min() < lo or values.max() > hi:
            raise TriageError(f"HU out of range for the {self.name} pixel encoding")
        if self.signed:
            return values.astype(np.int16)
        return values.astype(np.uint16)


#: The vendor encodings :func:`write_phantom_series` can produce.
QUIRKS: Final[dict[str, PixelEncoding]] = {
    "int16_hu": PixelEncoding("int16_hu", signed=True, bits_stored=16, intercept=0, padding=None),
    "uint16_offset": PixelEncoding(
        "uint16_offset", signed=False, bits_stored=12, intercept=-1024, padding=None
    ),
    "pad_2048": PixelEncoding("pad_2048", signed=True, bits_stored=16, intercept=0, padding=-2048),
    "pad_3024": PixelEncoding(
        "pad_3024", signed=True, bits_stored=16, intercept=-1024, padding=-2000
    ),
}


def encoding_for(seed: int, quirk: str | None = None) -> PixelEncoding:
    """The pixel encoding named ``quirk``, or the one drawn from ``seed`` when ``None``."""
    if quirk is None:
        names = sorted(QUIRKS)
        quirk = names[int(np.random.default_rng([seed, 5]).integers(len(names)))]
    try:
        return QUIRKS[quirk]
    except KeyError:
        raise TriageError(
            f"unknown phantom pixel encoding {quirk!r}; one of {sorted(QUIRKS)}"
        ) from None


def _uuid_uid(*parts: str) -> UID:
    """A deterministic ``2.25.`` UID from a name-based (SHA-1) UUID of ``parts`` (PS3.5 B.2)."""
    return UID(f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, '|'.join(parts)).int}")


def _ds(value: float) -> str:
    """A DS string (at most 16 characters, PS3.5 6.2)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text[:16]


def _fov_outside(rows: int, cols: int) -> npt.NDArray[np.bool_]:
    r = (min(rows, cols) / 2.0) ** 2
    yy = (np.arange(rows) - (rows - 1) / 2.0)[:, None]
    xx = (np.arange(cols) - (cols - 1) / 2.0)[None, :]
    out: npt.NDArray[np.bool_] = yy * yy + xx * xx > r
    return out


def write_phantom_series(
    phantom: Phantom, out_dir: Path, *, quirk: str | None = None
) -> list[Path]:
    """Write ``phantom`` as one CT Image Storage file per slice under ``out_dir``.

    Parameters
    ----------
    phantom
        From :func:`ct_triage.models.phantom.generate`.
    out_dir
        Folder to create (files ``CT000001.dcm`` ... in slice order, inferior first).
    quirk
        A key of :data:`QUIRKS`; ``None`` draws one from the phantom's seed.

    Returns
    -------
    list of Path
        The files written, in slice order.
    """
    spec = phantom.spec
    enc = encoding_for(spec.seed, quirk)
    hu = np.asarray(phantom.volume.hu)
    if hu.dtype != np.int16:
        raise TriageError("phantom volume must be int16 HU")
    nz, rows, cols = hu.shape
    dz, dy, dx = phantom.volume.spacing
    x0, y0, z0 = phantom.volume.origin
    outside = _fov_outside(rows, cols)
    out_dir.mkdir(parents=True, exist_ok=True)

    def uid(*parts: str) -> UID:
        return _uuid_uid(f"ct-triage-phantom-{spec.seed}", repr(spec), *parts)

    study_uid = uid("study")
    series_uid = uid("series", enc.name)
    for_uid = uid("frame-of-reference")
    seed_text = str(spec.seed)

    base = Dataset()
    base.SpecificCharacterSet = "ISO_IR 100"
    base.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    base.SOPClassUID = CTImageStorage
    base.StudyDate = STUDY_DATE
    base.SeriesDate = STUDY_DATE
    base.AcquisitionDate = STUDY_DATE
    base.ContentDate = STUDY_DATE
    base.StudyTime = STUDY_TIME
    base.SeriesTime = STUDY_TIME
    base.AcquisitionTime = STUDY_TIME
    base.ContentTime = STUDY_TIME
    base.AccessionNumber = f"PH{spec.seed:010d}"[-16:]
    base.Modality = "CT"
    base.Manufacturer = "chest-ct-triage phantom"
    base.InstitutionName = "Synthetic"
    base.ReferringPhysicianName = ""
    base.StationName = "PHANTOM"
    base.StudyDescription = "CT CHEST (synthetic phantom)"
    base.SeriesDescription = f"Chest {_ds(dz)} lung"
    base.ManufacturerModelName = PRODUCT_NAME
    base.SoftwareVersions = PRODUCT_VERSION
    base.PatientName = f"PHANTOM^SEED{seed_text}"
    base.PatientID = f"PHANTOM-{seed_text}"
    base.PatientBirthDate = "19700101"
    base.PatientSex = "O"
    base.PatientAge = "050Y"
    base.BodyPartExamined = "CHEST"
    base.SliceThickness = _ds(dz)
    base.KVP = "120"
    base.DataCollectionDiameter = "500"
    base.ReconstructionDiameter = _ds(min(rows, cols) * dx)
    base.GantryDetectorTilt = "0"
    base.ConvolutionKernel = "LUNG"
    base.PatientPosition = "HFS"
    base.StudyInstanceUID = study_uid
    base.SeriesInstanceUID = series_uid
    base.StudyID = f"{spec.seed % 10**8}"
    base.SeriesNumber = 2
    base.AcquisitionNumber = 1
    base.FrameOfReferenceUID = for_uid
    base.PositionReferenceIndicator = ""
    base.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.Rows = rows
    base.Columns = cols
    base.PixelSpacing = [_ds(dy), _ds(dx)]
    base.BitsAllocated = 16
    base.BitsStored = enc.bits_stored
    base.HighBit = enc.bits_stored - 1
    base.PixelRepresentation = 1 if enc.signed else 0
    if enc.padding is not None:
        base.add_new(0x00280120, "SS" if enc.signed else "US", enc.padding)  # PixelPaddingValue
    base.WindowCenter = ["-600", "40"]
    base.WindowWidth = ["1500", "400"]
    base.WindowCenterWidthExplanation = ["LUNG", "MEDIASTINUM"]
    base.RescaleIntercept = str(enc.intercept)
    base.RescaleSlope = "1"
    base.RescaleType = "HU"

    paths: list[Path] = []
    for k in range(nz):
        ds = Dataset()
        ds.update(base)
        sop_uid = uid("instance", enc.name, str(k))
        z = z0 + k * dz
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(x0), _ds(y0), _ds(z)]
        ds.SliceLocation = _ds(z)
        ds.PixelData = enc.stored(hu[k], outside).tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = _uuid_uid(PRODUCT_NAME, PRODUCT_VERSION)
        meta.ImplementationVersionName = f"CTTRIAGE_{PRODUCT_VERSION}"[:16]
        ds.file_meta = meta
        path = out_dir / f"CT{k + 1:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    logger.info("wrote %d phantom slices (%s encoding)", len(paths), enc.name)
    return paths
