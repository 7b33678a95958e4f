"""Patients identifiable where clinicians work: the worklist API and the CSVs over real HTTP.

The live server and the real analysis are those of ``test_api`` (SQLite store). Identity is
checked against the DICOM headers of the phantom CT; the CLI's CSV (``ct-triage batch``) and
the API's CSV must be the same text; every view of patient identity is in the audit log
(study UIDs, never the identity), and nothing of it reaches the application log.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pydicom
import pytest
from integration.test_api import (
    API,
    Live,
    Study,
    claim,
    complete,
    model,  # noqa: F401 - fixtures shared with test_api
    start_server,
    study,  # noqa: F401
    submit,
)
from pydantic import ValidationError

from ct_triage.models.lesions import LesionSegmenter
from ct_triage.server.batch import batch_csv
from ct_triage.server.jobs.factory import create_job_store
from ct_triage.server.jobs.model import JobKind, JobStore
from ct_triage.server.settings import Settings
from ct_triage.server.worklist import CSV_COLUMNS

pytestmark = pytest.mark.integration

TEMPLATE = "http://pacs.example/ohif/viewer?StudyInstanceUIDs={study}"


@pytest.fixture
def live(
    tmp_path: Path,
    model: LesionSegmenter,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Live]:
    monkeypatch.setenv("CT_TRIAGE_VIEWER_URL_TEMPLATE", TEMPLATE)
    store: JobStore = create_job_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    server, live = start_server(tmp_path, store, model.identity)
    try:
        yield live
    finally:
        server.stop()
        store.close()


def _header(analysed: Study) -> pydicom.Dataset:
    return pydicom.dcmread(analysed.files[0], stop_before_pixels=True)


def _iso(da: str) -> str:
    return date(int(da[:4]), int(da[4:6]), int(da[6:8])).isoformat()


def test_worklist_names_the_patient_and_links_to_the_viewer(
    live: Live,
    study: Study,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    ds = _header(study)
    uid = str(ds.StudyInstanceUID)
    with live.client("operator") as op:
        job = submit(op, uid)  # by UID: the job itself knows no accession number
    assert job["accession"] is None
    complete(live.store, job["id"], study)
    # A pushed study that was declined: identified from the images received.
    push, _ = live.store.submit(
        key="push:declined-test",
        kind=JobKind.PUSH,
        payload={"study_uid": uid, "series": [{"folder": str(study.dicom_dir)}]},
        study_uid=uid,
    )
    claim(live.store, push.id)
    live.store.decline(push.id, "test-worker", "no axial CT series with enough slices")
    caplog.set_level(logging.DEBUG)
    with live.client("viewer") as viewer:
        items = viewer.get(f"{API}/worklist").json()["items"]
        assert viewer.get(f"{API}/worklist").json()["items"] == items  # the page polls
    done, declined = items
    family, given = str(ds.PatientName).split("^")[:2]
    expected = {
        "patient_name": f"{family}, {given}",
        "patient_id": str(ds.PatientID),
        "birth_date": _iso(str(ds.PatientBirthDate)),
        "sex": str(ds.PatientSex),
        "age": f"{int(str(ds.PatientAge)[:3])} y",
        "study_date": _iso(str(ds.StudyDate)),
        "study_time": f"{str(ds.StudyTime)[:2]}:{str(ds.StudyTime)[2:4]}",
        "accession": str(ds.AccessionNumber),
    }
    for item in (done, declined):
        assert {k: item[k] for k in expected} == expected
    assert done["modality"] == "CT"
    assert done["series_description"] == str(ds.SeriesDescription)
    assert done["viewer_url"] == TEMPLATE.format(study=uid)
    assert done["finding"] == (
        f"{done['percent_involvement_total']:.1f} % of lung involved, "
        f"lesions {done['lesion_volume_ml_total']:.1f} mL, severity {done['severity_score']}/25"
    )
    assert declined["finding"] == "Not analysed: no axial CT series with enough slices"
    # Audited: who saw which studies; the audit log and the application log hold no identity.
    audit = (live.data_dir / "audit.jsonl").read_text()
    views = [json.loads(line) for line in audit.splitlines()]
    views = [e for e in views if e["action"] == "worklist.read"]
    first, again = views[-2:]
    assert first["actor"] == again["actor"] == "test viewer"
    assert first["study_uids"] == [uid, uid]
    # The same studies again: one event with the digest of the list, not the list again.
    assert "study_uids" not in again
    assert again["study_uids_sha256"] == first["study_uids_sha256"]
    for secret in (
        expected["patient_name"],
        family,
        expected["patient_id"],
        str(ds.AccessionNumber),
    ):
        assert secret not in audit
        assert secret not in caplog.text
    # The job itself (GET /jobs/{id}) now knows the accession number of what it analysed.
    with live.client("viewer") as viewer:
        assert viewer.get(f"{API}/jobs/{job['id']}").json()["accession"] == ds.AccessionNumber


def test_cli_and_api_csv_are_one_format(
    live: Live,
    study: Study,  # noqa: F811
) -> None:
    uids = [f"1.2.826.0.1.3680043.8.498.9{i}" for i in range(3)]
    with live.client("operator") as op:
        batch = op.post(f"{API}/batches", json={"name": "rtw", "study_uids": uids}).json()
    jobs = batch["job_ids"]
    complete(live.store, jobs[0], study, triage="severe", priority=1, severity_score=18)
    tiny = {"total": 0.1, "ggo": 0.1, "consolidation": 0.0}
    complete(
        live.store,
        jobs[1],
        study,
        triage="normal",
        priority=5,
        severity_score=1,
        lesion_volume_ml=tiny,
        percent_involvement={"left": 0.0, "right": 0.01, "total": 0.01},
    )
    with live.client("viewer") as viewer:
        api_text = viewer.get(f"{API}/batches/{batch['id']}/csv").text
        events = (live.data_dir / "audit.jsonl").read_text().splitlines()
    cli_text = batch_csv(live.store, batch["id"], viewer_template=TEMPLATE)
    assert api_text == cli_text
    rows = list(csv.DictReader(io.StringIO(api_text)))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert [r["job_id"] for r in rows] == [jobs[0], jobs[1], jobs[2]]
    severe, normal, queued = rows
    ds = _header(study)
    assert severe["patient_id"] == normal["patient_id"] == str(ds.PatientID)
    assert severe["accession"] == str(ds.AccessionNumber)
    assert normal["finding"] == "No lesions above the triage thresholds"
    assert "severity" not in normal["finding"]
    assert normal["lesion_volume_ml_total"] == "0.10"  # the measurement stays in its column
    assert queued["finding"] == "Queued"
    assert queued["patient_name"] == ""
    assert all("NOT FOR PRIMARY DIAGNOSIS" in r["disclaimer"] for r in rows)
    csv_views = [json.loads(e) for e in events if '"batch.csv"' in e]
    assert csv_views
    assert csv_views[-1]["actor"] == "test viewer"


def test_batch_rate_is_frozen_once_the_batch_is_finished(
    live: Live,
    study: Study,  # noqa: F811
) -> None:
    with live.client("operator") as op:
        uids = [f"1.2.826.0.1.3680043.8.498.8{i}" for i in range(2)]
        batch = op.post(f"{API}/batches", json={"name": "b", "study_uids": uids}).json()
    for job_id in batch["job_ids"]:
        complete(live.store, job_id, study)
    with live.client("viewer") as viewer:
        first = viewer.get(f"{API}/batches/{batch['id']}").json()["progress"]
        time.sleep(1.5)
        later = viewer.get(f"{API}/batches/{batch['id']}").json()["progress"]
    assert first["remaining"] == 0
    assert first["rate_per_min"] is not None
    assert later["rate_per_min"] == first["rate_per_min"]
    assert later["eta_s"] == 0.0


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("ftp://pacs/viewer?s={study}", "must start with"),
        ("http://pacs/viewer?s={patient}", "unknown field"),
        ("http://pacs/viewer", "needs {study}"),
    ],
)
def test_a_bad_viewer_template_is_refused(template: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        Settings(viewer_url_template=template, dicom_port=None)
