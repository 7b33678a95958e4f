"""DICOM Segmentation writer (PS3.3 A.51 Segmentation IOD, C.8.20 Segmentation modules).

Four BINARY segments on the grid of the source CT series:

====== ============================== ==================================== ==============
Number Label                          Segmented Property Type              Category
====== ============================== ==================================== ==============
1      Right lung                     SCT 3341006 "Right lung"             SCT 91723000
2      Left lung                      SCT 44029006 "Left lung"             SCT 91723000
3      Ground-glass opacity           DCM 112120 "Ground glass opacity"    SCT 49755003
4      Consolidation                  SCT 95436008 "Lung consolidation"    SCT 49755003
====== ============================== ==================================== ==============

(codes and their sources: :mod:`ct_triage.dicom_bridge.writers.codes`). The lungs include
the lesions, so segments overlap; each segment is its own set of frames. Every frame
references its source CT slice (Derivation Image / Source Image Sequence and Plane Position
in the Per-frame Functional Groups), empty frames are omitted, and the Frame of Reference and
Referenced Series Sequence are those of the source.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DA, TM

from ct_triage.dicom_bridge.writers import codes
from ct_triage.models.identity import DISCLAIMER, DISCLAIMER_SHORT, ModelIdentity
from ct_triage.models.segmentation import LesionLabel, LungLabel, Segmentation

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SegmentSpec:
    """What one SEG segment is (PS3.3 C.8.20.2 Segment Sequence item)."""

    number: int
    label: str
    category: Code
    property_type: Code
    rgb: tuple[int, int, int]


#: The four segments, in Segment Number order.
SEGMENTS: Final[tuple[SegmentSpec, ...]] = (
    SegmentSpec(1, "Right lung", codes.ANATOMICAL_STRUCTURE, codes.RIGHT_LUNG, (0, 150, 200)),
    SegmentSpec(2, "Left lung", codes.ANATOMICAL_STRUCTURE, codes.LEFT_LUNG, (0, 200, 150)),
    SegmentSpec(
        3,
        "Ground-glass opacity",
        codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        codes.GROUND_GLASS_OPACITY,
        (255, 210, 0),
    ),
    SegmentSpec(
        4,
        "Consolidation",
        codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        codes.CONSOLIDATION,
        (255, 40, 40),
    ),
)

#: Segment numbers by meaning (used by the SR writer to reference segments).
SEGMENT_RIGHT_LUNG: Final = 1
SEGMENT_LEFT_LUNG: Final = 2
SEGMENT_GGO: Final = 3
SEGMENT_CONSOLIDATION: Final = 4

#: Series Description of the SEG (LO, at most 64 characters).
SERIES_DESCRIPTION: Final = f"AI lung/lesion SEG - {DISCLAIMER_SHORT}"[:64]
#: Content Label (CS, at most 16 characters, PS3.3 C.10.9).
CONTENT_LABEL: Final = "CTTRIAGE_SEG"

_REQUIRED_SOURCE_ATTRIBUTES: Final = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "Rows",
    "Columns",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
)


def validate_source(source: Sequence[Dataset], shape: tuple[int, ...]) -> None:
    """Check that ``source`` headers describe the ``(z, y, x)`` grid ``shape``.

    Parameters
    ----------
    source
        CT headers in volume z order.
    shape
        ``(z, y, x)`` shape of the arrays written on that grid.

    Raises
    ------
    ValueError
        When the source is empty, lacks an attribute the writers need, mixes series or
        frames of reference, or does not match ``shape``.
    """
    if len(source) == 0:
        raise ValueError("source must contain at least one CT header")
    if len(shape) != 3:
        raise ValueError(f"expected a (z, y, x) shape, got {shape}")
    if shape[0] != len(source):
        raise ValueError(f"array has {shape[0]} slices but source has {len(source)} headers")
    first = source[0]
    for index, ds in enumerate(source):
        missing = [kw for kw in _REQUIRED_SOURCE_ATTRIBUTES if kw not in ds]
        if missing:
            raise ValueError(f"source[{index}] lacks {', '.join(missing)}")
        if (int(ds.Rows), int(ds.Columns)) != (shape[1], shape[2]):
            raise ValueError(
                f"source[{index}] is {ds.Rows}x{ds.Columns} but the array slice is "
                f"{shape[1]}x{shape[2]}"
            )
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            if ds[kw].value != first[kw].value:
                raise ValueError(f"source[{index}] has a different {kw} from source[0]")
    uids = {ds.SOPInstanceUID for ds in source}
    if len(uids) != len(source):
        raise ValueError("source contains duplicate SOP Instance UIDs")


#: Type 2 Patient / General Study attributes (PS3.3 C.7.1.1, C.7.2.1) that highdicom reads
#: from the first source image; absent ones are added empty (Type 2: present, may be empty).
_TYPE2_PATIENT_STUDY: Final = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


#: Specific Character Set values highdicom writes (PS3.3 C.12.1.1.2).
_CHARACTER_SETS: Final = frozenset(v.value for v in hd.SpecificCharacterSetValues)
#: Multi-byte code extensions, which may not come first in a multi-valued character set.
_MULTI_BYTE_EXTENSIONS: Final = frozenset(
    {"ISO 2022 IR 87", "ISO 2022 IR 159", "ISO 2022 IR 149", "ISO 2022 IR 58"}
)


def output_character_set(ds: Dataset) -> str | list[str] | None:
    """The Specific Character Set (0008,0005) to write for text copied from ``ds``.

    A valid value is kept. Empty means the default repertoire and gives ``None`` (the
    attribute is then omitted, PS3.3 C.12.1.1.2). A value that is not a defined term, or a
    malformed combination of code extensions, is not trusted: ``None`` (default repertoire)
    with a logged note, never a failure after the analysis.
    """
    raw = ds.get("SpecificCharacterSet")
    if raw is None:
        return None
    values = [str(raw).strip()] if isinstance(raw, str) else [str(v).strip() for v in raw]
    if len(values) > 1 and values[0] == "":
        values[0] = "ISO 2022 IR 6"  # an empty first value: default repertoire + extensions
    if not values or values == [""]:
        return None
    if len(values) == 1:
        ok = values[0] in _CHARACTER_SETS and not values[0].startswith("ISO 2022")
    else:
        ok = (
            all(v in _CHARACTER_SETS and v.startswith("ISO 2022") for v in values)
            and values[0] not in _MULTI_BYTE_EXTENSIONS
        )
    if ok:
        return values[0] if len(values) == 1 else values
    logger.warning(
        "SpecificCharacterSet %r of the source is not valid; the results use the default "
        "repertoire",
        "\\".join(values)[:64],
    )
    return None


def _positive_ds(ds: Dataset, keyword: str) -> bool:
    """Whether ``keyword`` holds one finite positive number (DS attributes of the source)."""
    try:
        value = float(ds.get(keyword))
    except (TypeError, ValueError):
        return False
    return math.isfinite(value) and value > 0


def _parses(ds: Dataset, keyword: str) -> bool:
    """Whether a Type 2 date, time or sex that highdicom parses is empty or valid."""
    value = ds.get(keyword)
    if value is None or str(value).strip() == "":
        return True
    try:
        if keyword == "PatientSex":
            return str(value).strip() in ("M", "F", "O")
        if keyword == "StudyTime":
            TM(str(value))
        else:
            DA(str(value))
    except (TypeError, ValueError, OverflowError):
        return False
    return True


#: Type 2 attributes highdicom parses (DA, TM, the PatientSex enumeration) and fails on.
_PARSED_TYPE2: Final = ("PatientBirthDate", "StudyDate", "StudyTime", "PatientSex")


def with_type2_defaults(
    source: Sequence[Dataset], *, slice_thickness_mm: float | None = None
) -> list[Dataset]:
    """Return ``source`` with a completed copy of its first header.

    highdicom copies the Patient and General Study modules from the first source image and
    requires their Type 2 attributes to be present. Anonymised or minimal headers often omit
    them, so the first header is deep-copied (the caller's dataset is left untouched; it
    holds no Pixel Data, so the copy is cheap) and each missing one is added empty; so is a
    date, time or Patient's Sex that is not valid (highdicom parses them).

    highdicom also takes the Pixel Measures (PS3.3 C.7.6.16.2.1) of a SEG from the first
    source image, where SliceThickness is Type 1: when the source lacks a finite positive
    one, ``slice_thickness_mm`` (the slice spacing of the grid) is used instead, and a
    SpacingBetweenSlices that is not a finite positive number is left out.
    """
    first = source[0]
    missing = [kw for kw in _TYPE2_PATIENT_STUDY if kw not in first]
    # An invalid date, time or sex is written empty (Type 2) rather than failing the SEG.
    missing += [kw for kw in _PARSED_TYPE2 if kw in first and not _parses(first, kw)]
    bad_thickness = slice_thickness_mm is not None and not _positive_ds(first, "SliceThickness")
    bad_spacing = "SpacingBetweenSlices" in first and not _positive_ds(
        first, "SpacingBetweenSlices"
    )
    if not missing and not bad_thickness and not bad_spacing:
        return list(source)
    completed = copy.deepcopy(first)
    for kw in missing:
        setattr(completed, kw, None)
    if bad_thickness and slice_thickness_mm is not None:
        logger.info("source has no valid SliceThickness; the SEG uses the slice spacing")
        completed.SliceThickness = round(float(slice_thickness_mm), 6)
    if bad_spacing:
        del completed.SpacingBetweenSlices
    return [completed, *source[1:]]


@dataclass(frozen=True, slots=True)
class SegRequest:
    """Everything :func:`write_seg` needs, validated on construction.

    Parameters
    ----------
    source
        CT headers (Pixel Data may be absent) in volume z order: ``segmentation`` index ``k``
        lies on ``source[k]``.
    segmentation
        Lung and lesion label maps, ``(z, y, x)`` on the source grid.
    model
        The model that produced ``segmentation`` (Segment Algorithm Identification).
    series_number
        Series Number of the new SEG series (IS).
    instance_number
        Instance Number of the SEG (IS).
    """

    source: tuple[Dataset, ...]
    segmentation: Segmentation
    model: ModelIdentity
    series_number: int = 9001
    instance_number: int = 1

    def __post_init__(self) -> None:
        validate_source(self.source, self.segmentation.lungs.shape)
        if not 0 < self.series_number < 2**31 or not 0 < self.instance_number < 2**31:
            raise ValueError("series_number and instance_number must be positive IS values")


def segment_masks(segmentation: Segmentation) -> npt.NDArray[np.bool_]:
    """Stack the four binary segments as ``(z, y, x, 4)`` in :data:`SEGMENTS` order.

    The result is a view of a segment-major ``(4, z, y, x)`` buffer, so each segment's
    frames are contiguous in memory (faster to slice per segment and to check for overlap).
    """
    lungs, lesions = segmentation.lungs, segmentation.lesions
    planes = np.empty((len(SEGMENTS), *lungs.shape), dtype=bool)
    np.equal(lungs, LungLabel.RIGHT, out=planes[0])
    np.equal(lungs, LungLabel.LEFT, out=planes[1])
    np.equal(lesions, LesionLabel.GGO, out=planes[2])
    np.equal(lesions, LesionLabel.CONSOLIDATION, out=planes[3])
    stacked = np.moveaxis(planes, 0, -1).view(_SegmentStack)
    # right/left are one label map and GGO/consolidation another, so two segments share a
    # pixel exactly where a lung label and a lesion label do (one pass, no 4-plane check)
    stacked.overlap = bool(np.logical_and(lungs, lesions).any())
    return stacked


class _SegmentStack(np.ndarray):
    """A ``(z, y, x, n)`` boolean segment stack that knows whether its segments overlap."""

    overlap: bool | None = None


def segments_overlap(masks: npt.NDArray[np.bool_]) -> bool:
    """Whether any pixel belongs to two segments of a ``(z, y, x, n)`` stack (C.8.20.2)."""
    if masks.shape[-1] < 2:
        return False
    union = masks[..., 0].copy()
    both = np.empty_like(union)
    for i in range(1, masks.shape[-1]):
        # A pixel is in two segments iff some segment meets the union of the earlier ones.
        np.logical_and(union, masks[..., i], out=both)
        if both.any():
            return True
        np.logical_or(union, masks[..., i], out=union)
    return False


class _Segmentation(hd.seg.Segmentation):
    """highdicom Segmentation with a faster overlap check for boolean segment stacks.

    highdicom's ``_check_and_cast_pixel_array`` finds Segments Overlap by summing a
    ``(z, y, x, n)`` array over its last axis, which promotes to ``int64`` and takes ~2 s
    for 300 slices of 512 x 512 x 4. For a boolean stack the same answer is computed here
    with plane-wise logical operations (~0.45 s), or taken from the stack when
    :func:`segment_masks` already knows it from the two label maps (~0.05 s); every other
    input goes to highdicom unchanged.
    The instance is a plain :class:`highdicom.seg.Segmentation` in every other respect.
    """

    @classmethod
    def _check_and_cast_pixel_array(
        cls,
        pixel_array: Any,
        segment_numbers: Any,
        segmentation_type: Any,
        dtype: Any,
    ) -> tuple[Any, hd.seg.SegmentsOverlapValues]:
        if (
            isinstance(pixel_array, np.ndarray)
            and pixel_array.ndim == 4
            and pixel_array.dtype == np.bool_
            and pixel_array.shape[-1] == len(segment_numbers)
        ):
            known = getattr(pixel_array, "overlap", None)
            overlap = segments_overlap(pixel_array) if known is None else known
            return np.asarray(pixel_array), (
                hd.seg.SegmentsOverlapValues.YES if overlap else hd.seg.SegmentsOverlapValues.NO
            )
        result: tuple[Any, hd.seg.SegmentsOverlapValues] = super()._check_and_cast_pixel_array(
            pixel_array, segment_numbers, segmentation_type, dtype
        )
        return result


def algorithm_identification(model: ModelIdentity) -> hd.AlgorithmIdentificationSequence:
    """Segment Algorithm Identification (PS3.3 C.8.20.2, family CID 7162 "AI")."""
    parameters = {"sha256": model.sha256}
    if model.provider:
        parameters["execution_provider"] = model.provider
    return hd.AlgorithmIdentificationSequence(
        name=model.name[:64],
        family=codes.ARTIFICIAL_INTELLIGENCE,
        version=model.version[:64],
        source=codes.MANUFACTURER,
        parameters=parameters,
    )


def _segment_descriptions(model: ModelIdentity) -> list[hd.seg.SegmentDescription]:
    algorithm = algorithm_identification(model)
    descriptions = []
    for spec in SEGMENTS:
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=spec.number,
                segment_label=spec.label,
                segmented_property_category=spec.category,
                segmented_property_type=spec.property_type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=hd.UID(),
                tracking_id=f"{spec.label} ({model.algorithm_label})"[:64],
                anatomic_regions=(
                    [codes.LUNG]
                    if spec.category == codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE
                    else None
                ),
                display_color=hd.color.CIELabColor.from_rgb(*spec.rgb),
            )
        )
    return descriptions


def write_seg(req: SegRequest) -> hd.seg.Segmentation:
    """Build the DICOM Segmentation instance (PS3.3 A.51) of one analysed series.

    Parameters
    ----------
    req
        The validated request.

    Returns
    -------
    highdicom.seg.Segmentation
        A ``pydicom.Dataset`` subclass, Segmentation Storage, BINARY, Explicit VR Little
        Endian, new Series and SOP Instance UIDs, in the source's study and frame of
        reference. Patient and study attributes are copied from ``req.source[0]``.

    Notes
    -----
    The disclaimer is in Series Description (short form), Content Description (short form
    with the model label) and Image Comments (full :data:`~ct_triage.models.identity.DISCLAIMER`).
    """
    t0 = time.perf_counter()
    masks = segment_masks(req.segmentation)
    seg = _Segmentation(
        source_images=with_type2_defaults(
            req.source, slice_thickness_mm=float(req.segmentation.spacing[0])
        ),
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(req.model),
        series_instance_uid=hd.UID(),
        series_number=req.series_number,
        sop_instance_uid=hd.UID(),
        instance_number=req.instance_number,
        manufacturer=codes.MANUFACTURER,
        manufacturer_model_name=req.model.algorithm_label,
        software_versions=codes.SOFTWARE_VERSION,
        device_serial_number=(req.model.sha256[:16] or "unknown"),
        content_description=f"AI {req.model.algorithm_label}"[:64],
        content_label=CONTENT_LABEL,
        content_creator_name="chest-ct-triage^AI",
        series_description=SERIES_DESCRIPTION,
        omit_empty_frames=True,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        specific_character_set=output_character_set(req.source[0]),
    )
    seg.ImageComments = DISCLAIMER
    # General Series (C.7.3.1): dated like the content, so PACS sort the series by date
    seg.SeriesDate, seg.SeriesTime = seg.ContentDate, seg.ContentTime
    logger.info(
        "SEG built: %d source slices, %d frames, %.2f s",
        len(req.source),
        int(seg.NumberOfFrames),
        time.perf_counter() - t0,
    )
    return seg
