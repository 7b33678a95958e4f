"""Rounding the floats of a JSON-ready tree, with the caller's rounding rule.

Two documents round their numbers, on purpose differently: ``report.json`` rounds every
measurement with the SR's rule
(:func:`ct_triage.dicom_bridge.writers.sr.round_measurement`: 2 decimals, ``-0.0`` written
``0.0``) so that the report and the SR agree exactly, and the evaluation JSON keeps 6
decimals (:mod:`ct_triage.models.evaluation.output`). Both walk the tree with
:func:`round_tree`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["round_tree"]


def round_tree(value: Any, round_float: Callable[[float], float]) -> Any:
    """A copy of ``value`` with every float replaced by ``round_float(float)``.

    Parameters
    ----------
    value
        A JSON-ready tree: dicts, lists, tuples (returned as lists) and scalars.
    round_float
        The rounding rule, applied to each ``float`` (``bool`` and ``int`` are kept).

    Returns
    -------
    Any
        The rounded tree; non-float leaves are returned as they are.
    """
    if isinstance(value, float):
        return round_float(value)
    if isinstance(value, dict):
        return {k: round_tree(v, round_float) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [round_tree(v, round_float) for v in value]
    return value
