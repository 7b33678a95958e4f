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
  lung volume, total lesion volume, total percent involvement, severity score (0-25) and
  the triage category as a coded qualitative evaluation;
* TID 1500 row 12 "Qualitative Evaluations" holding the disclaimer as a TEXT Comment.

Numbers are rounded with :func:`round_measurement`, which ``report.json`` also uses, so both
carry exactly the same values. Concepts without a standard code use the private scheme
``99CTTRIAGE`` (declared in Coding Scheme Identification Sequence); see
:mod:`ct_triage.dicom_bridge.writers.codes`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Final

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code
from pydicom.uid import SegmentationStorage, generate_uid

from ct_triage.dicom_bridge.writers import codes
from ct_triage.dicom_bridge.writers.seg import (
    SEGMENT_CONSOLIDATION,
    SEGMENT_GGO,
    SEGMENT_LEFT_LUNG,
    SEGMENT_RIGHT_LUNG,
    output_character_set,
    validate_source,
    with_type2_defaults,
)
from ct_triage.models.identity import (
    DISCLAIMER,
    DISCLAIMER_SHORT,
    PRODUCT_NAME,
    ModelIdentity,
)
from ct_triage.models.quantify import Quantification

logger = logging.getLogger(__name__)

#: Decimal places of every reported measurement (mL and %), in the SR and in report.json.
MEASUREMENT_DECIMALS: Final = 2

#: Series Description of the SR (LO, at most 64 characters).
SERIES_DESCRIPTION: Final = f"AI lung measurements SR - {DISCLAIMER_SHORT}"[:64]


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
    """Everything :func:`write_sr` needs, validated on construction.

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
    """

    source: tuple[Dataset, ...]
    seg: Dataset
    quantification: Quantification
    model: ModelIdentity
    series_number: int = 9002
    instance_number: int = 1
    previous_versions: tuple[Dataset, ...] = ()

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


def _algorithm(model: ModelIdentity) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=model.name[:64],
        version=model.version[:64],
        family=codes.ARTIFICIAL_INTELLIGENCE,
        manufacturer=codes.MANUFACTURER,
    )


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
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier=codes.LUNG_ASSESSMENT.meaning
        ),
        finding_type=codes.LUNG,
        finding_category=codes.ANATOMICAL_STRUCTURE,
        finding_sites=lung_site,
        algorithm_id=algorithm,
        measurements=[
            _measurement(codes.VOLUME, q.lung_volume_ml.total, codes.UNIT_ML, algorithm),
            _measurement(codes.LESION_VOLUME, q.lesion_volume_ml.total, codes.UNIT_ML, algorithm),
            _measurement(
                codes.PERCENT_INVOLVEMENT,
                q.percent_involvement.total,
                codes.UNIT_PERCENT,
                algorithm,
            ),
            _measurement(
                codes.SEVERITY_SCORE, float(q.severity_score), codes.UNIT_SCORE, algorithm
            ),
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=codes.TRIAGE_CATEGORY, value=codes.TRIAGE_VALUES[q.triage]
            ),
            hd.sr.QualitativeEvaluation(
                name=codes.SEGMENTATION_QUALITY,
                value=(
                    codes.SEGMENTATION_RELIABLE
                    if q.quality.reliable
                    else codes.SEGMENTATION_UNRELIABLE
                ),
            ),
        ],
    )


def _disclaimer_container(q: Quantification) -> hd.sr.ContainerContentItem:
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


def build_measurement_report(req: SrRequest) -> hd.sr.MeasurementReport:
    """Build the TID 1500 content tree (see the module docstring for its layout)."""
    model = req.model
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
    algorithm = _algorithm(model)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.CT_CHEST,
        imaging_measurements=[
            _lung_group(req, "right", algorithm),
            _lung_group(req, "left", algorithm),
            _lesion_group(req, "ggo", algorithm),
            _lesion_group(req, "consolidation", algorithm),
            _whole_lung_group(req, algorithm),
        ],
        title=codes.IMAGING_MEASUREMENT_REPORT,
    )
    report[0].ContentSequence.append(_disclaimer_container(req.quantification))
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
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=build_measurement_report(req),
        series_instance_uid=hd.UID(),
        series_number=req.series_number,
        sop_instance_uid=hd.UID(),
        instance_number=req.instance_number,
        manufacturer=codes.MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=SERIES_DESCRIPTION,
        previous_versions=list(req.previous_versions) or None,
        specific_character_set=output_character_set(req.source[0]),
    )
    sr.ManufacturerModelName = req.model.algorithm_label
    sr.SoftwareVersions = codes.SOFTWARE_VERSION
    sr.CodingSchemeIdentificationSequence = [codes.private_coding_scheme_item()]
    logger.info("SR built: %d evidence instances, %.2f s", len(evidence), time.perf_counter() - t0)
    return sr
