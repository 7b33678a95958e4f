"""The one float-rounding walk of report.json and of the evaluation JSON (issue 20)."""

from __future__ import annotations

import json

from ct_triage.dicom_bridge.writers.sr import round_measurement
from ct_triage.models.rounding import round_tree


def test_round_tree_applies_the_callers_rule_to_every_float() -> None:
    tree = {"a": 1.23456789, "b": [0.125, (2.5, -0.0001)], "n": 3, "flag": True, "s": "x"}
    assert round_tree(tree, round_measurement) == {
        "a": 1.23,
        "b": [0.12, [2.5, 0.0]],
        "n": 3,
        "flag": True,
        "s": "x",
    }
    assert round_tree(tree, lambda v: round(v, 6)) == {
        "a": 1.234568,
        "b": [0.125, [2.5, -0.0001]],
        "n": 3,
        "flag": True,
        "s": "x",
    }


def test_the_report_rule_writes_no_negative_zero_the_evaluation_rule_keeps_it() -> None:
    """The two rules differ on purpose: report.json matches the SR, which never says -0."""
    assert json.dumps(round_tree([-0.0001], round_measurement)) == "[0.0]"
    assert json.dumps(round_tree([-0.0000001], lambda v: round(v, 6))) == "[-0.0]"
