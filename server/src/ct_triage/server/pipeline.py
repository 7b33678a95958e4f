"""The one function that runs a study through every step (DESIGN.md, "The flow").

Both the CLI (``ct-triage analyze``) and the server's workers call :func:`analyze_study`;
neither adds logic of its own. Each step lives in the module that owns it:

``inputs → select → load → lungs → lesions (runtime) → postprocess → quantify → writers``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset

from ct_triage.dicom_bridge import inputs, select
from ct_triage.dicom_bridge.load import LoadedSeries, load_series
from ct_triage.dicom_bridge.writers.overlay import (
    OverlayRequest,
    write_overlay_series,
    write_preview_png,
)
from ct_triage.dicom_bridge.writers.seg import SegRequest, write_seg
from ct_triage.dicom_bridge.writers.sr import SrRequest, round_measurement, write_sr
from ct_triage.models.identity import DISCLAIMER, PRODUCT_NAME, PRODUCT_VERSION, ModelIdentity
from ct_triage.models.lesions import LesionSegmenter
from ct_triage.models.lungs import check_contains_lungs, segment_lungs
from ct_triage.models.postprocess import combine
from ct_triage.models.quantify import Quantification, TriageThresholds, quantify
from ct_triage.server.outputs import REPORT_NAME, atomic_output_dir
from ct_triage.server.timing import StageTimer

logger = logging.getLogger(__name__)

#: Version of the ``report.json`` layout; bump on any incompatible change.
SCHEMA_VERSION = "1.0"


@dataclass(frozen=True, slots=True)
class AnalysisOptions:
    """What a caller may vary per analysis (built from :class:`~ct_triage.server.settings.Settings`)."""

    rules: select.SelectionRules
    thresholds: TriageThresholds
    overlay_slices: str = "key"


@dataclass(frozen=True, slots=True)
class AnalysisResult:
    """Where the results are and what they say."""

    out_dir: Path
    report: dict[str, Any]


def _round_tree(value: Any) -> Any:
    """Round every float the way the SR does, so report.json and the SR agree exactly."""
    if isinstance(value, float):
        return round_measurement(value)
    if isinstance(value, dict):
        return {k: _round_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_round_tree(v) for v in value]
    return value


def build_report(
    *,
    series: LoadedSeries,
    choice: select.SeriesChoice,
    model: ModelIdentity,
    quant: Quantification,
    seg: Dataset,
    sr: Dataset,
    overlay: list[Dataset],
    timings: dict[str, float],
) -> dict[str, Any]:
    """Assemble ``report.json`` (see DESIGN.md, "Contracts")."""
    q = _round_tree(quant.to_dict())
    return {
        "schema_version": SCHEMA_VERSION,
        "disclaimer": DISCLAIMER,
        "product": {"name": PRODUCT_NAME, "version": PRODUCT_VERSION},
        "study_instance_uid": series.study_instance_uid,
        "series_instance_uid": series.series_instance_uid,
        "frame_of_reference_uid": series.frame_of_reference_uid,
        "series_number": series.series_number,
        "series_description": series.series_description,
        "series_selection": [v.as_dict() for v in choice.verdicts],
        "volume": {
            "shape_zyx": list(series.volume.shape),
            "spacing_mm_zyx": [round(s, 4) for s in series.volume.spacing],
        },
        "model": {
            "name": model.name,
            "version": model.version,
            "sha256": model.sha256,
            "execution_provider": model.provider,
        },
        "lung_volume_ml": q["lung_volume_ml"],
        "lesion_volume_ml": q["lesion_volume_ml"],
        "percent_involvement": q["percent_involvement"],
        "zones": q["zones"],
        "severity_score": q["severity_score"],
        "severity_regions": q["severity_regions"],
        "triage": q["triage"],
        "timings_s": timings,
        "outputs": {
            "seg": {"file": "seg.dcm", "sop_instance_uid": str(seg.SOPInstanceUID),
                    "series_instance_uid": str(seg.SeriesInstanceUID)},
            "sr": {"file": "sr.dcm", "sop_instance_uid": str(sr.SOPInstanceUID),
                   "series_instance_uid": str(sr.SeriesInstanceUID)},
            "overlay": {
                "folder": "overlay",
                "series_instance_uid": str(overlay[0].SeriesInstanceUID) if overlay else None,
                "sop_instance_uids": [str(ds.SOPInstanceUID) for ds in overlay],
            },
            "preview": "preview.png",
        },
    }
