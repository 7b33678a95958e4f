"""TID 1500 content shared by the SR writers: the request, rounding, observer and disclaimer.

:mod:`~ct_triage.dicom_bridge.writers.sr` (the full measurement report, the "not analysed"
report) and :mod:`~ct_triage.dicom_bridge.writers.sr_outlines` (the outline SR) build their
PS3.16 TID 1500 "Measurement Report" trees from these pieces:

* :class:`SrRequest`, validated on construction, and :func:`round_measurement`, the one
  rounding rule of every reported number (SR and ``report.json``);
* the device observer context (TID 1002 / TID 1004) and the algorithm identification
  (TID 4019) of a model;
* the disclaimer as TEXT Comments under TID 1500 row 12 "Qualitative Evaluations";
* :func:`section_refs`: the codes and source image of a key lesion cross-section, for the
  planar (TID 1410) and outline (TID 1501) groups;
* :func:`separate_containers` (Continuity Of Content SEPARATE, PS3.3 C.17.3.2.4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code
from pydicom.uid import SegmentationStorage, generate_uid

from ct_triage.dicom_bridge.writers import codes
from ct_triage.dicom_bridge.writers.planar import KeySection
from ct_triage.dicom_bridge.writers.seg import (
    SEGMENT_CONSOLIDATION,
    SEGMENT_GGO,
    SEGMENT_LEFT_LUNG,
    SEGMENT_RIGHT_LUNG,
    output_character_set,
    validate_source,
)
from ct_triage.models.identity import DISCLAIMER, PRODUCT_NAME, ModelIdentity
from ct_triage.models.quantify import Quantification
from ct_triage.models.segmentation import LesionLabel

#: Decimal places of every reported measurement (mL and %), in the SR and in report.json.
MEASUREMENT_DECIMALS: Final = 2


def round_measurement(x: float) -> float:
    """Round a reported measurement to :data:`MEASUREMENT_DECIMALS` decimals.

    The one rounding rule for every number the product reports (SR Numeric Value and
    ``report.json``), so the two agree exactly. ``-0.0`` becomes ``0.0``.

    Parameters
    ----------
    x
        Value in its reporting unit (mL, %).

    Returns
    -------
    float
        ``round(x, 2)`` as a Python float.
    """
    return round(float(x), MEASUREMENT_DECIMALS) + 0.0


@dataclass(frozen=True, slots=True)
class SrRequest:
    """Everything :func:`~.sr.write_sr` and :func:`~.sr_outlines.write_outlines_sr` need,
    validated on construction.

    Parameters
    ----------
    source
        CT headers (Pixel Data may be absent) of the analysed series, in volume z order.
    seg
        The Segmentation written by :func:`~ct_triage.dicom_bridge.writers.seg.write_seg`
        for this series; its segments are referenced by the measurement groups.
    quantification
        The numbers to report.
    model
        The model that produced them (device observer and algorithm identification).
    series_number
        Series Number of the new SR series (IS).
    instance_number
        Instance Number of the SR (IS).
    previous_versions
        Earlier SRs of the same series that this one supersedes (a late instance re-ran the
        analysis); referenced in the Predecessor Documents Sequence (PS3.3 C.17.2.1).
    sections
        Largest lesion cross-sections (:func:`~.planar.largest_cross_sections`), written as
        planar groups on ``source[section.slice_index]``.
    """

    source: tuple[Dataset, ...]
    seg: Dataset
    quantification: Quantification
    model: ModelIdentity
    series_number: int = 9002
    instance_number: int = 1
    previous_versions: tuple[Dataset, ...] = ()
    sections: tuple[KeySection, ...] = ()

    def __post_init__(self) -> None:
        if len(self.source) == 0:
            raise ValueError("source must contain at least one CT header")
        first = self.source[0]
        validate_source(self.source, (len(self.source), int(first.Rows), int(first.Columns)))
        if self.seg.get("SOPClassUID") != SegmentationStorage:
            raise ValueError("seg is not a Segmentation Storage instance")
        if self.seg.StudyInstanceUID != first.StudyInstanceUID:
            raise ValueError("seg belongs to another study than source")
        numbers = {int(item.SegmentNumber) for item in self.seg.SegmentSequence}
        wanted = {SEGMENT_RIGHT_LUNG, SEGMENT_LEFT_LUNG, SEGMENT_GGO, SEGMENT_CONSOLIDATION}
        if not wanted <= numbers:
            raise ValueError(f"seg lacks segments {sorted(wanted - numbers)}")
        for name, value in _all_values(self.quantification):
            if not math.isfinite(value):
                raise ValueError(f"quantification {name} is not finite: {value}")
        if not 0 < self.series_number < 2**31 or not 0 < self.instance_number < 2**31:
            raise ValueError("series_number and instance_number must be positive IS values")
        for section in self.sections:
            if not 0 <= section.slice_index < len(self.source):
                raise ValueError(f"section slice {section.slice_index} is not in source")
            if section.outline.ndim != 2 or section.outline.shape[1] != 2:
                raise ValueError("section outline must be an (n, 2) array")
            if not math.isfinite(section.area_mm2) or section.area_mm2 < 0:
                raise ValueError("section area must be a finite non-negative number")


def _all_values(q: Quantification) -> list[tuple[str, float]]:
    values = [
        ("lung_volume_ml.left", q.lung_volume_ml.left),
        ("lung_volume_ml.right", q.lung_volume_ml.right),
        ("lung_volume_ml.total", q.lung_volume_ml.total),
        ("lesion_volume_ml.total", q.lesion_volume_ml.total),
        ("lesion_volume_ml.ggo", q.lesion_volume_ml.ggo),
        ("lesion_volume_ml.consolidation", q.lesion_volume_ml.consolidation),
        ("percent_involvement.left", q.percent_involvement.left),
        ("percent_involvement.right", q.percent_involvement.right),
        ("percent_involvement.total", q.percent_involvement.total),
        ("severity_score", float(q.severity_score)),
    ]
    values += [(f"zones.{z.lung}.{z.zone}", z.percent_involvement) for z in q.zones]
    return values


def device_uid(model: ModelIdentity) -> str:
    """Device Observer UID of a model: the same UID for the same model file (PS3.16 TID 1004)."""
    return str(generate_uid(entropy_srcs=[PRODUCT_NAME, model.name, model.version, model.sha256]))


def algorithm_identification(model: ModelIdentity) -> hd.sr.AlgorithmIdentification:
    """Algorithm Identification (TID 4019) of a model: its name, version and family."""
    return hd.sr.AlgorithmIdentification(
        name=model.name[:64],
        version=model.version[:64],
        family=codes.ARTIFICIAL_INTELLIGENCE,
        manufacturer=codes.MANUFACTURER,
    )


@dataclass(frozen=True, slots=True)
class SectionRefs:
    """What a group about one key lesion cross-section refers to.

    Parameters
    ----------
    lung
        The lung it lies in (finding site, SNOMED CT).
    finding
        Ground-glass opacity or consolidation, whichever holds most of the section.
    source_image
        The CT slice its outline lies on (Source Image For Region, PS3.16 TID 1410 / TID 300).
    """

    lung: Code
    finding: Code
    source_image: hd.sr.SourceImageForRegion


def section_refs(req: SrRequest, section: KeySection) -> SectionRefs:
    """The lung, finding and source CT slice of ``section`` (a section of ``req``)."""
    image = req.source[section.slice_index]
    return SectionRefs(
        lung=codes.RIGHT_LUNG if section.side == "right" else codes.LEFT_LUNG,
        finding=(
            codes.GROUND_GLASS_OPACITY if section.kind == LesionLabel.GGO else codes.CONSOLIDATION
        ),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=str(image.SOPClassUID),
            referenced_sop_instance_uid=str(image.SOPInstanceUID),
        ),
    )


def disclaimer_container(q: Quantification) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12 "Qualitative Evaluations": the disclaimer as a TEXT Comment and, when
    the quality gate flagged the lungs, "lung segmentation unreliable: REASON" as another."""
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    texts = [DISCLAIMER]
    if not q.quality.reliable:
        texts.append(q.quality.summary[:1024])
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=codes.COMMENT,
                value=text,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
            for text in texts
        ]
    )
    return container


def observation_context(model: ModelIdentity) -> hd.sr.ObservationContext:
    """TID 1002 with a device observer (TID 1004) naming the algorithm."""
    observer = hd.sr.ObserverContext(
        observer_type=dcm_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(model),
            name=model.name[:64],
            manufacturer_name=codes.MANUFACTURER,
            model_name=model.algorithm_label,
            serial_number=(model.sha256[:16] or None),
        ),
    )
    return hd.sr.ObservationContext(observer_device_context=observer)


def machine_sr(
    *,
    evidence: Sequence[Dataset],
    content: hd.sr.MeasurementReport,
    series_number: int,
    instance_number: int,
    series_description: str,
    model: ModelIdentity,
    previous_versions: Sequence[Dataset] = (),
    character_set_of: Dataset | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Wrap a TID 1500 report in the Comprehensive 3D SR (PS3.3 A.35.13) every SR of ours is.

    In the study of ``evidence``, with the character set of ``character_set_of`` (default: the
    first evidence data set), a new series,
    Completion Flag COMPLETE, Verification Flag UNVERIFIED (a machine result nobody has
    signed), our manufacturer, model and software version, every container SEPARATE
    (:func:`separate_containers`), and the series dated like its content (General Series
    C.7.3.1: PACS sort the series by date).
    """
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(evidence),
        content=content,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=codes.MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=series_description,
        previous_versions=list(previous_versions) or None,
        specific_character_set=output_character_set(
            evidence[0] if character_set_of is None else character_set_of
        ),
    )
    sr.ManufacturerModelName = model.algorithm_label
    sr.SoftwareVersions = codes.SOFTWARE_VERSION
    separate_containers(sr)
    sr.SeriesDate, sr.SeriesTime = sr.ContentDate, sr.ContentTime
    return sr


def separate_containers(items: Dataset | Sequence[Dataset]) -> None:
    """Set Continuity Of Content SEPARATE on every CONTAINER under ``items`` (in place).

    highdicom writes CONTINUOUS; renderers such as ``dsr2html`` then run the children of a
    container together as prose and drop their concept names ("2146.31 ml 27.98 %").
    SEPARATE (PS3.3 C.17.3.2.4) makes each item its own labelled entry; TID 1500 allows
    both.
    """
    for item in [items] if isinstance(items, Dataset) else items:
        if item.get("ValueType") == "CONTAINER":
            item.ContinuityOfContent = "SEPARATE"
        if "ContentSequence" in item:
            separate_containers(item.ContentSequence)
