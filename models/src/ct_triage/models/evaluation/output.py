"""The outputs of ``ct-triage evaluate``: ``OUT.json`` and the printed table."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from ct_triage.models.durable import write_durably
from ct_triage.models.evaluation.scoring import CaseResult, EvaluationReport
from ct_triage.models.rounding import round_tree

__all__ = ["format_table", "write_json"]

logger = logging.getLogger(__name__)


def _six_decimals(value: float) -> float:
    return round(value, 6)


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
    text = json.dumps(round_tree(report.to_dict(), _six_decimals), indent=2, allow_nan=False) + "\n"
    write_durably(path, text.encode("utf-8"))
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
