"""The outline SR (``sr-outlines.dcm``): the largest lesion outline of each lung, for OHIF.

A Comprehensive 3D SR (PS3.3 A.35.13) holding a TID 1500 "Measurement Report" with one
TID 1501 "Measurement and Qualitative Evaluation Group" per lung with lesions: the Area
(TID 300) of its largest lesion cross-section, INFERRED FROM the closed POLYLINE SCOORD
(PS3.3 C.18.6) of its outline on the CT slice it lies on, the Tracking Identifier naming the
Cornerstone3D tool that draws it; plus the disclaimer (TID 1500 row 12).

It exists because OHIF 3.13 lists SR measurements only when every group has image
coordinates (the full report of :mod:`~ct_triage.dicom_bridge.writers.sr` has volumetric and
whole-lung groups without); OHIF loads it into its measurement panel once the reader answers
its "continue tracking measurements for this study?" prompt.
"""

from __future__ import annotations

from typing import Final

import highdicom as hd

from ct_triage.dicom_bridge.writers import codes
from ct_triage.dicom_bridge.writers.planar import KeySection
from ct_triage.dicom_bridge.writers.seg import with_type2_defaults
from ct_triage.dicom_bridge.writers.sr_content import (
    SrRequest,
    algorithm_identification,
    disclaimer_container,
    machine_sr,
    observation_context,
    round_measurement,
    section_refs,
)
from ct_triage.models.identity import DISCLAIMER_SHORT

#: Series Description of the outlines SR.
OUTLINES_DESCRIPTION: Final = f"AI lesion outlines SR - {DISCLAIMER_SHORT}"[:64]
#: Tracking Identifier of the outline groups in the outlines SR: the closed-polyline tool in
#: the "<tool source>:<tool>" form OHIF / Cornerstone3D use to load SR measurements into
#: their measurement panel.
VIEWER_OUTLINE_IDENTIFIER: Final = "Cornerstone3DTools@^0.1.0:PlanarFreehandROI"


def _outline_group(
    req: SrRequest, section: KeySection, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 group: the Area (TID 300) inferred from the outline SCOORD on its CT slice.

    The form Cornerstone3D / OHIF write and read back into their measurement panel (the
    SCOORD under the measurement, relationship INFERRED FROM, PS3.16 TID 300 row 14).
    """
    refs = section_refs(req, section)
    outline = hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=section.outline,
        source_image=refs.source_image,
    )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier=VIEWER_OUTLINE_IDENTIFIER
        ),
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
                referenced_coordinates=[outline],
            )
        ],
    )


def write_outlines_sr(req: SrRequest) -> hd.sr.Comprehensive3DSR:
    """A second TID 1500 SR holding only the lesion outlines of ``req`` (``sr-outlines.dcm``).

    OHIF (3.13) lists SR measurements only when every measurement group has image
    coordinates: a volumetric or whole-lung group (no SCOORD) makes it throw and blank the
    viewport. The full report (:func:`~ct_triage.dicom_bridge.writers.sr.write_sr`) keeps
    every group; this one, in its own series, carries the largest lesion outline of each
    lung as one TID 1501 group per lung (:func:`_outline_group`: the Area inferred from the
    outline SCOORD on its CT slice), plus the disclaimer, so a viewer's measurement panel
    lists them.

    Raises
    ------
    ValueError
        When ``req`` has no sections (no lesion: nothing to outline).
    """
    if not req.sections:
        raise ValueError("no sections to outline")
    algorithm = algorithm_identification(req.model)
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(req.model),
        procedure_reported=codes.CT_CHEST,
        imaging_measurements=[_outline_group(req, section, algorithm) for section in req.sections],
        title=codes.IMAGING_MEASUREMENT_REPORT,
    )
    report[0].ContentSequence.append(disclaimer_container(req.quantification))
    shown = sorted({section.slice_index for section in req.sections})
    return machine_sr(
        evidence=with_type2_defaults([req.source[k] for k in shown]),
        content=report,
        series_number=req.series_number + 3,
        instance_number=req.instance_number,
        series_description=OUTLINES_DESCRIPTION,
        model=req.model,
        character_set_of=req.source[0],
    )
