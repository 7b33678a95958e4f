"""``ct-triage evaluate DATA --json OUT.json``: score the model on a folder of ``.npz`` cases.

The input format is the one of ``../shared/data/README.md``: each ``*.npz`` file directly in
``DATA`` holds ``image`` (HU, 2-D ``(y, x)`` or 3-D ``(z, y, x)``), ``spacing`` (mm, same axis
order, ``NaN`` = unknown) and any of the truths ``lesion_mask`` (0/1), ``lesion_class``
(0 background, 1 ground-glass opacity, 2 consolidation) and ``lung_mask`` (0/1, covering the
lesions).

Every case runs through the same compute path as ``analyze``
(:func:`ct_triage.models.analysis.segment`, with ``require_lungs=False`` so that 2-D slices and
partial volumes are scored rather than declined). A 2-D slice is scored as a one-slice volume
``(1, y, x)``. Unknown spacing is replaced by :data:`NOMINAL_SPACING_MM` for the model and
recorded as ``spacing_known: false``; millilitre figures are then not reported (nor for 2-D
slices, whose thickness is unknown), while percentages, being ratios, still are.

Per-case metrics (see :mod:`ct_triage.models.metrics` for the Dice convention: 1.0 when truth
and prediction are both empty, 0.0 when exactly one is):

* ``lesion_dice``: predicted ``lesions > 0`` vs truth ``lesion_mask > 0 or lesion_class > 0``;
  computed when the case has ``lesion_mask`` or ``lesion_class``;
* ``ggo_dice`` / ``consolidation_dice``: predicted class map vs ``lesion_class``, class 1 / 2;
  computed for every case that has ``lesion_class`` (a case with neither truth nor prediction
  of the class scores 1.0);
* ``lung_dice``: predicted ``lungs > 0`` vs ``lung_mask``; computed when the case has
  ``lung_mask``;
* ``pred_percent_involvement`` (always, when the prediction has lung) and
  ``true_percent_involvement`` (when the case has ``lung_mask`` *and* a lesion truth): lesion
  voxels inside the lung / lung voxels x 100; ``poi_abs_error_pp`` is their absolute
  difference in percentage points, when both are defined.

The summary holds the mean over cases of each metric and the number of cases it averaged;
a metric no case allows is ``null`` with a count of 0.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from ct_triage.models.errors import InferenceError, InvalidInput
from ct_triage.models.identity import DISCLAIMER, PRODUCT_NAME, PRODUCT_VERSION, ModelIdentity
from ct_triage.models.metrics import class_dice, dice, percent_involved
from ct_triage.models.segmentation import LesionLabel, Segmentation
from ct_triage.models.volume import Volume

if TYPE_CHECKING:
    from ct_triage.models.analysis import LesionModel

__all__ = [
    "NOMINAL_SPACING_MM",
    "SCHEMA_VERSION",
    "SUMMARY_METRICS",
    "CaseResult",
    "EvaluationCase",
    "EvaluationReport",
    "SegmentFn",
    "Summary",
    "evaluate",
    "format_table",
    "load_case",
    "score_case",
    "write_json",
]

logger = logging.getLogger(__name__)

#: Version of the evaluation JSON layout; bump on any incompatible change.
SCHEMA_VERSION = "1.0"

#: Spacing (mm) given to the model for an axis whose spacing is unknown (``NaN``), and as the
#: slice spacing of a 2-D slice.
NOMINAL_SPACING_MM = 1.0

#: Summary metrics, in table order: each is the mean over cases of the per-case value.
SUMMARY_METRICS: tuple[str, ...] = (
    "lesion_dice",
    "ggo_dice",
    "consolidation_dice",
    "lung_dice",
    "poi_abs_error_pp",
)

#: Values each truth array may hold.
_ALLOWED_VALUES: dict[str, tuple[int, ...]] = {
    "lesion_mask": (0, 1),
    "lesion_class": (0, int(LesionLabel.GGO), int(LesionLabel.CONSOLIDATION)),
    "lung_mask": (0, 1),
}

#: HU floor: padding / outside-field-of-view values (e.g. -3024) become air, as the DICOM
#: loader does before ``analyze`` (see :class:`~ct_triage.models.volume.Volume`).
_AIR_HU = -1024


class SegmentFn(Protocol):
    """The signature of :func:`ct_triage.models.analysis.segment` (injectable for tests)."""

    def __call__(
        self, volume: Volume, lesion_model: LesionModel, *, require_lungs: bool = True
    ) -> Segmentation: ...


# --------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True, slots=True)
class EvaluationCase:
    """One validated ``.npz`` case, lifted to 3-D.

    Parameters
    ----------
    file
        File name (relative to the data folder).
    original_shape
        Shape of ``image`` in the file (2-D or 3-D).
    spacing_mm
        Spacing from the file in its own axis order, ``None`` for unknown axes.
    volume
        The HU volume given to the model; a 2-D slice becomes ``(1, y, x)``.
    lesion_mask, lesion_class, lung_mask
        Truths on the volume grid (``uint8``), ``None`` when the file has none.
    """

    file: str
    original_shape: tuple[int, ...]
    spacing_mm: tuple[float | None, ...]
    volume: Volume
    lesion_mask: npt.NDArray[np.uint8] | None
    lesion_class: npt.NDArray[np.uint8] | None
    lung_mask: npt.NDArray[np.uint8] | None

    @property
    def dims(self) -> int:
        """2 for a slice, 3 for a volume."""
        return len(self.original_shape)

    @property
    def spacing_known(self) -> bool:
        """Whether the file gave the spacing of every axis."""
        return all(s is not None for s in self.spacing_mm)

    @property
    def lesion_truth(self) -> npt.NDArray[np.bool_] | None:
        """Truth lesion voxels (``lesion_mask > 0`` or ``lesion_class > 0``), if any truth."""
        masks = [m > 0 for m in (self.lesion_mask, self.lesion_class) if m is not None]
        if not masks:
            return None
        return np.logical_or.reduce(masks) if len(masks) > 1 else masks[0]


def _invalid(path: Path, why: str) -> InvalidInput:
    return InvalidInput(f"{path.name}: {why}")


def _read_image(
    path: Path, image: npt.NDArray[Any]
) -> npt.NDArray[np.int16] | npt.NDArray[np.float32]:
    if image.ndim not in (2, 3):
        raise _invalid(path, f"image must be 2-D (y, x) or 3-D (z, y, x), got shape {image.shape}")
    if image.size == 0:
        raise _invalid(path, f"image is empty (shape {image.shape})")
    if image.dtype.kind not in "iuf":
        raise _invalid(path, f"image must hold numbers (HU), got dtype {image.dtype}")
    if image.dtype.kind == "f":
        if not np.all(np.isfinite(image)):
            raise _invalid(path, "image contains NaN or infinite values")
        return np.maximum(image.astype(np.float32), np.float32(_AIR_HU))
    info = np.iinfo(np.int16)
    if image.dtype != np.int16 and (int(image.min()) < info.min or int(image.max()) > info.max):
        return np.maximum(image.astype(np.float32), np.float32(_AIR_HU))
    return np.maximum(image.astype(np.int16), np.int16(_AIR_HU))


def _read_spacing(path: Path, raw: npt.NDArray[Any] | None, ndim: int) -> tuple[float | None, ...]:
    if raw is None:
        logger.warning("%s: no spacing; treating it as unknown", path.name)
        return (None,) * ndim
    if raw.dtype.kind not in "iuf":
        raise _invalid(path, f"spacing must be numbers (mm), got dtype {raw.dtype}")
    values = np.asarray(raw, dtype=np.float64).ravel()
    if values.size != ndim:
        raise _invalid(path, f"spacing has {values.size} values for a {ndim}-D image")
    out: list[float | None] = []
    for v in values.tolist():
        if math.isnan(v):
            out.append(None)
        elif not (math.isfinite(v) and v > 0):
            raise _invalid(
                path, f"spacing must be positive mm values or NaN, got {values.tolist()}"
            )
        else:
            out.append(float(v))
    return tuple(out)


def _read_mask(
    path: Path, name: str, raw: npt.NDArray[Any], shape: tuple[int, ...]
) -> npt.NDArray[np.uint8]:
    if raw.shape != shape:
        raise _invalid(path, f"{name} shape {raw.shape} does not match image shape {shape}")
    if raw.dtype.kind not in "biuf":
        raise _invalid(path, f"{name} must be an integer mask, got dtype {raw.dtype}")
    allowed = _ALLOWED_VALUES[name]
    ok = np.isin(raw, allowed)
    if not np.all(ok):
        bad = np.unique(raw[~ok])[:5].tolist()
        raise _invalid(path, f"{name} holds values {bad} outside the allowed set {list(allowed)}")
    return raw.astype(np.uint8)


def load_case(path: Path, *, nominal_spacing_mm: float = NOMINAL_SPACING_MM) -> EvaluationCase:
    """Read and validate one ``.npz`` case (format of ``../shared/data/README.md``).

    Parameters
    ----------
    path
        The ``.npz`` file.
    nominal_spacing_mm
        Spacing given to the model for unknown axes and as the slice spacing of a 2-D slice.

    Returns
    -------
    EvaluationCase
        The case, lifted to 3-D; HU below -1024 (padding) are set to -1024.

    Raises
    ------
    InvalidInput
        One line naming the file: unreadable archive, no ``image``, an image that is not 2-D or
        3-D, bad ``spacing``, a truth of another shape than the image or with values outside
        its allowed set.
    """
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise _invalid(path, "not an .npz archive (a bare .npy array?)")
        with loaded as npz:
            if "image" not in npz.files:
                raise _invalid(path, f"no 'image' array (arrays: {', '.join(npz.files) or 'none'})")
            raw = {k: npz[k] for k in ("image", "spacing", *_ALLOWED_VALUES) if k in npz.files}
    except InvalidInput:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        detail = " ".join(str(exc).split())
        raise _invalid(
            path, f"cannot read the .npz archive ({type(exc).__name__}: {detail})"
        ) from exc

    image = _read_image(path, raw["image"])
    shape = tuple(int(n) for n in image.shape)
    spacing = _read_spacing(path, raw.get("spacing"), image.ndim)
    masks = {
        name: _read_mask(path, name, raw[name], shape) for name in _ALLOWED_VALUES if name in raw
    }
    model_spacing = tuple(nominal_spacing_mm if s is None else s for s in spacing)
    if image.ndim == 2:
        image = image[np.newaxis]
        masks = {k: m[np.newaxis] for k, m in masks.items()}
        model_spacing = (nominal_spacing_mm, *model_spacing)
    z, y, x = model_spacing
    case = EvaluationCase(
        file=path.name,
        original_shape=shape,
        spacing_mm=spacing,
        volume=Volume(hu=image, spacing=(z, y, x)),
        lesion_mask=masks.get("lesion_mask"),
        lesion_class=masks.get("lesion_class"),
        lung_mask=masks.get("lung_mask"),
    )
    if case.lesion_mask is not None and case.lesion_class is not None:
        n_diff = int(np.count_nonzero((case.lesion_mask > 0) != (case.lesion_class > 0)))
        if n_diff:
            logger.warning(
                "%s: lesion_mask and lesion_class disagree on %d voxels; scoring their union",
                path.name,
                n_diff,
            )
    return case


# --------------------------------------------------------------------------------------------
# Scoring


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


# --------------------------------------------------------------------------------------------
# Output


def _round_tree(value: Any, digits: int = 6) -> Any:
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _round_tree(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_round_tree(v, digits) for v in value]
    return value


def write_json(report: EvaluationReport, path: Path) -> None:
    """Write ``report`` as JSON to ``path`` atomically (floats rounded to 6 decimals).

    Parameters
    ----------
    report
        The evaluation result.
    path
        Destination file; its parent folders are created.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_round_tree(report.to_dict()), indent=2, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("wrote %s", path)


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


_COLUMNS: tuple[tuple[str, str, Callable[[CaseResult], float | None], str], ...] = (
    ("lesion", "lesion_dice", lambda c: c.lesion_dice, ".3f"),
    ("ggo", "ggo_dice", lambda c: c.ggo_dice, ".3f"),
    ("consol", "consolidation_dice", lambda c: c.consolidation_dice, ".3f"),
    ("lung", "lung_dice", lambda c: c.lung_dice, ".3f"),
    ("poi_pred%", "", lambda c: c.pred_percent_involvement, ".2f"),
    ("poi_true%", "", lambda c: c.true_percent_involvement, ".2f"),
    ("poi_err_pp", "poi_abs_error_pp", lambda c: c.poi_abs_error_pp, ".2f"),
)


def format_table(report: EvaluationReport) -> str:
    """The human-readable table printed by ``ct-triage evaluate``.

    One row per case (Dice values, predicted and true percent of lung involved and their
    absolute error), then the mean and the number of cases averaged for each summary metric,
    the model identity and the disclaimer. ``-`` marks a value the truth does not allow.
    """
    name_w = max(len("file"), len("mean"), *(len(c.file) for c in report.cases))
    shape_w = max(len("shape"), *(len("x".join(map(str, c.shape))) for c in report.cases))
    widths = [max(len(title), 11) for title, *_ in _COLUMNS]
    header = f"{'file':<{name_w}}  {'shape':<{shape_w}}  " + "  ".join(
        f"{title:>{w}}" for (title, *_), w in zip(_COLUMNS, widths, strict=True)
    )
    lines = [header, "-" * len(header)]
    for c in report.cases:
        cells = "  ".join(
            f"{_fmt(get(c), spec):>{w}}"
            for (_, _, get, spec), w in zip(_COLUMNS, widths, strict=True)
        )
        lines.append(f"{c.file:<{name_w}}  {'x'.join(map(str, c.shape)):<{shape_w}}  {cells}")
    lines.append("-" * len(header))
    summary_cells = []
    for (_, key, _, spec), w in zip(_COLUMNS, widths, strict=True):
        if key:
            cell = f"{_fmt(report.summary.means[key], spec)} ({report.summary.counts[key]})"
        else:
            cell = ""
        summary_cells.append(f"{cell:>{w}}")
    lines.append(f"{'mean':<{name_w}}  {'(n)':<{shape_w}}  " + "  ".join(summary_cells))
    ident = report.identity
    provider = f", {ident.provider}" if ident.provider else ""
    lines.append("")
    lines.append(
        f"{report.summary.n_cases} cases; Dice = 1.0 when truth and prediction are both empty"
    )
    lines.append(f"model: {ident.algorithm_label} (sha256 {ident.sha256[:12]}{provider})")
    lines.append(report.disclaimer)
    return "\n".join(lines)
