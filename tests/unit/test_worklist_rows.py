"""The worklist row helpers: DICOM identity as people read it, findings, viewer links."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydicom.dataset import Dataset

from ct_triage.server.jobs.model import Job, JobKind, JobState
from ct_triage.server.viewer import check_viewer_template, viewer_url
from ct_triage.server.worklist import (
    CSV_COLUMNS,
    csv_text,
    finding_text,
    identity_from_dataset,
    study_row,
)


def _ds(**values: str) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_identity_reads_names_dates_and_age() -> None:
    ds = _ds(
        PatientName="DOE^JANE^M^DR=ドウ^ジェーン",
        PatientID="12345",
        PatientBirthDate="19800229",
        PatientSex="F",
        StudyDate="20250228",
        StudyTime="093015.123",
        AccessionNumber="ACC9",
        Modality="CT",
        SeriesDescription="Lung 1mm",
    )
    got = identity_from_dataset(ds)
    assert got["patient_name"] == "DOE, JANE M DR"
    assert got["birth_date"] == "1980-02-29"
    assert got["age"] == "44 y"  # the day before the 45th birthday
    assert got["study_date"] == "2025-02-28"
    assert got["study_time"] == "09:30"
    assert (got["accession"], got["modality"], got["series_description"]) == (
        "ACC9",
        "CT",
        "Lung 1mm",
    )


@pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")
def test_identity_prefers_the_age_attribute_and_survives_bad_values() -> None:
    assert identity_from_dataset(_ds(PatientAge="007M"))["age"] == "7 mo"
    got = identity_from_dataset(_ds(PatientBirthDate="1980-1-1", StudyTime="99", PatientName=""))
    assert (got["birth_date"], got["study_time"], got["patient_name"], got["age"]) == ("",) * 4
    # A result object: the report names the analysed CT series.
    got = identity_from_dataset(_ds(Modality="SEG"), {"series_description": "Chest 3 lung"})
    assert (got["modality"], got["series_description"]) == ("CT", "Chest 3 lung")


def _job(state: JobState, **result: object) -> Job:
    return Job(
        id="j1",
        key="k",
        kind=JobKind.PULL,
        state=state,
        payload={"accession": "=cmd|calc"},
        accession="=cmd|calc",
        result=dict(result),
        error="no CT series" if state is JobState.DECLINED else None,
        created_at=datetime(2025, 1, 1, tzinfo=UTC),
    )


def test_findings_and_a_normal_study() -> None:
    normal = _job(
        JobState.DONE,
        triage="normal",
        severity_score=1,
        lesion_volume_ml={"total": 0.1},
        percent_involvement={"total": 0.01},
    )
    assert finding_text(normal) == "No lesions above the triage thresholds"
    severe = _job(
        JobState.DONE,
        triage="severe",
        severity_score=19,
        lesion_volume_ml={"total": 812.25},
        percent_involvement={"total": 55.04},
    )
    assert finding_text(severe) == "55.0 % of lung involved, lesions 812.2 mL, severity 19/25"
    flagged = _job(JobState.DONE, triage="indeterminate", quality_flags=["lungs cut"])
    assert finding_text(flagged) == "Needs a human: lungs cut"
    assert finding_text(_job(JobState.DECLINED)) == "Not analysed: no CT series"


def test_csv_row_order_and_formula_guard() -> None:
    row = study_row(1, _job(JobState.QUEUED))
    text = csv_text([row])
    header, line = text.split("\r\n")[:2]
    assert tuple(header.split(",")) == CSV_COLUMNS
    assert "'=cmd|calc" in line  # a spreadsheet would run it as a formula
    assert line.endswith(
        "NOT FOR PRIMARY DIAGNOSIS: results must be reviewed by a qualified radiologist."
    )


def test_viewer_links() -> None:
    t = "https://pacs/viewer?StudyInstanceUIDs={study}&acc={accession}"
    assert check_viewer_template(t) == t
    assert viewer_url(t, study_uid="1.2.3", accession="A&B 1") == (
        "https://pacs/viewer?StudyInstanceUIDs=1.2.3&acc=A%26B%201"
    )
    assert viewer_url(t, study_uid="1.2.3", accession=None) is None  # a field it needs is unknown
    assert viewer_url(None, study_uid="1.2.3", accession="A") is None
    with pytest.raises(ValueError, match="unknown field"):
        check_viewer_template("http://x/{study}/{patient_id}")
    with pytest.raises(ValueError, match="must start with"):
        check_viewer_template("javascript:alert({study})")


def test_cli_summary_of_a_normal_study_says_below_threshold() -> None:
    from pathlib import Path

    from ct_triage.server.cli.analyze import summary_text
    from ct_triage.server.pipeline import AnalysisResult

    def report(category: str) -> dict[str, object]:
        return {
            "series_number": 2,
            "series_description": "Chest",
            "volume": {"shape_zyx": [60, 512, 512]},
            "lung_volume_ml": {"left": 2000.0, "right": 2200.0, "total": 4200.0},
            "lesion_volume_ml": {"total": 0.1, "ggo": 0.1, "consolidation": 0.0},
            "percent_involvement": {"left": 0.0, "right": 0.0, "total": 0.0},
            "severity_score": 1,
            "triage": {"category": category, "priority": 5},
            "model": {"name": "m", "version": "1", "execution_provider": "CPU"},
            "timings_s": {"total": 1.0},
        }

    normal = summary_text(AnalysisResult(Path("out"), report("normal")))
    assert "0.1 mL (ground-glass 0.1 mL, consolidation 0.0 mL) (below the triage" in normal
    assert "below the triage" not in summary_text(AnalysisResult(Path("out"), report("mild")))
