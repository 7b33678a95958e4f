"""Running the model on the cases of ``ct-triage evaluate`` and scoring it.

The metrics are defined in :mod:`ct_triage.models.evaluation`; the Dice convention in
:mod:`ct_triage.models.metrics`.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ct_triage.models.errors import InferenceError, InvalidInput
from ct_triage.models.evaluation.cases import NOMINAL_SPACING_MM, EvaluationCase, load_case
from ct_triage.models.identity import DISCLAIMER, PRODUCT_NAME, PRODUCT_VERSION, ModelIdentity
from ct_triage.models.metrics import class_dice, dice, percent_involved
from ct_triage.models.segmentation import LesionLabel, Segmentation
from ct_triage.models.volume import Volume

if TYPE_CHECKING:
    from ct_triage.models.analysis import LesionModel

__all__ = [
    "SCHEMA_VERSION",
    "SUMMARY_METRICS",
    "CaseResult",
    "EvaluationReport",
    "SegmentFn",
    "Summary",
    "evaluate",
    "score_case",
]

logger = logging.getLogger(__name__)

#: Version of the evaluation JSON layout; bump on any incompatible change.
SCHEMA_VERSION = "1.0"

#: Summary metrics, in table order: each is the mean over cases of the per-case value.
SUMMARY_METRICS: tuple[str, ...] = (
    "lesion_dice",
    "ggo_dice",
    "consolidation_dice",
    "lung_dice",
    "poi_abs_error_pp",
)


class SegmentFn(Protocol):
    """The signature of :func:`ct_triage.models.analysis.segment` (injectable for tests)."""

    def __call__(
        self, volume: Volume, lesion_model: LesionModel, *, require_lungs: bool = True
    ) -> Segmentation: ...


@dataclass(frozen=True, slots=True)
class CaseResult:
    """The scores of one case; a metric the truth does not allow is ``None``.

    Volumes (``*_ml``) are given only for 3-D cases of known spacing.
    """

    file: str
    shape: tuple[int, ...]
    dims: int
    spacing_mm: tuple[float | None, ...]
    spacing_known: bool
    has_lesion_mask: bool
    has_lesion_class: bool
    has_lung_mask: bool
    lesion_dice: float | None
    ggo_dice: float | None
    consolidation_dice: float | None
    lung_dice: float | None
    pred_percent_involvement: float | None
    true_percent_involvement: float | None
    poi_abs_error_pp: float | None
    pred_lung_ml: float | None
    true_lung_ml: float | None
    pred_lesion_ml: float | None
    true_lesion_ml: float | None
    seconds: float

    def metric(self, name: str) -> float | None:
        """The value of one of :data:`SUMMARY_METRICS`."""
        value: float | None = getattr(self, name)
        return value

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (one entry of ``cases``)."""
        return {
            "file": self.file,
            "shape": list(self.shape),
            "dims": self.dims,
            "spacing_mm": list(self.spacing_mm),
            "spacing_known": self.spacing_known,
            "truth": {
                "lesion_mask": self.has_lesion_mask,
                "lesion_class": self.has_lesion_class,
                "lung_mask": self.has_lung_mask,
            },
            "metrics": {name: self.metric(name) for name in SUMMARY_METRICS},
            "percent_involvement": {
                "predicted": self.pred_percent_involvement,
                "true": self.true_percent_involvement,
            },
            "volume_ml": {
                "predicted_lung": self.pred_lung_ml,
                "true_lung": self.true_lung_ml,
                "predicted_lesion": self.pred_lesion_ml,
                "true_lesion": self.true_lesion_ml,
            },
            "seconds": self.seconds,
        }


@dataclass(frozen=True, slots=True)
class Summary:
    """Mean of each of :data:`SUMMARY_METRICS` over the cases that have it, and their count."""

    n_cases: int
    means: dict[str, float | None]
    counts: dict[str, int]

    @classmethod
    def of(cls, cases: tuple[CaseResult, ...]) -> Summary:
        """Summarise case results."""
        means: dict[str, float | None] = {}
        counts: dict[str, int] = {}
        for name in SUMMARY_METRICS:
            values = [v for v in (c.metric(name) for c in cases) if v is not None]
            means[name] = statistics.fmean(values) if values else None
            counts[name] = len(values)
        return cls(n_cases=len(cases), means=means, counts=counts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (``summary``)."""
        return {"n_cases": self.n_cases, **self.means, "n_cases_averaged": dict(self.counts)}


@dataclass(frozen=True, slots=True)
class EvaluationReport:
    """The result of :func:`evaluate`."""

    data_dir: Path
    identity: ModelIdentity
    cases: tuple[CaseResult, ...]
    summary: Summary
    disclaimer: str = DISCLAIMER

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (the content of ``OUT.json``)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "product": {"name": PRODUCT_NAME, "version": PRODUCT_VERSION},
            "model": {
                "name": self.identity.name,
                "version": self.identity.version,
                "sha256": self.identity.sha256,
                "provider": self.identity.provider,
            },
            "data_dir": str(self.data_dir),
            "dice_convention": "1.0 when truth and prediction are both empty, 0.0 when one is",
            "summary": self.summary.to_dict(),
            "cases": [c.to_dict() for c in self.cases],
            "disclaimer": self.disclaimer,
        }


def score_case(
    case: EvaluationCase, segmentation: Segmentation, seconds: float = 0.0
) -> CaseResult:
    """Score one prediction against the truths of its case (see the module docstring).

    Parameters
    ----------
    case
        The validated case.
    segmentation
        The prediction on the grid of ``case.volume``.
    seconds
        Time the prediction took (reported as is).

    Raises
    ------
    InferenceError
        When the prediction is not on the grid of the case.
    """
    if segmentation.lungs.shape != case.volume.shape:
        raise InferenceError(
            f"{case.file}: prediction shape {segmentation.lungs.shape} differs from the "
            f"volume shape {case.volume.shape}"
        )
    pred_lungs = segmentation.lungs > 0
    pred_lesions = segmentation.lesions > 0
    lesion_truth = case.lesion_truth

    lesion_d = dice(lesion_truth, pred_lesions) if lesion_truth is not None else None
    ggo_d = cons_d = None
    if case.lesion_class is not None:
        ggo_d = class_dice(case.lesion_class, segmentation.lesions, int(LesionLabel.GGO))
        cons_d = class_dice(case.lesion_class, segmentation.lesions, int(LesionLabel.CONSOLIDATION))
    lung_d = dice(case.lung_mask, pred_lungs) if case.lung_mask is not None else None

    pred_poi = percent_involved(pred_lesions, pred_lungs)
    true_poi = None
    if case.lung_mask is not None and lesion_truth is not None:
        true_poi = percent_involved(lesion_truth, case.lung_mask)
    poi_err = abs(pred_poi - true_poi) if pred_poi is not None and true_poi is not None else None

    ml: dict[str, float | None] = dict.fromkeys(("pl", "tl", "ples", "tles"))
    if case.dims == 3 and case.spacing_known:
        voxel_ml = case.volume.voxel_volume_ml
        ml["pl"] = int(np.count_nonzero(pred_lungs)) * voxel_ml
        ml["ples"] = int(np.count_nonzero(pred_lesions)) * voxel_ml
        if case.lung_mask is not None:
            ml["tl"] = int(np.count_nonzero(case.lung_mask)) * voxel_ml
        if lesion_truth is not None:
            ml["tles"] = int(np.count_nonzero(lesion_truth)) * voxel_ml

    return CaseResult(
        file=case.file,
        shape=case.original_shape,
        dims=case.dims,
        spacing_mm=case.spacing_mm,
        spacing_known=case.spacing_known,
        has_lesion_mask=case.lesion_mask is not None,
        has_lesion_class=case.lesion_class is not None,
        has_lung_mask=case.lung_mask is not None,
        lesion_dice=lesion_d,
        ggo_dice=ggo_d,
        consolidation_dice=cons_d,
        lung_dice=lung_d,
        pred_percent_involvement=pred_poi,
        true_percent_involvement=true_poi,
        poi_abs_error_pp=poi_err,
        pred_lung_ml=ml["pl"],
        true_lung_ml=ml["tl"],
        pred_lesion_ml=ml["ples"],
        true_lesion_ml=ml["tles"],
        seconds=seconds,
    )


def _default_segment_fn() -> SegmentFn:
    # Imported on use: loading and scoring do not need the segmentation stack (lungs,
    # postprocess), and tests that inject ``segment_fn`` run without it.
    from ct_triage.models.analysis import segment

    return segment


def evaluate(
    data_dir: Path,
    lesion_model: LesionModel,
    identity: ModelIdentity,
    *,
    segment_fn: SegmentFn | None = None,
    nominal_spacing_mm: float = NOMINAL_SPACING_MM,
) -> EvaluationReport:
    """Score the model on every ``*.npz`` case directly inside ``data_dir``.

    Parameters
    ----------
    data_dir
        Folder of ``.npz`` cases (not searched recursively), read in file-name order.
    lesion_model
        The lesion segmenter (e.g. from :func:`ct_triage.models.lesions.load_lesion_segmenter`).
    identity
        Identity of ``lesion_model`` (name, version, sha256, execution provider), reported.
    segment_fn
        The compute path; :func:`ct_triage.models.analysis.segment` (the one ``analyze`` uses)
        when ``None``. Called as ``segment_fn(volume, lesion_model, require_lungs=False)``.
    nominal_spacing_mm
        Spacing given to the model for unknown axes and as the slice spacing of 2-D slices.

    Returns
    -------
    EvaluationReport
        Per-case scores and their summary.

    Raises
    ------
    InvalidInput
        ``data_dir`` is not a folder or has no ``.npz`` file, or a case is invalid (see
        :func:`load_case`); the message is one line naming the file. All cases are validated
        before the model runs, so a bad file fails fast.
    """
    if not data_dir.is_dir():
        raise InvalidInput(f"{data_dir}: not a folder of .npz cases")
    paths = sorted(p for p in data_dir.iterdir() if p.suffix.lower() == ".npz" and p.is_file())
    if not paths:
        raise InvalidInput(f"{data_dir}: no .npz files to evaluate")
    seg = segment_fn if segment_fn is not None else _default_segment_fn()

    # Validate everything first (cheap) so a broken file does not surface after an hour of
    # inference; cases are re-read one at a time below to keep memory flat.
    for path in paths:
        load_case(path, nominal_spacing_mm=nominal_spacing_mm)
    logger.info("evaluating %s on %d cases in %s", identity.algorithm_label, len(paths), data_dir)

    results: list[CaseResult] = []
    for i, path in enumerate(paths, start=1):
        case = load_case(path, nominal_spacing_mm=nominal_spacing_mm)
        start = time.perf_counter()
        segmentation = seg(case.volume, lesion_model, require_lungs=False)
        elapsed = time.perf_counter() - start
        result = score_case(case, segmentation, seconds=elapsed)
        logger.info(
            "case %d/%d %s: lesion_dice=%s lung_dice=%s (%.2f s)",
            i,
            len(paths),
            case.file,
            result.lesion_dice,
            result.lung_dice,
            elapsed,
        )
        results.append(result)
    cases = tuple(results)
    return EvaluationReport(
        data_dir=data_dir, identity=identity, cases=cases, summary=Summary.of(cases)
    )
