"""One row per study for the people who read: the worklist page, the API and the CSV.

:func:`study_row` turns a job into a :class:`StudyRow` (who the patient is, which study, what
was found, where to open it); the API's worklist items and both CSVs (``ct-triage batch`` and
``GET /api/v1/batches/{id}/csv``) are built from it, so they hold the same columns in the same
order (:data:`CSV_COLUMNS`).

Patient identity (name, ID, birth date, age, sex, study date and time, accession number) is
read from the DICOM headers of the results (which copy the Patient and General Study modules
of the analysed CT, PS3.3 C.7.1.1 and C.7.2.1) when a job completes
(:func:`read_identity`, kept in the job's result), or from the received images of a pushed
study that was declined. It is shown only to authenticated callers, each view is written to
the audit log (study UIDs, never the identity), and it is never logged.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from ct_triage.models.identity import DISCLAIMER
from ct_triage.server.jobs.model import Job, JobState
from ct_triage.server.viewer import viewer_url

__all__ = [
    "CSV_COLUMNS",
    "StudyRow",
    "csv_text",
    "finding_text",
    "identity_from_dataset",
    "read_identity",
    "result_summary",
    "study_row",
]

logger = logging.getLogger(__name__)

#: DICOM attributes the identity is read from (only these are parsed).
_TAGS = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "Modality",
    "SeriesDescription",
)

#: Result files that carry the Patient and General Study modules of the analysed CT.
_RESULT_FILES = ("seg.dcm", "sr.dcm")


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _person_name(value: Any) -> str:
    """A DICOM PN (``FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX``) as people write it."""
    text = _text(value).split("=")[0]  # alphabetic representation
    if not text:
        return ""
    family, _, rest = text.partition("^")
    given = " ".join(p for p in rest.split("^") if p)
    return f"{family}, {given}" if family and given else (family or given)


def _iso_date(value: Any) -> str:
    """DA ``YYYYMMDD`` as ``YYYY-MM-DD`` (anything else: empty)."""
    text = _text(value)
    try:
        return datetime.strptime(text[:8], "%Y%m%d").date().isoformat() if len(text) >= 8 else ""
    except ValueError:
        return ""


def _hh_mm(value: Any) -> str:
    """TM ``HHMMSS.ffffff`` as ``HH:MM`` (anything else: empty)."""
    text = _text(value).replace(":", "")
    if len(text) >= 4 and text[:4].isdigit() and int(text[:2]) < 24 and int(text[2:4]) < 60:
        return f"{text[:2]}:{text[2:4]}"
    return ""


def _age(age_string: Any, birth: str, study: str) -> str:
    """Age at the study: the AS attribute (``050Y`` → ``50 y``) or birth and study dates."""
    text = _text(age_string)
    units = {"Y": "y", "M": "mo", "W": "wk", "D": "d"}
    if len(text) == 4 and text[:3].isdigit() and text[3] in units:
        return f"{int(text[:3])} {units[text[3]]}"
    if birth and study:
        b, s = date.fromisoformat(birth), date.fromisoformat(study)
        years = s.year - b.year - ((s.month, s.day) < (b.month, b.day))
        if years >= 0:
            return f"{years} y"
    return ""


def identity_from_dataset(ds: Any, report: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The identity fields of one dataset (missing ones are empty strings).

    ``report`` (``report.json``) supplies the analysed series' description when ``ds`` is a
    result object rather than the CT itself.
    """
    birth = _iso_date(ds.get("PatientBirthDate"))
    study = _iso_date(ds.get("StudyDate"))
    modality = _text(ds.get("Modality"))
    series = _text(ds.get("SeriesDescription"))
    if report is not None:
        # A result object (SEG/SR) has its own modality and description; the report names the
        # analysed series, which selection takes only from CT (dicom_bridge.select).
        modality = "CT"
        series = _text(report.get("series_description"))
    return {
        "patient_name": _person_name(ds.get("PatientName")),
        "patient_id": _text(ds.get("PatientID")),
        "birth_date": birth,
        "age": _age(ds.get("PatientAge"), birth, study),
        "sex": _text(ds.get("PatientSex")),
        "study_date": study,
        "study_time": _hh_mm(ds.get("StudyTime")),
        "accession": _text(ds.get("AccessionNumber")),
        "study_description": _text(ds.get("StudyDescription")),
        "modality": modality,
        "series_description": series,
    }


def _read_header(path: Path) -> Any | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_TAGS))
    except (OSError, InvalidDicomError, ValueError, TypeError, AttributeError) as exc:
        logger.warning("identity: cannot read the header of a result file (%s)", type(exc).__name__)
        return None


def read_identity(result_dir: Path, report: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The patient and study identity of a result folder (``{}`` when none can be read)."""
    for name in _RESULT_FILES:
        path = Path(result_dir) / name
        if path.is_file():
            ds = _read_header(path)
            if ds is not None:
                return identity_from_dataset(ds, report or {})
    return {}


def result_summary(report: dict[str, Any], result_dir: str) -> dict[str, Any]:
    """The key numbers of ``report.json`` kept in :attr:`Job.result` (worklist and CSV).

    ``identity`` holds who and which study it is (patient name, ID, birth date, age, sex,
    study date and time, accession number, series description), read from the result
    objects' headers (:func:`read_identity`), for the worklist.
    """
    triage = report.get("triage", {})
    return {
        "identity": read_identity(Path(result_dir), report),
        "study_uid": report.get("study_instance_uid"),
        "series_uid": report.get("series_instance_uid"),
        "triage": triage.get("category"),
        "priority": triage.get("priority"),
        "severity_score": report.get("severity_score"),
        "percent_involvement": report.get("percent_involvement", {}),
        "lesion_volume_ml": report.get("lesion_volume_ml", {}),
        "lung_volume_ml": report.get("lung_volume_ml", {}),
        "model_version": report.get("model", {}).get("version"),
        # the quality gate's reasons (empty: the lung segmentation passed every check)
        "quality_flags": [
            str(f.get("reason", "")) for f in report.get("quality", {}).get("flags", [])
        ],
        "result_dir": result_dir,
    }


@functools.lru_cache(maxsize=4096)
def _cached_result_identity(result_dir: str) -> dict[str, str]:
    report: dict[str, Any] = {}
    try:
        loaded = json.loads((Path(result_dir) / "report.json").read_text())
        report = loaded if isinstance(loaded, dict) else {}
    except (OSError, ValueError):
        pass
    return read_identity(Path(result_dir), report)


@functools.lru_cache(maxsize=4096)
def _cached_source_identity(folder: str) -> dict[str, str]:
    path = Path(folder)
    first = (
        next((p for p in sorted(path.iterdir()) if p.is_file()), None) if path.is_dir() else None
    )
    if first is None:
        return {}
    ds = _read_header(first)
    return identity_from_dataset(ds) if ds is not None else {}


def job_identity(job: Job) -> dict[str, str]:
    """The identity of a job's study: kept in its result, else read from its files.

    Done jobs of older versions have no ``identity`` in their result; it is read from their
    result folder (cached). A pushed study that was declined is identified from the images
    received in the spool, while they are kept.
    """
    stored = job.result.get("identity")
    if isinstance(stored, dict) and stored:
        return {str(k): str(v) for k, v in stored.items()}
    result_dir = job.result.get("result_dir")
    if job.state is JobState.DONE and result_dir:
        return dict(_cached_result_identity(str(result_dir)))
    series = job.payload.get("series")
    if isinstance(series, list) and series and isinstance(series[0], dict):
        folder = series[0].get("folder")
        if folder:
            try:
                return dict(_cached_source_identity(str(folder)))
            except OSError:
                return {}
    return {}


def finding_text(job: Job) -> str:
    """What was found, in one line for a person (the numbers are in their own columns).

    A ``normal`` study's small measured lesion volume is below the triage thresholds (the
    model's false-positive level on lesion-free lungs), so it is not presented as a finding.
    """
    r = job.result
    state = job.state
    if state is JobState.QUEUED:
        return "Queued"
    if state is JobState.RUNNING:
        return "Analysing"
    if state is JobState.DECLINED:
        return f"Not analysed: {job.error or 'no usable chest CT series'}"
    if state is JobState.FAILED:
        return f"Failed: {job.error or 'unknown error'}"
    triage = r.get("triage")
    flags = [str(f) for f in r.get("quality_flags") or []]
    if triage == "indeterminate" or flags:
        return "Needs a human: " + ("; ".join(flags) or "lung segmentation unreliable")
    if triage == "normal":
        return "No lesions above the triage thresholds"
    pct = r.get("percent_involvement")
    les = r.get("lesion_volume_ml")
    total_pct = pct.get("total") if isinstance(pct, dict) else None
    total_ml = les.get("total") if isinstance(les, dict) else None
    parts = []
    if isinstance(total_pct, int | float):
        parts.append(f"{total_pct:.1f} % of lung involved")
    if isinstance(total_ml, int | float):
        parts.append(f"lesions {total_ml:.1f} mL")
    severity = r.get("severity_score")
    if isinstance(severity, int):
        parts.append(f"severity {severity}/25")
    return ", ".join(parts) or "Analysed"


@dataclass(frozen=True, slots=True)
class StudyRow:
    """One study as the worklist and the CSV show it (field order = CSV column order)."""

    rank: int
    triage: str | None
    priority: int | None
    finding: str
    patient_name: str
    patient_id: str
    birth_date: str
    age: str
    sex: str
    study_date: str
    study_time: str
    accession: str
    modality: str
    series_description: str
    study_description: str
    state: str
    percent_involvement_total: float | None
    percent_involvement_right: float | None
    percent_involvement_left: float | None
    lesion_volume_ml_total: float | None
    lesion_volume_ml_ggo: float | None
    lesion_volume_ml_consolidation: float | None
    lung_volume_ml_total: float | None
    lung_volume_ml_right: float | None
    lung_volume_ml_left: float | None
    severity_score: int | None
    quality_flags: tuple[str, ...]
    error: str | None
    study_uid: str | None
    series_uid: str | None
    model_version: str | None
    job_id: str
    finished_at: datetime | None
    viewer_url: str | None
    disclaimer: str = DISCLAIMER


#: Columns of every CSV (CLI and API), in order: the fields of :class:`StudyRow`.
CSV_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(StudyRow))


def _number(d: Any, key: str) -> float | None:
    value = d.get(key) if isinstance(d, dict) else None
    return float(value) if isinstance(value, int | float) else None


def study_row(rank: int, job: Job, *, viewer_template: str | None = None) -> StudyRow:
    """The row of one job (``rank`` 1 = read first)."""
    r = job.result if job.state is JobState.DONE else {}
    ident = job_identity(job)
    accession = job.accession or ident.get("accession") or _text(job.payload.get("accession"))
    # The analysed study's UID (a pull by accession knows it only once done).
    study_uid = r.get("study_uid") or job.study_uid or job.payload.get("study_uid")
    triage = r.get("triage")
    priority = job.priority if job.priority is not None else r.get("priority")
    severity = r.get("severity_score")
    pct, les, lung = (
        r.get("percent_involvement"),
        r.get("lesion_volume_ml"),
        r.get("lung_volume_ml"),
    )
    return StudyRow(
        rank=rank,
        triage=str(triage) if triage else None,
        priority=priority if isinstance(priority, int) else None,
        finding=finding_text(job),
        patient_name=ident.get("patient_name", ""),
        patient_id=ident.get("patient_id", ""),
        birth_date=ident.get("birth_date", ""),
        age=ident.get("age", ""),
        sex=ident.get("sex", ""),
        study_date=ident.get("study_date", ""),
        study_time=ident.get("study_time", ""),
        accession=accession,
        modality=ident.get("modality", ""),
        series_description=ident.get("series_description", ""),
        study_description=ident.get("study_description", ""),
        state=str(job.state),
        percent_involvement_total=_number(pct, "total"),
        percent_involvement_right=_number(pct, "right"),
        percent_involvement_left=_number(pct, "left"),
        lesion_volume_ml_total=_number(les, "total"),
        lesion_volume_ml_ggo=_number(les, "ggo"),
        lesion_volume_ml_consolidation=_number(les, "consolidation"),
        lung_volume_ml_total=_number(lung, "total"),
        lung_volume_ml_right=_number(lung, "right"),
        lung_volume_ml_left=_number(lung, "left"),
        severity_score=severity if isinstance(severity, int) else None,
        quality_flags=tuple(str(f) for f in r.get("quality_flags") or []),
        error=None if job.state is JobState.DONE else job.error,
        study_uid=str(study_uid) if study_uid else None,
        series_uid=r.get("series_uid"),
        model_version=r.get("model_version") or job.payload.get("model_version"),
        job_id=job.id,
        finished_at=job.finished_at,
        viewer_url=viewer_url(viewer_template, study_uid=study_uid, accession=accession),
    )


def study_rows(jobs: Iterable[Job], *, viewer_template: str | None = None) -> list[StudyRow]:
    """Rows of jobs already in reading order."""
    return [study_row(i, j, viewer_template=viewer_template) for i, j in enumerate(jobs, start=1)]


def _cell(value: Any) -> str:
    """A CSV cell; text a spreadsheet would run as a formula is prefixed with ``'``."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, tuple):
        value = "; ".join(value)
    text = str(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


def csv_text(rows: Sequence[StudyRow]) -> str:
    """The CSV (RFC 4180, CRLF line ends): a header, then one row per study.

    Every row carries the disclaimer (a column, so it survives sorting and filtering in a
    spreadsheet).
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_cell(getattr(row, name)) for name in CSV_COLUMNS])
    return buf.getvalue()
