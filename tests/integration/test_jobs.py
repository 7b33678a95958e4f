"""The durable job stores (SQLite and a real PostgreSQL server) and the worker.

Every test runs on both stores: idempotent submit, exactly-once claims under concurrency
(threads; and processes for SQLite), lease expiry, retries with backoff, final declines,
worklist order and batch progress.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pg import PostgresServer

from ct_triage.models.errors import StudyDeclined, TriageError
from ct_triage.server.jobs.factory import JobStoreConfigError, create_job_store
from ct_triage.server.jobs.model import (
    Job,
    JobKind,
    JobState,
    JobStore,
    LeaseLost,
    RetryPolicy,
    progress_from,
)
from ct_triage.server.jobs.postgres import PostgresJobStore
from ct_triage.server.jobs.sqlite import SqliteJobStore
from ct_triage.server.jobs.worker import JobOutcome, Worker

pytestmark = pytest.mark.integration

FAST = RetryPolicy(max_attempts=3, backoff_base_s=0.2, backoff_max_s=1.0)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    pg: PostgresServer = request.getfixturevalue("postgres")
    return pg.fresh_database(f"jobs_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def store(store_url: str) -> Iterator[JobStore]:
    s = create_job_store(store_url, retry=FAST)
    try:
        yield s
    finally:
        s.close()


def _submit(store: JobStore, n: int, prefix: str = "k") -> list[Job]:
    return [
        store.submit(key=f"{prefix}{i}", kind=JobKind.PULL, payload={"accession": f"A{i}"})[0]
        for i in range(n)
    ]


def test_factory_kinds(store_url: str) -> None:
    s = create_job_store(store_url)
    try:
        expected = SqliteJobStore if store_url.startswith("sqlite") else PostgresJobStore
        assert isinstance(s, expected)
    finally:
        s.close()
    with pytest.raises(JobStoreConfigError):
        create_job_store("mysql://x")


def test_submit_is_idempotent_by_key(store: JobStore) -> None:
    a, created = store.submit(key="study:1.2.3:v1", kind=JobKind.PULL, payload={"study_uid": "1"})
    b, again = store.submit(key="study:1.2.3:v1", kind=JobKind.PULL, payload={"other": 2})
    assert created
    assert not again
    assert b.id == a.id
    assert b.payload == {"study_uid": "1"}
    assert a.state is JobState.QUEUED
    assert a.attempts == 0
    assert store.get(a.id) == a
    assert store.counts_by_state()[JobState.QUEUED] == 1


def test_claim_oldest_first_sets_lease(store: JobStore) -> None:
    jobs = _submit(store, 3)
    c = store.claim("w1", lease_s=30)
    assert c is not None
    assert c.id == jobs[0].id
    assert c.state is JobState.RUNNING
    assert c.worker_id == "w1"
    assert c.attempts == 1
    assert c.lease_until is not None
    assert c.started_at is not None
    assert c.lease_until > datetime.now(UTC) + timedelta(seconds=20)
    store.heartbeat(c.id, "w1", lease_s=60)
    with pytest.raises(LeaseLost):
        store.heartbeat(c.id, "w2", lease_s=60)
    with pytest.raises(LeaseLost):
        store.complete(c.id, "w2", {})


def _claim_all(
    store: JobStore, worker: str, out: list[str], start: threading.Barrier | None = None
) -> None:
    if start is not None:
        start.wait()  # every thread begins claiming at the same moment
    while (job := store.claim(worker, lease_s=60)) is not None:
        out.append(job.id)
        time.sleep(0.002)  # "work": the other workers claim meanwhile
        store.complete(job.id, worker, {"priority": 4})


def test_concurrent_threads_claim_each_job_exactly_once(store: JobStore) -> None:
    jobs = _submit(store, 200)
    claimed: list[list[str]] = [[] for _ in range(4)]
    start = threading.Barrier(4)
    threads = [
        threading.Thread(target=_claim_all, args=(store, f"w{i}", claimed[i], start))
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [j for c in claimed for j in c]
    assert sorted(every) == sorted(j.id for j in jobs)  # each exactly once
    assert sum(1 for c in claimed if c) >= 2  # the claims really were concurrent
    assert store.counts_by_state()[JobState.DONE] == 200


def _process_claims(url: str, worker: str, queue: Any) -> None:
    store = create_job_store(url)
    got: list[str] = []
    try:
        _claim_all(store, worker, got)
    finally:
        store.close()
    queue.put(got)


def test_concurrent_processes_claim_each_job_exactly_once(store: JobStore, store_url: str) -> None:
    jobs = _submit(store, 100)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_process_claims, args=(store_url, f"p{i}", queue)) for i in range(2)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    every = [j for r in results for j in r]
    assert sorted(every) == sorted(j.id for j in jobs)


def test_expired_lease_is_requeued_then_failed_when_attempts_spent(store: JobStore) -> None:
    (job,) = _submit(store, 1)
    for attempt in range(1, 4):
        c = store.claim(f"dead{attempt}", lease_s=0.2)
        assert c is not None
        assert c.id == job.id
        assert c.attempts == attempt
        assert store.requeue_expired() == 0  # lease still valid
        time.sleep(0.3)
        assert store.requeue_expired() == 1
    final = store.get(job.id)
    assert final is not None
    assert final.state is JobState.FAILED
    assert final.error is not None
    assert "died" in final.error
    # The dead worker's late report is refused.
    with pytest.raises(LeaseLost):
        store.complete(job.id, "dead3", {})


def test_requeued_job_is_taken_by_another_worker(store: JobStore) -> None:
    (job,) = _submit(store, 1)
    assert store.claim("dead", lease_s=0.2) is not None
    assert store.claim("alive", lease_s=30) is None  # running elsewhere
    time.sleep(0.3)
    store.requeue_expired()
    c = store.claim("alive", lease_s=30)
    assert c is not None
    assert c.id == job.id
    assert c.attempts == 2
    done = store.complete(c.id, "alive", {"priority": 2})
    assert done.state is JobState.DONE
    assert done.priority == 2


def test_retry_with_backoff_then_failed(store: JobStore) -> None:
    (job,) = _submit(store, 1)
    delays = []
    for attempt in range(1, 4):
        deadline = time.monotonic() + 5
        while (c := store.claim("w", lease_s=30)) is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert c.attempts == attempt
        t0 = time.monotonic()
        f = store.fail(c.id, "w", f"PACS unreachable ({attempt})", retry=True)
        if attempt < 3:
            assert f.state is JobState.QUEUED
            assert f.not_before is not None
            assert store.claim("w", lease_s=30) is None  # backing off
            while store.get(job.id).not_before > datetime.now(UTC):  # type: ignore[union-attr,operator]
                time.sleep(0.01)
            delays.append(time.monotonic() - t0)
        else:
            assert f.state is JobState.FAILED
            assert f.error == "PACS unreachable (3)"
    # base 0.2 s, doubling: ~0.2 then ~0.4 s
    assert 0.1 < delays[0] < 0.35, delays
    assert 0.3 < delays[1] < 0.6, delays


def test_fail_without_retry_and_decline_are_final(store: JobStore) -> None:
    _a, b = _submit(store, 2)
    ca = store.claim("w", lease_s=30)
    assert ca is not None
    assert store.fail(ca.id, "w", "bad", retry=False).state is JobState.FAILED
    cb = store.claim("w", lease_s=30)
    assert cb is not None
    assert cb.id == b.id
    d = store.decline(cb.id, "w", "not a chest CT: 12 slices")
    assert d.state is JobState.DECLINED
    assert d.error == "not a chest CT: 12 slices"
    assert store.claim("w", lease_s=30) is None
    assert store.requeue_expired() == 0


def _result(priority: int, severity: int, pct: float) -> dict[str, Any]:
    return {
        "priority": priority,
        "severity_score": severity,
        "percent_involvement": {"total": pct},
        "triage": {1: "severe", 2: "moderate", 3: "mild", 4: "normal"}[priority],
    }


def test_worklist_order_and_batch_progress(store: JobStore) -> None:
    jobs = _submit(store, 8)
    batch = store.create_batch(name="rtw", created_by="dr-a", job_ids=[j.id for j in jobs])
    assert store.get_batch(batch.id) is not None
    assert store.get_batch(batch.id).job_ids == tuple(j.id for j in jobs)  # type: ignore[union-attr]
    p0 = store.batch_progress(batch.id)
    assert (p0.total, p0.queued, p0.rate_per_min, p0.eta_s) == (8, 8, None, None)
    outcomes: list[tuple[str, Any]] = [
        ("done", _result(3, 2, 4.0)),
        ("done", _result(1, 18, 60.0)),
        ("done", _result(3, 5, 9.0)),
        ("done", _result(1, 20, 55.0)),
        ("declined", "localizer only"),
        ("failed", "PACS down"),
    ]
    ids = {}
    for kind, value in outcomes:
        c = store.claim("w", lease_s=30)
        assert c is not None
        ids[c.id] = (kind, value)
        if kind == "done":
            store.complete(c.id, "w", value)
        elif kind == "declined":
            store.decline(c.id, "w", value)
        else:
            store.fail(c.id, "w", value, retry=False)
    running = store.claim("w", lease_s=30)
    assert running is not None
    order = store.worklist(batch_id=batch.id)
    got = [(j.state.value, j.priority, j.result.get("severity_score")) for j in order]
    assert got == [
        ("done", 1, 20),
        ("done", 1, 18),
        ("done", 3, 5),
        ("done", 3, 2),
        ("running", None, None),
        ("queued", None, None),
        ("declined", None, None),
        ("failed", None, None),
    ]
    p = store.batch_progress(batch.id)
    assert (p.done, p.declined, p.failed, p.running, p.queued) == (4, 1, 1, 1, 1)
    assert p.remaining == 2
    assert p.total == 8
    assert p.rate_per_min is not None
    assert p.rate_per_min > 0
    assert p.eta_s is not None
    assert p.eta_s == pytest.approx(60.0 * 2 / p.rate_per_min)
    assert [j.id for j in store.list_jobs(batch_id=batch.id)] == [j.id for j in jobs]
    assert len(store.list_jobs(states=[JobState.DONE])) == 4


def test_progress_arithmetic() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    p = progress_from(
        "b",
        {JobState.DONE: 9, JobState.FAILED: 1, JobState.QUEUED: 20},
        t0,
        t0 + timedelta(minutes=5),
    )
    assert p.rate_per_min == pytest.approx(2.0)
    assert p.eta_s == pytest.approx(600.0)


def test_worker_runs_declines_and_retries(store: JobStore) -> None:
    _submit(store, 3)
    calls: dict[str, int] = {}

    def runner(job: Job) -> JobOutcome:
        calls[job.key] = calls.get(job.key, 0) + 1
        if job.key == "k1":
            raise StudyDeclined("not a chest CT")
        if job.key == "k2" and calls[job.key] == 1:
            raise TriageError("PACS unreachable")
        time.sleep(0.5)  # longer than the lease: only the heartbeat keeps it
        return JobOutcome(result={"priority": 4, "severity_score": 0})

    worker = Worker(store, runner, "w1", lease_s=0.3, heartbeat_s=0.05, idle_s=0.05)
    stop = threading.Event()
    t = threading.Thread(target=worker.run, args=(stop,))
    t.start()
    deadline = time.monotonic() + 20
    while (
        store.counts_by_state()[JobState.QUEUED] + store.counts_by_state()[JobState.RUNNING]
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    stop.set()
    t.join()
    states = {j.key: j for j in store.list_jobs()}
    assert states["k0"].state is JobState.DONE
    assert states["k0"].attempts == 1
    assert states["k1"].state is JobState.DECLINED
    assert calls["k1"] == 1
    assert states["k2"].state is JobState.DONE
    assert states["k2"].attempts == 2
    assert calls == {"k0": 1, "k1": 1, "k2": 2}
