"""Burned-in overlay series (Secondary Capture) and the preview PNG.

For viewers without DICOM SEG support, key slices are rendered in a lung window with the
lesion outlines burned in (:mod:`ct_triage.kernels.overlay`) and a banner saying that this
is AI output, not for primary diagnosis, with the model label. Each slice becomes one
single-frame *Secondary Capture Image Storage* instance (PS3.3 A.8.1; SOP Class
1.2.840.10008.5.1.4.1.1.7), RGB, the SC IOD every PACS viewer displays.

Every image references its source CT slice (Source Image Sequence and Referenced Image
Sequence, PS3.3 C.7.6.1) and carries only attributes of the SC Image IOD (no Frame of
Reference or Image Plane attributes of the CT, which the SC IOD does not define). Viewers
order an SC series by Instance Number, so the images are numbered superior first, the order
in which viewers show the axial CT (:func:`reading_order`): the overlay scrolls in the same
direction as the CT. Patient and study attributes
are copied from the source slice; the series, SOP instances and Series Description are new.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import highdicom as hd
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont, features
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from ct_triage.dicom_bridge.writers import codes
from ct_triage.dicom_bridge.writers.seg import output_character_set, validate_source
from ct_triage.kernels import overlay as kov
from ct_triage.models.identity import DISCLAIMER, DISCLAIMER_SHORT, ModelIdentity
from ct_triage.models.segmentation import Segmentation

logger = logging.getLogger(__name__)

#: Series Description of the overlay series (LO, at most 64 characters).
SERIES_DESCRIPTION: Final = f"AI lung overlay - {DISCLAIMER_SHORT}"[:64]
#: Derivation Description (ST) of every overlay image.
DERIVATION_DESCRIPTION: Final = (
    "Lung window W1500/L-600 with AI outlines burned in: ground-glass opacity yellow, "
    "consolidation red, lung cyan. " + DISCLAIMER
)

#: Patient, General Study and Patient Study attributes copied from the source slice
#: (PS3.3 C.7.1.1, C.7.2.1, C.7.2.2). SpecificCharacterSet is checked first
#: (:func:`~ct_triage.dicom_bridge.writers.seg.output_character_set`).
_COPIED: Final = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)
#: Type 2 attributes of those modules: present, possibly empty.
_TYPE2: Final = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


@dataclass(frozen=True, slots=True)
class OverlayRequest:
    """Everything :func:`write_overlay_series` needs, validated on construction.

    Parameters
    ----------
    source
        CT headers (Pixel Data may be absent) in volume z order.
    hu
        ``(z, y, x)`` Hounsfield units of the series (``int16`` or ``float32``).
    segmentation
        Lung and lesion label maps on the same grid.
    model
        The model that produced ``segmentation`` (named in the banner and the header).
    series_number
        Series Number of the new series (IS).
    slices
        ``"key"``: the slices chosen by :func:`ct_triage.kernels.overlay.key_slices`;
        ``"all"``: every slice.
    max_key_slices
        Upper bound on the number of key slices.
    """

    source: tuple[Dataset, ...]
    hu: npt.NDArray[np.int16] | npt.NDArray[np.float32]
    segmentation: Segmentation
    model: ModelIdentity
    series_number: int = 9003
    slices: Literal["all", "key"] = "key"
    max_key_slices: int = 24

    def __post_init__(self) -> None:
        if self.hu.shape != self.segmentation.lungs.shape:
            raise ValueError(
                f"hu {self.hu.shape} and segmentation {self.segmentation.lungs.shape} differ"
            )
        validate_source(self.source, self.hu.shape)
        if self.slices not in ("all", "key"):
            raise ValueError(f"slices must be 'all' or 'key', got {self.slices!r}")
        if self.max_key_slices < 1:
            raise ValueError("max_key_slices must be >= 1")
        if not 0 < self.series_number < 2**31:
            raise ValueError("series_number must be a positive IS value")


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if features.check("freetype2"):
        return ImageFont.load_default(size=size)
    return ImageFont.load_default()  # pragma: no cover - Pillow without FreeType


def _draw_banner(rgb: npt.NDArray[np.uint8], lines: Sequence[str]) -> npt.NDArray[np.uint8]:
    """Return ``rgb`` with a dark banner holding ``lines`` burned into its top rows."""
    height, width = rgb.shape[:2]
    size = _banner_font_size(width)
    font = _font(size)
    line_height = size + max(2, size // 4)
    banner = banner_height(height, width, len(lines))
    image = Image.fromarray(rgb, mode="RGB")
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, width - 1, banner - 1), fill=(0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((3, 2 + i * line_height), line, fill=(255, 255, 255), font=font)
    return np.asarray(image, dtype=np.uint8)


def banner_lines(model: ModelIdentity) -> tuple[str, str]:
    """The two banner lines: the short disclaimer and the model label."""
    return (DISCLAIMER_SHORT, f"{codes.MANUFACTURER} {model.algorithm_label}")


def _banner_font_size(columns: int) -> int:
    return max(8, min(18, columns // 36))


def banner_height(rows: int, columns: int, n_lines: int = 2) -> int:
    """Rows covered by the banner of a ``rows`` x ``columns`` image."""
    size = _banner_font_size(columns)
    return min(rows, (size + max(2, size // 4)) * n_lines + 4)


def reading_order(indices: Sequence[int]) -> list[int]:
    """``indices`` (volume z order, inferior to superior) in axial reading order.

    Superior first: how viewers present an axial CT (OHIF and most PACS sort a CT by Image
    Position along the slice normal, head first; scanners number axial chests the same
    way). An SC series has no position, so viewers order it by Instance Number alone.
    """
    return sorted(indices, reverse=True)


def _reference(src: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = src.SOPClassUID
    item.ReferencedSOPInstanceUID = src.SOPInstanceUID
    return item


def secondary_capture(
    src: Dataset,
    rgb: npt.NDArray[np.uint8],
    *,
    series_uid: str,
    series_number: int,
    instance_number: int,
    model: ModelIdentity,
    now: _dt.datetime,
    series_description: str = SERIES_DESCRIPTION,
    derivation_description: str = DERIVATION_DESCRIPTION,
    references: Sequence[Dataset] | None = None,
) -> Dataset:
    """One Secondary Capture Image (PS3.3 A.8.1) of ``rgb`` derived from ``src``.

    Patient and study attributes are copied from ``src``; the image references
    ``references`` (default: ``src``) as its source images.
    """
    ds = Dataset()
    sop_uid = hd.UID()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    charset = output_character_set(src)
    if charset is not None:
        ds.SpecificCharacterSet = charset
    for kw in _COPIED:
        if kw in src:
            ds[kw] = src[kw]
    for kw in _TYPE2:
        if kw not in ds:
            setattr(ds, kw, None)
    # SOP Common (C.12.1)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    # General Series (C.7.3.1)
    ds.Modality = "OT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description[:64]
    # The chest is not a paired body part, so Laterality (Type 2C) is not required.
    ds.BodyPartExamined = "CHEST"
    ds.SeriesDate = ds.InstanceCreationDate
    ds.SeriesTime = ds.InstanceCreationTime
    # General Equipment (C.7.5.1) and SC Equipment (C.8.6.1)
    ds.Manufacturer = codes.MANUFACTURER
    ds.ManufacturerModelName = model.algorithm_label
    ds.SoftwareVersions = codes.SOFTWARE_VERSION
    ds.ConversionType = "WSD"
    ds.SecondaryCaptureDeviceManufacturer = codes.MANUFACTURER
    ds.SecondaryCaptureDeviceManufacturerModelName = model.algorithm_label
    ds.SecondaryCaptureDeviceSoftwareVersions = codes.SOFTWARE_VERSION
    # General Image (C.7.6.1)
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = src.get("PatientOrientation", None) or None
    ds.ContentDate = ds.InstanceCreationDate
    ds.ContentTime = ds.InstanceCreationTime
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = derivation_description[:1024]
    shown = [src] if references is None else list(references)
    if shown:
        ds.SourceImageSequence = DicomSequence([_reference(r) for r in shown])
        ds.ReferencedImageSequence = DicomSequence([_reference(r) for r in shown])
    ds.BurnedInAnnotation = "YES"
    ds.RecognizableVisualFeatures = "NO"
    ds.LossyImageCompression = "00"
    ds.ImageComments = DISCLAIMER
    # Image Pixel (C.7.6.3)
    ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    return ds


def write_overlay_series(req: OverlayRequest) -> list[Dataset]:
    """Render the overlay series (one Secondary Capture image per chosen slice).

    Parameters
    ----------
    req
        The validated request.

    Returns
    -------
    list of pydicom.dataset.Dataset
        In the CT's reading order (:func:`reading_order`), Instance Numbers 1..n, one new
        Series Instance UID, ready for ``dcmwrite(..., enforce_file_format=True)``.
    """
    t0 = time.perf_counter()
    seg = req.segmentation
    if req.slices == "all":
        indices = list(range(req.hu.shape[0]))
    else:
        indices = kov.key_slices(seg.lungs, seg.lesions, req.max_key_slices)
    indices = reading_order(indices)
    series_uid = hd.UID()
    now = _dt.datetime.now()
    lines = banner_lines(req.model)
    out: list[Dataset] = []
    for n, k in enumerate(indices, start=1):
        rgb = kov.render_slice(req.hu[k], seg.lungs[k], seg.lesions[k])
        rgb = _draw_banner(rgb, lines)
        out.append(
            secondary_capture(
                req.source[k],
                rgb,
                series_uid=series_uid,
                series_number=req.series_number,
                instance_number=n,
                model=req.model,
                now=now,
            )
        )
    logger.info("overlay series built: %d images, %.2f s", len(out), time.perf_counter() - t0)
    return out


def write_preview_png(
    hu: npt.NDArray[np.int16] | npt.NDArray[np.float32],
    segmentation: Segmentation,
    path: Path,
    *,
    title_lines: Sequence[str],
) -> None:
    """Write one preview PNG: key axial slices + a coronal reformat, titled, with disclaimer.

    Parameters
    ----------
    hu
        ``(z, y, x)`` Hounsfield units.
    segmentation
        Label maps on the same grid (its spacing corrects the coronal aspect ratio).
    path
        Output ``.png`` path (its folder must exist).
    title_lines
        Lines drawn above the images (e.g. triage category, percent involvement); the full
        :data:`~ct_triage.models.identity.DISCLAIMER` is always drawn below them.
    """
    if hu.shape != segmentation.lungs.shape:
        raise ValueError(f"hu {hu.shape} and segmentation {segmentation.lungs.shape} differ")
    montage = kov.preview_montage(
        hu, segmentation.lungs, segmentation.lesions, segmentation.spacing
    )
    width = max(montage.shape[1], 480)
    size = 14
    font = _font(size)
    title = [part for line in title_lines for part in _wrap(line, font, width - 8)]
    lines = [*title, *_wrap(DISCLAIMER, font, width - 8)]
    line_height = size + 5
    header = line_height * len(lines) + 8
    canvas = Image.new("RGB", (width, header + montage.shape[0]), (0, 0, 0))
    canvas.paste(Image.fromarray(montage, mode="RGB"), (0, header))
    draw = ImageDraw.Draw(canvas)
    n_title = len(title)
    for i, line in enumerate(lines):
        color = (255, 255, 255) if i < n_title else (255, 200, 60)
        draw.text((4, 4 + i * line_height), line, fill=color, font=font)
    canvas.save(path, format="PNG")
    logger.info("preview written: %dx%d", canvas.width, canvas.height)


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy word wrap of ``text`` to ``width`` pixels in ``font``."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if current and font.getlength(trial) > width:
            lines.append(current)
            current = word
        else:
            current = trial
    if current:
        lines.append(current)
    return lines
