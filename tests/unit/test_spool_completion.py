"""The spool package: its completion rules as a table, its public names, an old index file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from dicom_factory import SeriesSpec, make_slice
from pydicom.uid import generate_uid

import ct_triage.dicom_bridge.spool as spool_package
from ct_triage.dicom_bridge.spool import SeriesState, Spool
from ct_triage.dicom_bridge.spool.completion import CompletionRules

RULES = CompletionRules(
    quiet_period_s=5.0, incomplete_after_s=50.0, settle_s=1.0, aborted_wait_s=300.0
)


@pytest.mark.parametrize(
    ("idle_s", "sender_done", "aborted", "count", "expected", "rule"),
    [
        # 1. aborted: held whatever else is known, until aborted_wait_s
        (299.0, True, True, 10, 10, None),
        (300.0, False, True, 3, None, "aborted-timeout"),
        # 2. expected count: settle once all are there, else the incomplete timeout
        (0.9, False, False, 10, 10, None),
        (1.0, False, False, 10, 10, "expected-count"),
        (1.0, True, False, 9, 10, None),  # a release does not beat a known shortfall
        (49.9, False, False, 9, 10, None),
        (50.0, False, False, 9, 10, "incomplete-timeout"),
        # 3. the sender released the association that carried the series
        (0.9, True, False, 4, None, None),
        (1.0, True, False, 4, None, "association-released"),
        # 4. the quiet period
        (4.9, False, False, 4, None, None),
        (5.0, False, False, 4, None, "quiet-period"),
    ],
)
def test_the_first_completion_rule_that_applies_wins(
    idle_s: float,
    sender_done: bool,
    aborted: bool,
    count: int,
    expected: int | None,
    rule: str | None,
) -> None:
    got = RULES.rule(
        idle_s=idle_s, sender_done=sender_done, aborted=aborted, count=count, expected=expected
    )
    assert got == rule


def test_the_waits_that_bound_every_series() -> None:
    assert RULES.settled_after_s == 300.0
    assert RULES.shortest_wait_s == 1.0


def test_the_package_exports_the_names_the_module_did() -> None:
    names = {
        "IGNORED_SOP_CLASSES",
        "InstanceHeader",
        "PurgeReport",
        "ReadySeries",
        "SeriesState",
        "Spool",
        "StoreAction",
        "StoreOutcome",
        "read_instance_header",
    }
    assert set(spool_package.__all__) == names
    assert all(hasattr(spool_package, name) for name in names)


def test_an_index_written_before_the_sender_columns_is_upgraded(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    root.mkdir()
    with sqlite3.connect(root / "spool.db") as old:  # the series table before issue 16
        old.execute(
            "CREATE TABLE series (series_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, "
            "state TEXT NOT NULL, generation INTEGER NOT NULL DEFAULT 1, "
            "first_received REAL NOT NULL, last_received REAL NOT NULL, "
            "claimed_generation INTEGER, result_ref TEXT, fail_reason TEXT, "
            "calling_ae TEXT NOT NULL DEFAULT '')"
        )
    old.close()
    study, series = generate_uid(), generate_uid()
    spec = SeriesSpec(n_slices=2, with_pixels=False)
    with Spool(root, quiet_period_s=5.0, settle_s=1.0) as spool:
        for index in range(2):
            ds = make_slice(
                spec, index, study_uid=study, series_uid=series, frame_of_reference_uid="1.2"
            )
            spool.store(ds, now=1000.0)
        spool.association_ended({series: 2}, released=True, now=1000.0)
        (ready,) = spool.due(now=1001.0)
        assert (ready.series_uid, ready.completed_by) == (series, "association-released")
        assert spool.state(series) is SeriesState.RECEIVING
