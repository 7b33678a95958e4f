"""The HTTP API over real HTTP: uvicorn on a free loopback port, a real job store (SQLite,
and PostgreSQL when the ``postgres`` fixture can run), real analyses of synthetic CTs.

A "worker" here is the test itself: it claims a job from the store, runs
:func:`ct_triage.server.pipeline.analyze_study` (or reuses one real result) and completes the
job with :func:`ct_triage.server.worklist.result_summary`, as the real worker does.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from fastapi.routing import APIRoute

from ct_triage.dicom_bridge.inputs import ZipLimits
from ct_triage.dicom_bridge.synthetic import write_phantom_series
from ct_triage.models.identity import ModelIdentity
from ct_triage.models.lesions import LesionSegmenter, load_lesion_segmenter
from ct_triage.models.phantom import generate, spec_from_seed
from ct_triage.models.runtime.factory import RuntimeConfig
from ct_triage.server.api import HttpServer, create_app, uvicorn_config
from ct_triage.server.api.auth import Role, TokenStore
from ct_triage.server.api.config import ApiConfig
from ct_triage.server.jobs.factory import create_job_store
from ct_triage.server.jobs.model import Job, JobState, JobStore
from ct_triage.server.pipeline import AnalysisResult, analyze_study
from ct_triage.server.settings import Settings
from ct_triage.server.wiring import options_from
from ct_triage.server.worklist import result_summary

pytestmark = pytest.mark.integration

API = "/api/v1"
UPLOAD_LIMIT = 4 * 1024**2  # 4 MiB in these tests


# -- one real analysis, shared ----------------------------------------------------------------
@dataclass(frozen=True)
class Study:
    dicom_dir: Path
    files: list[Path]
    result: AnalysisResult


@pytest.fixture(scope="module")
def model() -> LesionSegmenter:
    return load_lesion_segmenter(RuntimeConfig(z_step_mm=0.0))


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, model: LesionSegmenter) -> Study:
    root = tmp_path_factory.mktemp("api-study")
    ph = generate(spec_from_seed(13, n_slices=60, severity="moderate"))
    files = write_phantom_series(ph, root / "dicom")
    settings = Settings(data_dir=root / "data", dicom_port=None)
    result = analyze_study(root / "dicom", root / "result", model, options_from(settings))
    return Study(root / "dicom", files, result)


# -- a live server ----------------------------------------------------------------------------
@dataclass
class Live:
    url: str
    store: JobStore
    data_dir: Path
    tokens: dict[str, str]
    app_config: ApiConfig

    def client(self, role: str | None = None, token: str | None = None) -> httpx.Client:
        tok = token or (self.tokens[role] if role else None)
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60.0)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        pg = request.getfixturevalue("postgres")
        url = pg.fresh_database(f"api_{uuid.uuid4().hex[:12]}")
    s = create_job_store(url)
    try:
        yield s
    finally:
        s.close()


def start_server(
    tmp_path: Path,
    store: JobStore,
    identity: ModelIdentity | None,
    *,
    pacs_configured: bool = True,
    **kwargs: Any,
) -> tuple[HttpServer, Live]:
    """Start the API; ``pacs_configured`` as if a PACS were set (the test plays the worker)."""
    data = tmp_path / "data"
    settings = Settings(data_dir=data, dicom_port=None)
    cfg = dataclasses.replace(
        ApiConfig.from_settings(settings),
        pacs_configured=pacs_configured,
        upload_max_bytes=UPLOAD_LIMIT,
        zip_limits=ZipLimits(max_entries=100, max_total_bytes=64 * 1024**2),
    )
    tokens_db = TokenStore(cfg.tokens_db)
    tokens = {
        role.value: tokens_db.create(name=f"test {role.value}", role=role)[1] for role in Role
    }
    app = create_app(
        settings, store=store, model=identity, token_store=tokens_db, api_config=cfg, **kwargs
    )
    server = HttpServer(uvicorn_config(app, settings, host="127.0.0.1", port=0)).start()
    return server, Live(server.url, store, data, tokens, cfg)


@pytest.fixture
def live(tmp_path: Path, store: JobStore, model: LesionSegmenter) -> Iterator[Live]:
    server, live = start_server(tmp_path, store, model.identity)
    try:
        yield live
    finally:
        server.stop()


# -- the test's worker ------------------------------------------------------------------------
def claim(store: JobStore, job_id: str) -> Job:
    """Claim ``job_id`` (jobs claimed before it are left running, by this same worker)."""
    current = store.get(job_id)
    if current is not None and current.state is JobState.RUNNING:
        assert current.worker_id == "test-worker"
        return current
    for _ in range(1000):
        job = store.claim("test-worker", lease_s=600)
        assert job is not None, f"job {job_id} never became claimable"
        if job.id == job_id:
            return job
    raise AssertionError("claim loop ran away")


def complete(store: JobStore, job_id: str, study: Study, **override: Any) -> Job:
    """Complete a job with the real result of ``study`` (numbers optionally overridden)."""
    claim(store, job_id)
    result = result_summary(study.result.report, str(study.result.out_dir))
    result.update(override)
    return store.complete(job_id, "test-worker", result)


def submit(client: httpx.Client, uid: str) -> dict[str, Any]:
    r = client.post(f"{API}/studies", json={"study_uid": uid})
    assert r.status_code in (200, 202), r.text
    body: dict[str, Any] = r.json()
    return body


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")} if root.exists() else set()


# -- tests ------------------------------------------------------------------------------------
def test_study_by_uid_without_a_pacs_is_refused_at_once(
    tmp_path: Path, store: JobStore, model: LesionSegmenter
) -> None:
    """No PACS configured: POST /studies and a UID batch answer 409, and nothing is queued."""
    server, live = start_server(tmp_path, store, model.identity, pacs_configured=False)
    try:
        with live.client("operator") as op:
            r = op.post(f"{API}/studies", json={"study_uid": "1.2.826.0.1.3680043.8.498.7"})
            assert r.status_code == 409, r.text
            assert "no PACS is configured" in r.json()["detail"]
            assert "/uploads" in r.json()["detail"]
            b = op.post(f"{API}/batches", json={"name": "b", "accessions": ["A1"]})
            assert b.status_code == 409, b.text
        assert list(store.list_jobs()) == []
    finally:
        server.stop()


def test_healthz_is_anonymous_and_everything_else_needs_a_token(live: Live) -> None:
    with live.client() as anon:
        assert anon.get("/healthz").json()["status"] == "ok"  # (+ reasons when degraded)
        assert anon.get(f"{API}/healthz").status_code == 200
        for path in ("/jobs", "/worklist", "/readyz", "/metrics"):
            r = anon.get(API + path)
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.json()["error"] == "Unauthorized"
        assert anon.get("/metrics").status_code == 401
    with live.client(token="ctt_000000000000_not-a-real-secret") as bad:
        assert bad.get(f"{API}/jobs").status_code == 401
    with live.client(token="garbage") as bad:
        assert bad.get(f"{API}/jobs").status_code == 401


def test_roles(live: Live) -> None:
    uid = "1.2.826.0.1.3680043.8.498.100"
    with live.client("viewer") as viewer:
        r = viewer.post(f"{API}/studies", json={"study_uid": uid})
        assert r.status_code == 403
        assert "operator" in r.json()["detail"]
        assert viewer.get(f"{API}/jobs").status_code == 200
    with live.client("operator") as op:
        assert op.post(f"{API}/studies", json={"study_uid": uid}).status_code == 202
        assert op.get(f"{API}/tokens").status_code == 403
    with live.client("admin") as admin:
        r = admin.post(f"{API}/tokens", json={"name": "ward 3", "role": "viewer"})
        assert r.status_code == 201
        new = r.json()
        assert new["token"].startswith("ctt_")
        assert all("token" not in t for t in admin.get(f"{API}/tokens").json())
        with live.client(token=new["token"]) as ward:
            assert ward.get(f"{API}/jobs").status_code == 200
        assert admin.delete(f"{API}/tokens/{new['id']}").status_code == 200
        with live.client(token=new["token"]) as ward:
            assert ward.get(f"{API}/jobs").status_code == 401
    # Tokens are stored hashed; the audit log names tokens, never their secrets.
    raw = (live.data_dir / "api-tokens.db").read_bytes()
    audit = (live.data_dir / "audit.jsonl").read_text()
    for tok in [*live.tokens.values(), new["token"]]:
        secret = tok.split("_", 2)[2]
        assert secret.encode() not in raw
        assert secret not in audit
    events = [json.loads(line) for line in audit.splitlines()]
    submits = [e for e in events if e["action"] == "study.submit"]
    assert submits
    assert submits[0]["actor"] == "test operator"
    assert submits[0]["study_uid"] == uid
    assert submits[0]["ip"] == "127.0.0.1"
    assert any(e["action"] == "auth.forbidden" and e["actor"] == "test viewer" for e in events)


def test_submit_is_idempotent_and_job_status(live: Live) -> None:
    uid = "1.2.826.0.1.3680043.8.498.200"
    with live.client("operator") as op:
        r1 = op.post(f"{API}/studies", json={"study_uid": uid})
        r2 = op.post(f"{API}/studies", json={"study_uid": uid})
        assert (r1.status_code, r2.status_code) == (202, 200)
        job = r1.json()
        assert r2.json()["id"] == job["id"]
        assert r1.headers["location"] == f"{API}/jobs/{job['id']}"
        assert job["key"].startswith(f"study:{uid}:")
        assert job["state"] == "queued"
        assert job["kind"] == "pull"
        acc = op.post(f"{API}/studies", json={"accession": "ACC42"})
        assert acc.status_code == 202
        assert acc.json()["accession"] == "ACC42"
        assert op.post(f"{API}/studies", json={}).status_code == 422
        assert op.post(f"{API}/studies", json={"study_uid": "1.2.x"}).status_code == 422
        assert (
            op.post(f"{API}/studies", json={"study_uid": uid, "accession": "A"}).status_code == 422
        )
    with live.client("viewer") as viewer:
        got = viewer.get(f"{API}/jobs/{job['id']}").json()
        assert got["id"] == job["id"]
        assert got["links"]["report"] is None
        assert viewer.get(f"{API}/jobs/nope").status_code == 404
        listed = viewer.get(f"{API}/jobs", params={"state": "queued"}).json()
        assert {j["id"] for j in listed["jobs"]} >= {job["id"], acc.json()["id"]}
        assert viewer.get(f"{API}/jobs", params={"state": "done"}).json()["count"] == 0
        # No result yet: 409 with the state.
        r = viewer.get(f"{API}/jobs/{job['id']}/report")
        assert r.status_code == 409
        assert "queued" in r.json()["detail"]


def test_upload_too_big_is_refused_and_nothing_is_kept(live: Live) -> None:
    before = files_under(live.data_dir)
    body = b"PK\x03\x04" + os.urandom(2 * UPLOAD_LIMIT)
    with live.client("operator") as op:
        r = op.post(f"{API}/uploads", content=body, headers={"Content-Type": "application/zip"})
        assert r.status_code == 413
        assert "limit" in r.json()["detail"]

        # Without Content-Length (chunked): the streamed byte count enforces the limit.
        def chunks() -> Iterator[bytes]:
            for _ in range(4):
                yield os.urandom(UPLOAD_LIMIT // 2 + 1)

        r = op.post(f"{API}/uploads", content=chunks(), headers={"Content-Type": "application/zip"})
        assert r.status_code == 413
    assert list(live.app_config.uploads_dir.iterdir()) == []
    assert files_under(live.data_dir) - before <= {live.data_dir / "audit.jsonl"}


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_zip_slip_and_zip_bomb_are_refused(live: Live, tmp_path: Path) -> None:
    outside = files_under(tmp_path)
    slip = _zip({"ok.dcm": b"x" * 100, "../../evil.dcm": b"evil", "a/../../evil2": b"e"})
    bomb = _zip({"zeros.dcm": b"\0" * (32 * 1024**2)})  # 32 MiB -> ~32 KiB, ratio ~1000x
    many = _zip({f"f{i}.dcm": b"x" for i in range(150)})  # entry-count limit is 100
    with live.client("operator") as op:
        for body, word in ((slip, "outside"), (bomb, "bomb"), (many, "entries")):
            r = op.post(f"{API}/uploads", content=body, headers={"Content-Type": "application/zip"})
            assert r.status_code in (400, 413), r.text
            assert word in r.json()["detail"]
        r = op.post(f"{API}/uploads", content=b"", headers={"Content-Type": "application/zip"})
        assert r.status_code == 400
        r = op.post(f"{API}/uploads", content=b"x", headers={"Content-Type": "text/plain"})
        assert r.status_code == 415
    assert list(live.app_config.uploads_dir.iterdir()) == []
    new = files_under(tmp_path) - outside
    assert not [p for p in new if "evil" in p.name]
    assert all(p.is_relative_to(live.data_dir) for p in new)


def test_upload_creates_an_upload_job(live: Live, study: Study) -> None:
    files = study.files[:5]
    body = _zip({f"series/{p.name}": p.read_bytes() for p in files})
    assert len(body) < UPLOAD_LIMIT
    with live.client("operator") as op:
        r = op.post(f"{API}/uploads", content=body, headers={"Content-Type": "application/zip"})
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["kind"] == "upload"
        assert job["state"] == "queued"
        again = op.post(f"{API}/uploads", content=body, headers={"Content-Type": "application/zip"})
        assert again.status_code == 200
        assert again.json()["id"] == job["id"]
        multi = op.post(
            f"{API}/uploads",
            files=[("files", (p.name, p.read_bytes(), "application/dicom")) for p in files[:2]],
        )
        assert multi.status_code == 202, multi.text
    stored = live.store.get(job["id"])
    assert stored is not None
    folder = Path(stored.payload["path"])
    assert folder.is_relative_to(live.app_config.uploads_dir)
    assert len([p for p in folder.rglob("*.dcm")]) == 5
    # One folder per distinct upload (the duplicate was discarded), none left partial.
    assert len(list(live.app_config.uploads_dir.iterdir())) == 2
    m = live.store.get(multi.json()["id"])
    assert m is not None
    assert len(list(Path(m.payload["path"]).iterdir())) == 2


def test_results_of_a_done_job(live: Live, study: Study) -> None:
    with live.client("operator") as op:
        job = submit(op, study.result.report["study_instance_uid"])
    complete(live.store, job["id"], study)
    report = study.result.report
    with live.client("viewer") as viewer:
        got = viewer.get(f"{API}/jobs/{job['id']}").json()
        assert got["state"] == "done"
        assert got["result"]["triage"] == report["triage"]["category"]
        assert got["result"]["severity_score"] == report["severity_score"]
        assert "result_dir" not in json.dumps(got)
        r = viewer.get(got["links"]["report"])
        assert r.status_code == 200
        assert r.json() == report
        seg = viewer.get(got["links"]["seg"])
        assert seg.headers["content-type"] == "application/dicom"
        ds = pydicom.dcmread(io.BytesIO(seg.content))
        assert ds.SOPInstanceUID == report["outputs"]["seg"]["sop_instance_uid"]
        sr = pydicom.dcmread(io.BytesIO(viewer.get(got["links"]["sr"]).content))
        assert sr.SOPInstanceUID == report["outputs"]["sr"]["sop_instance_uid"]
        ov = viewer.get(got["links"]["overlay"])
        assert ov.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(ov.content)) as zf:
            names = zf.namelist()
            assert names
            assert all(n.startswith("overlay/") and n.endswith(".dcm") for n in names)
            first = pydicom.dcmread(io.BytesIO(zf.read(names[0])))
            assert first.SOPInstanceUID in report["outputs"]["overlay"]["sop_instance_uids"]
        png = viewer.get(got["links"]["preview"])
        assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    reads = [
        json.loads(line)
        for line in (live.data_dir / "audit.jsonl").read_text().splitlines()
        if '"result.read"' in line
    ]
    assert {e["detail"] for e in reads} == {
        "report.json",
        "seg.dcm",
        "sr.dcm",
        "overlay",
        "preview.png",
    }
    assert all(e["study_uid"] == report["study_instance_uid"] for e in reads)


def _finish_four(live: Live, study: Study) -> list[str]:
    """Four jobs: severe (prio 1), mild (prio 3), declined, queued; returns their ids."""
    with live.client("operator") as op:
        ids = [submit(op, f"1.2.826.0.1.3680043.8.498.3{i}")["id"] for i in range(4)]
    complete(live.store, ids[1], study, triage="mild", priority=3, severity_score=4)
    complete(live.store, ids[0], study, triage="severe", priority=1, severity_score=20)
    claim(live.store, ids[2])
    live.store.decline(ids[2], "test-worker", "no CT series with enough slices")
    return ids


def test_worklist_is_sorted_by_triage_priority(live: Live, study: Study) -> None:
    ids = _finish_four(live, study)
    with live.client("viewer") as viewer:
        wl = viewer.get(f"{API}/worklist").json()
    items = wl["items"]
    assert [i["job_id"] for i in items] == [ids[0], ids[1], ids[3], ids[2]]
    assert [i["triage"] for i in items] == ["severe", "mild", None, None]
    assert [i["rank"] for i in items] == [1, 2, 3, 4]
    assert items[0]["preview"] == f"{API}/jobs/{ids[0]}/preview.png"
    assert items[3]["state"] == "declined"
    assert "slices" in items[3]["error"]
    assert "NOT FOR PRIMARY DIAGNOSIS" in wl["disclaimer"]
    with live.client("viewer") as viewer:
        old = viewer.get(f"{API}/worklist", params={"date": "2001-01-01"}).json()
    assert old["items"] == []


def test_indeterminate_studies_sort_after_severe_and_say_why(live: Live, study: Study) -> None:
    """The quality gate's "needs a human" shows in the worklist, right after severe."""
    with live.client("operator") as op:
        ids = [submit(op, f"1.2.826.0.1.3680043.8.498.6{i}")["id"] for i in range(3)]
    why = "lungs cut by the field of view (right 231 cm2 of lung surface on its edge)"
    complete(live.store, ids[0], study, triage="mild", priority=4, severity_score=3)
    complete(
        live.store,
        ids[1],
        study,
        triage="indeterminate",
        priority=2,
        severity_score=2,
        quality_flags=[why],
    )
    complete(live.store, ids[2], study, triage="severe", priority=1, severity_score=20)
    with live.client("viewer") as viewer:
        items = viewer.get(f"{API}/worklist").json()["items"]
    assert [i["triage"] for i in items] == ["severe", "indeterminate", "mild"]
    assert items[1]["quality_flags"] == [why]
    assert items[0]["quality_flags"] == []


def test_batch_progress_and_csv(live: Live, study: Study) -> None:
    uids = [f"1.2.826.0.1.3680043.8.498.4{i}" for i in range(3)]
    with live.client("operator") as op:
        r = op.post(
            f"{API}/batches",
            json={"name": "rtw", "study_uids": uids, "accessions": ["=HYPERLINK(1)"]},
        )
        assert r.status_code == 202, r.text
        batch = r.json()
        assert batch["progress"]["total"] == 4
        assert batch["progress"]["queued"] == 4
        no_pacs = op.post(
            f"{API}/batches",
            json={"name": "q", "query": {"date_from": "2025-01-01", "date_to": "2025-01-02"}},
        )
        assert no_pacs.status_code == 400
        assert "PACS" in no_pacs.json()["detail"]
    jobs = batch["job_ids"]
    complete(live.store, jobs[1], study, triage="severe", priority=1)
    claim(live.store, jobs[2])
    live.store.fail(jobs[2], "test-worker", "PACS unreachable", retry=False)
    with live.client("viewer") as viewer:
        p = viewer.get(f"{API}/batches/{batch['id']}").json()["progress"]
        assert (p["done"], p["failed"], p["remaining"], p["total"]) == (1, 1, 2, 4)
        assert p["percent_finished"] == 50.0
        assert p["rate_per_min"] is not None
        assert p["eta_s"] is not None
        assert viewer.get(f"{API}/batches/nope").status_code == 404
        r = viewer.get(f"{API}/batches/{batch['id']}/csv")
        assert r.headers["content-type"].startswith("text/csv")
        wl = viewer.get(f"{API}/worklist", params={"batch": batch["id"]}).json()
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["job_id"] for row in rows] == [i["job_id"] for i in wl["items"]]
    assert rows[0]["job_id"] == jobs[1]
    assert rows[0]["triage"] == "severe"
    assert float(rows[0]["percent_involvement_total"]) == pytest.approx(
        study.result.report["percent_involvement"]["total"], abs=0.01
    )
    assert all("NOT FOR PRIMARY DIAGNOSIS" in row["disclaimer"] for row in rows)
    assert any(row["accession"] == "'=HYPERLINK(1)" for row in rows)  # no CSV injection


def test_metrics(live: Live, study: Study) -> None:
    with live.client("operator") as op:
        job = submit(op, "1.2.826.0.1.3680043.8.498.500")
        submit(op, "1.2.826.0.1.3680043.8.498.501")
    complete(live.store, job["id"], study)
    with live.client("viewer") as viewer:
        r = viewer.get(f"{API}/metrics")
        root = viewer.get("/metrics")
    assert r.status_code == 200
    assert root.status_code == 200
    text = r.text
    assert 'ct_triage_jobs{state="queued"} 1.0' in text
    assert 'ct_triage_jobs{state="done"} 1.0' in text
    assert "ct_triage_queue_depth 1.0" in text
    assert 'execution_provider="CPUExecutionProvider"' in text
    assert 'ct_triage_stage_duration_seconds_count{stage="quantify"} 1.0' in text
    assert "ct_triage_http_requests_total" in text


def test_readyz(tmp_path: Path, store: JobStore, live: Live) -> None:
    with live.client("viewer") as viewer:
        r = viewer.get(f"{API}/readyz")
        assert r.status_code == 200, r.text
        assert set(r.json()["checks"]) == {"model", "store", "spool"}

    def pacs_down() -> None:
        raise ConnectionRefusedError("connection refused by PACS@127.0.0.1:1")

    server, other = start_server(tmp_path / "other", store, None, pacs_check=pacs_down)
    try:
        with other.client("viewer") as viewer:
            r = viewer.get("/readyz")
        assert r.status_code == 503
        checks = r.json()["checks"]
        assert not checks["model"]["ok"]
        assert "no model" in checks["model"]["detail"]
        assert not checks["pacs"]["ok"]
        assert "refused" in checks["pacs"]["detail"]
        assert checks["store"]["ok"]
        assert checks["spool"]["ok"]
    finally:
        server.stop()


def test_openapi_documents_every_route(live: Live) -> None:
    from ct_triage.server.api.routes import (
        batches,
        health,
        jobs,
        metrics,
        studies,
        tokens,
        worklist,
    )

    with live.client() as anon:
        doc = anon.get(f"{API}/openapi.json").json()
        page = anon.get(f"{API}/docs")
        assert page.status_code == 200
        # Swagger UI comes from this server, not a CDN (hospital networks are often closed)
        assets = re.findall(r"""(?:src|href)=['"]([^'"]+\.(?:js|css))['"]""", page.text)
        assert len(assets) == 2, page.text
        for url in assets:
            assert url.startswith(f"{API}/docs-static/"), url
            got = anon.get(url)
            assert got.status_code == 200, url
            assert len(got.content) > 10_000, url
    paths = doc["paths"]
    api_routes = [
        r
        for module in (health, metrics, studies, jobs, batches, worklist, tokens)
        for r in module.router.routes
        if isinstance(r, APIRoute)
    ]
    assert len(api_routes) >= 19
    for route in api_routes:
        path = API + route.path
        assert path in paths, path
        for method in route.methods or ():
            op = paths[path][method.lower()]
            assert op.get("summary"), path
            if path != f"{API}/healthz":
                assert op.get("security"), f"{method} {route.path} documents no security"
    for expected in (
        "/studies",
        "/uploads",
        "/jobs",
        "/jobs/{job_id}",
        "/jobs/{job_id}/report",
        "/jobs/{job_id}/seg",
        "/jobs/{job_id}/sr",
        "/jobs/{job_id}/overlay",
        "/jobs/{job_id}/preview.png",
        "/batches",
        "/batches/{batch_id}",
        "/batches/{batch_id}/csv",
        "/worklist",
        "/healthz",
        "/readyz",
        "/metrics",
        "/tokens",
    ):
        assert API + expected in paths, expected
    assert "application/zip" in paths[f"{API}/uploads"]["post"]["requestBody"]["content"]


def test_worklist_page_is_served(live: Live) -> None:
    with live.client() as anon:
        page = anon.get("/", follow_redirects=True)
        js = anon.get("/static/worklist.js")
        css = anon.get("/static/worklist.css")
    assert page.status_code == 200
    assert "<table" in page.text
    assert "NOT FOR PRIMARY DIAGNOSIS" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert js.headers["content-type"].startswith("text/javascript")
    assert "sessionStorage" in js.text
    assert css.status_code == 200
