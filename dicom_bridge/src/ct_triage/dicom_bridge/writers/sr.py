"""Comprehensive 3D SR writer: TID 1500 Measurement Report of the lung quantification.

Document layout (PS3.16 TID 1500 "Measurement Report", PS3.3 A.35.13 Comprehensive 3D SR):

* title ``DCM 126000`` "Imaging Measurement Report" (CID 7021); language; observer context
  (TID 1002) with a *device* observer (TID 1004) naming the algorithm; procedure reported
  ``LN 24627-2`` "CT Chest".
* Imaging Measurements, one TID 1411 "Volumetric ROI Measurements and Qualitative
  Evaluations" group per SEG segment, each referencing its segment (Referenced Segment +
  Source Series For Segmentation):

  - right / left lung: Volume (mL), percent of the lung involved by lesion (%), and the
    percent involvement of its upper / middle / lower zone (%, finding site = zone with
    laterality, CID 6124 / CID 244);
  - ground-glass opacity / consolidation: Volume (mL).

* one TID 1501 "Measurement and Qualitative Evaluation Group" for the whole lungs: total
  lung volume, total percent involvement, severity score (0-25), triage priority, the
  triage category (Severity) and the quality gate (Summary of Analyses) as coded
  qualitative evaluations; one for the lesions of both lungs: total lesion volume;
* per lung with lesions, one TID 1410 "Planar ROI Measurements" group: the outline of its
  largest lesion cross-section as a closed POLYLINE on the CT slice it lies on (SCOORD, PS3.3
  C.18.6) with its Area (mm2), so viewers that list measurements by image coordinates
  (OHIF's measurement panel) show them (:mod:`ct_triage.dicom_bridge.writers.planar`);
* TID 1500 row 12 "Qualitative Evaluations" holding the disclaimer as a TEXT Comment.

Numbers are rounded with :func:`round_measurement`, which ``report.json`` also uses, so both
carry exactly the same values. Every code is a standard one (SNOMED CT, DCM, LOINC, UCUM);
see :mod:`ct_triage.dicom_bridge.writers.codes`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Final

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from ct_triage.dicom_bridge.writers import codes
from ct_triage.dicom_bridge.writers.planar import KeySection
from ct_triage.dicom_bridge.writers.seg import (
    SEGMENT_CONSOLIDATION,
    SEGMENT_GGO,
    SEGMENT_LEFT_LUNG,
    SEGMENT_RIGHT_LUNG,
    with_type2_defaults,
)
from ct_triage.dicom_bridge.writers.sr_content import (
    MEASUREMENT_DECIMALS,
    SrRequest,
    algorithm_identification,
    device_uid,
    disclaimer_container,
    machine_sr,
    observation_context,
    round_measurement,
    section_refs,
    separate_containers,
)
from ct_triage.dicom_bridge.writers.sr_outlines import (
    OUTLINES_DESCRIPTION,
    VIEWER_OUTLINE_IDENTIFIER,
    write_outlines_sr,
)
from ct_triage.models.identity import DISCLAIMER, DISCLAIMER_SHORT, ModelIdentity

__all__ = [
    "MEASUREMENT_DECIMALS",
    "NOT_ANALYSED_DESCRIPTION",
    "OUTLINES_DESCRIPTION",
    "SERIES_DESCRIPTION",
    "VIEWER_OUTLINE_IDENTIFIER",
    "NotAnalysedSrRequest",
    "SrRequest",
    "build_measurement_report",
    "device_uid",
    "round_measurement",
    "separate_containers",
    "write_not_analysed_sr",
    "write_outlines_sr",
    "write_sr",
]

logger = logging.getLogger(__name__)

#: Series Description of the SR (LO, at most 64 characters).
SERIES_DESCRIPTION: Final = f"AI lung measurements SR - {DISCLAIMER_SHORT}"[:64]


def _measurement(
    name: Code,
    value: float,
    unit: Code,
    algorithm: hd.sr.AlgorithmIdentification,
    finding_sites: list[hd.sr.FindingSite] | None = None,
) -> hd.sr.Measurement:
    return hd.sr.Measurement(
        name=name,
        value=round_measurement(value),
        unit=unit,
        algorithm_id=algorithm,
        finding_sites=finding_sites,
    )


def _segment_group(
    req: SrRequest,
    segment_number: int,
    finding_type: Code,
    finding_category: Code,
    measurements: list[hd.sr.Measurement],
    finding_sites: list[hd.sr.FindingSite] | None,
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    segment = hd.sr.ReferencedSegment(
        sop_class_uid=str(req.seg.SOPClassUID),
        sop_instance_uid=str(req.seg.SOPInstanceUID),
        segment_number=segment_number,
        source_series=hd.sr.SourceSeriesForSegmentation(str(req.source[0].SeriesInstanceUID)),
    )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier=f"{finding_type.meaning} (segment {segment_number})"
        ),
        referenced_segment=segment,
        finding_type=finding_type,
        finding_category=finding_category,
        finding_sites=finding_sites,
        algorithm_id=algorithm,
        measurements=measurements,
    )


def _lung_group(
    req: SrRequest, side: str, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    q = req.quantification
    if side == "right":
        number, lung, laterality = SEGMENT_RIGHT_LUNG, codes.RIGHT_LUNG, codes.RIGHT
        volume, percent = q.lung_volume_ml.right, q.percent_involvement.right
    else:
        number, lung, laterality = SEGMENT_LEFT_LUNG, codes.LEFT_LUNG, codes.LEFT
        volume, percent = q.lung_volume_ml.left, q.percent_involvement.left
    measurements = [
        _measurement(codes.VOLUME, volume, codes.UNIT_ML, algorithm),
        _measurement(codes.PERCENT_INVOLVEMENT, percent, codes.UNIT_PERCENT, algorithm),
    ]
    for zone in q.zones:
        if zone.lung != side:
            continue
        site = hd.sr.FindingSite(anatomic_location=codes.ZONES[zone.zone], laterality=laterality)
        measurements.append(
            _measurement(
                codes.PERCENT_INVOLVEMENT,
                zone.percent_involvement,
                codes.UNIT_PERCENT,
                algorithm,
                finding_sites=[site],
            )
        )
    return _segment_group(
        req, number, lung, codes.ANATOMICAL_STRUCTURE, measurements, None, algorithm
    )


def _lesion_group(
    req: SrRequest, kind: str, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    q = req.quantification
    if kind == "ggo":
        number, finding, volume = SEGMENT_GGO, codes.GROUND_GLASS_OPACITY, q.lesion_volume_ml.ggo
    else:
        number, finding, volume = (
            SEGMENT_CONSOLIDATION,
            codes.CONSOLIDATION,
            q.lesion_volume_ml.consolidation,
        )
    return _segment_group(
        req,
        number,
        finding,
        codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        [_measurement(codes.VOLUME, volume, codes.UNIT_ML, algorithm)],
        [hd.sr.FindingSite(anatomic_location=codes.LUNG)],
        algorithm,
    )


def _whole_lung_group(
    req: SrRequest, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    q = req.quantification
    lung_site = [hd.sr.FindingSite(anatomic_location=codes.LUNG)]
    findings = q.lesion_volume_ml.total > 0
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Both lungs"),
        finding_type=codes.LUNG,
        finding_category=codes.ANATOMICAL_STRUCTURE,
        finding_sites=lung_site,
        algorithm_id=algorithm,
        measurements=[
            _measurement(codes.VOLUME, q.lung_volume_ml.total, codes.UNIT_ML, algorithm),
            _measurement(
                codes.PERCENT_INVOLVEMENT,
                q.percent_involvement.total,
                codes.UNIT_PERCENT,
                algorithm,
            ),
            _measurement(
                codes.SEVERITY_SCORE, float(q.severity_score), codes.UNIT_SCORE, algorithm
            ),
            _measurement(
                codes.TRIAGE_PRIORITY, float(q.triage.priority), codes.UNIT_RANK, algorithm
            ),
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=codes.TRIAGE_CATEGORY, value=codes.TRIAGE_VALUES[q.triage]
            ),
            hd.sr.QualitativeEvaluation(
                name=codes.SUMMARY_OF_ANALYSES,
                value=codes.analyses_summary(reliable=q.quality.reliable, findings=findings),
            ),
        ],
    )


def _all_lesions_group(
    req: SrRequest, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    q = req.quantification
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier="Lesions of both lungs (GGO + consolidation)"
        ),
        finding_type=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        finding_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.LUNG)],
        algorithm_id=algorithm,
        measurements=[
            _measurement(codes.VOLUME, q.lesion_volume_ml.total, codes.UNIT_ML, algorithm)
        ],
    )


def _planar_group(
    req: SrRequest, section: KeySection, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410: the outline of a lung's largest lesion cross-section and its area."""
    refs = section_refs(req, section)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=section.outline,
        source_image=refs.source_image,
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier=f"Largest lesion section, {section.side} lung"
        ),
        referenced_region=region,
        finding_type=refs.finding,
        finding_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        finding_sites=[hd.sr.FindingSite(anatomic_location=refs.lung)],
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(
                name=codes.AREA,
                value=round_measurement(section.area_mm2),
                unit=codes.UNIT_MM2,
                algorithm_id=algorithm,
            )
        ],
    )


def build_measurement_report(req: SrRequest) -> hd.sr.MeasurementReport:
    """Build the TID 1500 content tree (see the module docstring for its layout)."""
    model = req.model
    algorithm = algorithm_identification(model)
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(model),
        procedure_reported=codes.CT_CHEST,
        imaging_measurements=[
            _lung_group(req, "right", algorithm),
            _lung_group(req, "left", algorithm),
            _lesion_group(req, "ggo", algorithm),
            _lesion_group(req, "consolidation", algorithm),
            _whole_lung_group(req, algorithm),
            _all_lesions_group(req, algorithm),
            *(_planar_group(req, section, algorithm) for section in req.sections),
        ],
        title=codes.IMAGING_MEASUREMENT_REPORT,
    )
    report[0].ContentSequence.append(disclaimer_container(req.quantification))
    return report


def write_sr(req: SrRequest) -> hd.sr.Comprehensive3DSR:
    """Build the Comprehensive 3D SR (PS3.3 A.35.13) carrying the TID 1500 report.

    Parameters
    ----------
    req
        The validated request.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        A ``pydicom.Dataset`` subclass in the source's study, new series, Completion Flag
        COMPLETE, Verification Flag UNVERIFIED (a machine result nobody has signed). The
        Current Requested Procedure Evidence Sequence lists the source CT and the SEG.
    """
    t0 = time.perf_counter()
    evidence = [*with_type2_defaults(req.source), req.seg]
    sr = machine_sr(
        evidence=evidence,
        content=build_measurement_report(req),
        series_number=req.series_number,
        instance_number=req.instance_number,
        series_description=SERIES_DESCRIPTION,
        model=req.model,
        previous_versions=req.previous_versions,
    )
    logger.info("SR built: %d evidence instances, %.2f s", len(evidence), time.perf_counter() - t0)
    return sr


@dataclass(frozen=True, slots=True)
class NotAnalysedSrRequest:
    """What :func:`write_not_analysed_sr` needs, validated on construction.

    Parameters
    ----------
    evidence
        Headers of the study's instances the decision was about (at least one); patient
        and study attributes are copied from the first.
    reason
        One line for people: why the study was not analysed.
    model
        The software's model (device observer), though it produced no result.
    series_number
        Series Number of the new SR series (IS).
    """

    evidence: tuple[Dataset, ...]
    reason: str
    model: ModelIdentity
    series_number: int = 9002

    def __post_init__(self) -> None:
        if not self.evidence:
            raise ValueError("evidence must contain at least one header")
        study = self.evidence[0].get("StudyInstanceUID")
        if not study or any(ds.get("StudyInstanceUID") != study for ds in self.evidence):
            raise ValueError("evidence must come from one study")
        if not self.reason.strip():
            raise ValueError("reason must not be empty")
        if not 0 < self.series_number < 2**31:
            raise ValueError("series_number must be a positive IS value")


#: Series Description of a "not analysed" SR.
NOT_ANALYSED_DESCRIPTION: Final = f"AI not analysed SR - {DISCLAIMER_SHORT}"[:64]


def write_not_analysed_sr(req: NotAnalysedSrRequest) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 report without measurements: "Not analysed: REASON".

    One TID 1501 group (finding: lung) holds the Summary of Analyses "No algorithms
    succeeded; without findings" (DCM 111065 / DCM 111245, CID 6047); the Qualitative
    Evaluations container (TID 1500 row 12) holds the reason as a TEXT Comment and the
    disclaimer, so a PACS shows the radiologist that the
    study was seen and skipped, and why.
    """
    verdict = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Not analysed"),
        finding_type=codes.LUNG,
        finding_category=codes.ANATOMICAL_STRUCTURE,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=codes.SUMMARY_OF_ANALYSES, value=codes.NONE_SUCCEEDED)
        ],
    )
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(req.model),
        procedure_reported=codes.CT_CHEST,
        imaging_measurements=[verdict],
        title=codes.IMAGING_MEASUREMENT_REPORT,
    )
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=codes.COMMENT,
                value=text[:1024],
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
            for text in (f"Not analysed: {req.reason}", DISCLAIMER)
        ]
    )
    report[0].ContentSequence.append(container)
    return machine_sr(
        evidence=with_type2_defaults(req.evidence),
        content=report,
        series_number=req.series_number,
        instance_number=1,
        series_description=NOT_ANALYSED_DESCRIPTION,
        model=req.model,
    )
