"""The one pipeline call of every entry (issue 20 item 3): the push path's arguments, and the
bridge's own state store that the bridge split out."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dicom_factory import SeriesSpec, write_series

from ct_triage.dicom_bridge.select import SelectionRules
from ct_triage.models.quantify import TriageThresholds
from ct_triage.server.bridge_state import BridgeState
from ct_triage.server.pipeline import AnalysisOptions, NotSelected, analyze_study

OPTIONS = AnalysisOptions(rules=SelectionRules(min_slices=4), thresholds=TriageThresholds())


class _NoModel:
    """A lesion model that must not be reached."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the model was used ({name})")


def _series_uid(paths: list[Path]) -> str:
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)


def _study(folder: Path) -> tuple[str, str]:
    """A soft-tissue and a thin lung-kernel series of one study: (soft UID, lung UID)."""
    spec = SeriesSpec(n_slices=6, study_uid=pydicom.uid.generate_uid(), manufacturer="SIEMENS")
    soft = write_series(
        folder / "soft",
        replace(spec, spacing_mm=5.0, series_number=2, series_description="Thorax 5.0 Br40",
                kernel="Br40f"),
    )  # fmt: skip
    lung = write_series(
        folder / "lung",
        replace(spec, n_slices=12, spacing_mm=1.0, series_number=3,
                series_description="Thorax 1.0", kernel="Bl57d"),
    )  # fmt: skip
    return _series_uid(soft), _series_uid(lung)


def test_best_series_not_eligible_is_not_selected_and_nothing_is_written(tmp_path: Path) -> None:
    soft, lung = _study(tmp_path / "in")
    out = tmp_path / "out"
    asked: list[str] = []

    def folder(uid: str) -> Path:
        asked.append(uid)
        return out

    got = analyze_study(
        tmp_path / "in",
        folder,
        _NoModel(),
        OPTIONS,
        eligible_series={soft},
        supersedes={soft: {"result": "elsewhere"}},
    )
    assert isinstance(got, NotSelected)
    assert got.series_instance_uid == lung
    assert got.reason == f"not selected: {got.selection[0].label} is preferred"
    assert "Thorax 1.0" in got.reason
    assert [v.series_instance_uid for v in got.selection] == [lung, soft]
    assert not got.selection[1].taken
    assert got.selection[1].reason
    assert asked == []  # no result folder asked for
    assert not out.exists()


def test_eligible_best_series_goes_on_past_the_choice(tmp_path: Path) -> None:
    """With the best series eligible, the analysis goes on to the model (stopped here)."""
    soft, lung = _study(tmp_path / "in")
    with pytest.raises(AssertionError, match="the model was used"):
        analyze_study(
            tmp_path / "in", tmp_path / "out", _NoModel(), OPTIONS, eligible_series={soft, lung}
        )
    assert not (tmp_path / "out").exists()


def test_bridge_state_keeps_seen_studies_watermark_and_retractions(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    state = BridgeState(path)
    assert not state.seen("1.2.3")
    assert state.watermark() is None
    state.mark_seen("1.2.3")
    state.mark_seen("1.2.3")
    state.set_watermark(date(2026, 12, 5))
    state.set_watermark(date(2026, 12, 6))
    for _ in range(2):  # the same job_ref twice queues it once
        state.add_retractions("job", ["a", "b"], "1.2.3", ["s1", "s2"], ["d1"], now=100.0)
    assert state.due_retractions(now=99.0) == []
    due = state.due_retractions(now=100.0)
    assert sorted(d.target for d in due) == ["a", "b"]
    assert due[0].series_uids == ["s1", "s2"]
    assert due[0].delivery_ids == ["d1"]
    state.record_attempt("job", "a", state="pending", next_attempt_at=200.0, error="busy")
    state.record_attempt("job", "b", state="done", next_attempt_at=100.0, error="")
    state.close()

    again = BridgeState(path)  # all of it survives a restart
    try:
        assert again.seen("1.2.3")
        assert not again.seen("4.5.6")
        assert again.watermark() == date(2026, 12, 6)
        assert again.due_retractions(now=150.0) == []
        (retry,) = again.due_retractions(now=200.0)
        assert (retry.target, retry.attempts) == ("a", 1)
    finally:
        again.close()
