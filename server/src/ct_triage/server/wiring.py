"""From the process settings to the compute objects: the model, the analysis options.

Every entry that analyses (the CLI verbs, the job workers, the API's process, the
benchmarks) builds them here, the same way.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ct_triage.dicom_bridge.select import SelectionRules
from ct_triage.models.errors import TriageError
from ct_triage.models.lesions import LesionSegmenter, load_lesion_segmenter
from ct_triage.server.pipeline import AnalysisOptions
from ct_triage.server.settings import Settings

__all__ = ["load_model", "options_from", "warm_up"]

logger = logging.getLogger(__name__)


def options_from(settings: Settings) -> AnalysisOptions:
    """Per-analysis options from the process settings."""
    return AnalysisOptions(
        rules=SelectionRules(
            min_slices=settings.min_slices,
            max_slice_thickness_mm=settings.max_slice_thickness_mm,
            require_original_primary=settings.require_original_primary,
        ),
        thresholds=settings.thresholds(),
        overlay_slices=settings.overlay_slices,
    )


def load_model(settings: Settings) -> LesionSegmenter:
    """Load the lesion model named by the settings (validated against its manifest)."""
    return load_lesion_segmenter(settings.runtime_config())


def warm_up(model: LesionSegmenter) -> float:
    """Run the network once on a blank batch, before the first study arrives.

    ONNX Runtime allocates its memory arena and picks its kernels on the first call; a
    server pays that at start-up instead of on the first study. Returns the seconds spent;
    a runtime that fails here (a Triton server not up yet) is logged, not fatal.
    """
    spec = model.manifest.input
    blank = np.zeros((max(1, model.batch_size), spec.channels, spec.height, spec.width), np.float32)
    t0 = time.perf_counter()
    try:
        model.predictor.predict(blank)
    except TriageError as exc:
        logger.warning("model warm-up skipped: %s", exc)
    return time.perf_counter() - t0
