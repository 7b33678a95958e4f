"""The durable job stores (SQLite and a real PostgreSQL server) and the worker.

Every test runs on both stores: idempotent submit, exactly-once claims under concurrency
(threads; and processes for SQLite), lease expiry, retries with backoff, final declines,
worklist order and batch progress.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from orthanc import free_port
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
from ct_triage.server.jobs.owner import LeaseOwner, current_owner
from ct_triage.server.jobs.store import SqlJobStore
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
        assert isinstance(s, SqlJobStore)
        assert s.dialect == ("sqlite" if store_url.startswith("sqlite") else "postgresql")
    finally:
        s.close()
    with pytest.raises(JobStoreConfigError):
        create_job_store("mysql://x")


def test_unreachable_or_closed_store_is_a_triage_error(tmp_path: Path) -> None:
    with pytest.raises(TriageError, match="PostgreSQL job store unreachable"):
        create_job_store(f"postgresql://postgres@127.0.0.1:{free_port()}/none")
    s = create_job_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    s.close()
    with pytest.raises(TriageError, match="job store is closed"):
        s.get("x")


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

    def unfinished() -> int:
        # one snapshot: two separate counts could straddle k2's RUNNING -> QUEUED retry and
        # read 0 + 0 (seen once in CI on PostgreSQL)
        counts = store.counts_by_state()
        return counts[JobState.QUEUED] + counts[JobState.RUNNING]

    while unfinished() and time.monotonic() < deadline:
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


# -- databases of the previous version ---------------------------------------------------------
#: The schema the previous version (separate SQLite and PostgreSQL stores) created.
_V1_SCHEMA = {
    "sqlite": """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL, state TEXT NOT NULL, payload TEXT NOT NULL, batch_id TEXT,
    study_uid TEXT, accession TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL, not_before REAL, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, started_at REAL, finished_at REAL, worker_id TEXT,
    lease_until REAL, priority INTEGER, result TEXT NOT NULL DEFAULT '{}', error TEXT);
CREATE INDEX jobs_runnable ON jobs (state, not_before, created_at);
CREATE INDEX jobs_lease ON jobs (state, lease_until);
CREATE TABLE batches (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at REAL NOT NULL, created_by TEXT NOT NULL);
CREATE TABLE batch_jobs (
    batch_id TEXT NOT NULL REFERENCES batches(id), job_id TEXT NOT NULL REFERENCES jobs(id),
    position INTEGER NOT NULL, PRIMARY KEY (batch_id, job_id));
CREATE INDEX batch_jobs_job ON batch_jobs (job_id)""",
    "postgresql": """
CREATE TABLE ct_triage_jobs (
    seq BIGSERIAL UNIQUE, id TEXT PRIMARY KEY, key TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
    state TEXT NOT NULL, payload JSONB NOT NULL, batch_id TEXT, study_uid TEXT, accession TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,
    not_before TIMESTAMPTZ, created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL,
    started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, worker_id TEXT, lease_until TIMESTAMPTZ,
    priority INTEGER, result JSONB NOT NULL DEFAULT '{}'::jsonb, error TEXT);
CREATE INDEX ct_triage_jobs_runnable ON ct_triage_jobs (state, not_before, created_at);
CREATE INDEX ct_triage_jobs_lease ON ct_triage_jobs (state, lease_until);
CREATE TABLE ct_triage_batches (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL,
    created_by TEXT NOT NULL);
CREATE TABLE ct_triage_batch_jobs (
    batch_id TEXT NOT NULL REFERENCES ct_triage_batches(id),
    job_id TEXT NOT NULL REFERENCES ct_triage_jobs(id), position INTEGER NOT NULL,
    PRIMARY KEY (batch_id, job_id));
CREATE INDEX ct_triage_batch_jobs_job ON ct_triage_batch_jobs (job_id)""",
}


def _raw_sql(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement with the database's own driver (``?`` placeholders, autocommit)."""
    if url.startswith("sqlite"):
        db = sqlite3.connect(url[len("sqlite:///") :], isolation_level=None)
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()
    import psycopg  # only where PostgreSQL runs (tests/pg.py skips without it)

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql.replace("?", "%s"), params)
        return cur.fetchall() if cur.description else []


def _table(url: str, name: str) -> str:
    return name if url.startswith("sqlite") else f"ct_triage_{name}"


def test_previous_version_database_opens_and_is_migrated(store_url: str) -> None:
    dialect = "sqlite" if store_url.startswith("sqlite") else "postgresql"
    for stmt in _V1_SCHEMA[dialect].split(";"):
        _raw_sql(store_url, stmt)
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    when: Any = t0.timestamp() if dialect == "sqlite" else t0
    lease: Any = (
        (t0 + timedelta(hours=1)).timestamp() if dialect == "sqlite" else t0 + timedelta(hours=1)
    )
    jobs, batches, links = (_table(store_url, n) for n in ("jobs", "batches", "batch_jobs"))
    cast = "" if dialect == "sqlite" else "::jsonb"
    insert = (
        f"INSERT INTO {jobs} (id, key, kind, state, payload, attempts, max_attempts, created_at,"
        f" updated_at, started_at, worker_id, lease_until) VALUES (?, ?, ?, ?, ?{cast}, ?, 3,"
        " ?, ?, ?, ?, ?)"
    )
    _raw_sql(
        store_url,
        insert,
        "j-run",
        "k-run",
        "pull",
        "running",
        '{"accession": "A1"}',
        1,
        when,
        when,
        when,
        "old-worker",
        lease,
    )
    _raw_sql(
        store_url,
        insert,
        "j-new",
        "k-new",
        "upload",
        "queued",
        '{"path": "/x.zip"}',
        0,
        when,
        when,
        None,
        None,
        None,
    )
    _raw_sql(store_url, f"INSERT INTO {batches} VALUES ('b1', 'rtw', ?, 'dr-a')", when)
    for pos, job_id in enumerate(("j-run", "j-new")):
        _raw_sql(store_url, f"INSERT INTO {links} VALUES ('b1', ?, ?)", job_id, pos)

    for _reopen in range(2):  # the migration is done once, the second open finds it done
        store = create_job_store(store_url, retry=FAST)
        try:
            old = store.get("j-run")
            assert old is not None
            assert (old.state, old.worker_id, old.payload) == (
                JobState.RUNNING,
                "old-worker",
                {"accession": "A1"},
            )
            assert old.created_at is not None
            assert abs((old.created_at - t0).total_seconds()) < 0.01
            assert old.lease_until is not None
            assert old.lease_until > datetime.now(UTC)
            assert store.get_batch("b1").job_ids == ("j-run", "j-new")  # type: ignore[union-attr]
            # a lease of the previous version names no process: left to expire
            assert store.release_dead_leases() == 0
            assert store.requeue_expired() == 0
        finally:
            store.close()
    columns = (
        [r[1] for r in _raw_sql(store_url, "PRAGMA table_info(jobs)")]
        if dialect == "sqlite"
        else [
            r[0]
            for r in _raw_sql(
                store_url,
                "SELECT column_name FROM information_schema.columns WHERE table_name = ?",
                jobs,
            )
        ]
    )
    assert "lease_owner" in columns
    store = create_job_store(store_url, retry=FAST)
    try:
        c = store.claim("new-worker", lease_s=30)
        assert c is not None
        assert (c.id, c.attempts, c.payload) == ("j-new", 1, {"path": "/x.zip"})
        done = store.complete(c.id, "new-worker", {"priority": 3})
        assert (done.state, done.priority) == (JobState.DONE, 3)
        p = store.batch_progress("b1")
        assert (p.done, p.running, p.queued) == (1, 1, 0)
        fresh, created = store.submit(key="k-next", kind=JobKind.PULL, payload={})
        assert created
        assert [j.id for j in store.list_jobs()] == [fresh.id, "j-new", "j-run"]
    finally:
        store.close()
    if dialect == "sqlite":
        assert _raw_sql(store_url, "PRAGMA journal_mode") == [("wal",)]


# -- dead processes' leases (issue 16) ----------------------------------------------------------
_CLAIMER = """
import sys, time
from ct_triage.server.jobs.factory import create_job_store
job = create_job_store(sys.argv[1]).claim(sys.argv[2], lease_s=600)
print(job.id if job else "", flush=True)
time.sleep(600)
"""


def _claim_in_process(url: str, worker: str) -> tuple[subprocess.Popen[str], str]:
    """A real process that claims one job (lease 600 s) and then sleeps; its job id."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _CLAIMER, url, worker], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    job_id = proc.stdout.readline().strip()
    assert job_id, f"claimer exited with {proc.poll()}"
    return proc, job_id


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def _set_owner(url: str, job_id: str, owner: str) -> None:
    _raw_sql(url, f"UPDATE {_table(url, 'jobs')} SET lease_owner = ? WHERE id = ?", owner, job_id)


def test_dead_process_lease_is_released_at_once_other_leases_kept(
    store: JobStore, store_url: str
) -> None:
    _submit(store, 6)
    victim, victim_job = _claim_in_process(store_url, "victim")
    alive, alive_job = _claim_in_process(store_url, "alive")
    try:
        me = current_owner()
        assert me is not None
        host, _boot, pid_ns = me.scope.split("/")
        dead_pid = victim.pid
        _kill(victim)
        # Leases naming the same (now dead) PID in another scope are never judged from here:
        # another host, or this host before a reboot.
        kept = {}
        for i, scope in enumerate(("otherhost/boot/pid:[1]", f"{host}/{uuid.uuid4()}/{pid_ns}")):
            job = store.claim(f"remote{i}", lease_s=600)
            assert job is not None
            _set_owner(store_url, job.id, f"{scope}|{dead_pid}|1")
            kept[job.id] = f"remote{i}"
        kept[alive_job] = "alive"
        # This PID, but another start time: the PID was reused after its owner died.
        reused = store.claim("reused", lease_s=600)
        assert reused is not None
        _set_owner(store_url, reused.id, f"{me.scope}|{os.getpid()}|1")

        assert store.requeue_expired() == 0  # every lease is valid for 10 more minutes
        t0 = time.monotonic()
        assert store.release_dead_leases() == 2  # the victim's and the reused PID's, at once
        assert time.monotonic() - t0 < 5
        for job_id, pid in ((victim_job, dead_pid), (reused.id, os.getpid())):
            j = store.get(job_id)
            assert j is not None
            assert (j.state, j.worker_id, j.attempts, j.not_before) == (
                JobState.QUEUED,
                None,
                1,
                None,
            )
            assert j.error is not None
            assert f"process {pid} is gone" in j.error
        for job_id, worker in kept.items():
            j = store.get(job_id)
            assert j is not None
            assert (j.state, j.worker_id) == (JobState.RUNNING, worker)
        assert store.release_dead_leases() == 0
        _kill(alive)  # the live process's lease was kept because it lived
        assert store.release_dead_leases() == 1
        assert store.get(alive_job).state is JobState.QUEUED  # type: ignore[union-attr]
    finally:
        for proc in (victim, alive):
            if proc.poll() is None:
                _kill(proc)


def test_restarted_worker_runs_the_killed_process_job_at_once(
    store: JobStore, store_url: str
) -> None:
    (job,) = _submit(store, 1)
    victim, victim_job = _claim_in_process(store_url, "victim")
    assert victim_job == job.id
    _kill(victim)  # SIGKILL mid-analysis: the lease (600 s) is still valid
    ran: list[Job] = []

    def runner(j: Job) -> JobOutcome:
        ran.append(j)
        return JobOutcome(result={"priority": 4})

    worker = Worker(store, runner, "restarted", lease_s=600, idle_s=0.05)
    stop = threading.Event()
    t0 = time.monotonic()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        while store.counts_by_state()[JobState.DONE] == 0 and time.monotonic() - t0 < 30:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
    assert time.monotonic() - t0 < 30  # well under the lease
    done = store.get(job.id)
    assert done is not None
    assert (done.state, done.worker_id, done.attempts) == (JobState.DONE, "restarted", 2)
    assert [j.id for j in ran] == [job.id]


def test_lease_owner_of_a_process() -> None:
    me = current_owner()
    assert me is not None
    assert not me.is_gone()
    assert LeaseOwner.parse(me.token) == me
    assert LeaseOwner.parse(None) is None
    assert LeaseOwner.parse("worker-1") is None
    assert LeaseOwner.parse(f"{me.scope}|{os.getpid()}|{me.start}1").is_gone()  # type: ignore[union-attr]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stat = Path(f"/proc/{child.pid}/stat").read_text()
        owner = LeaseOwner(me.scope, child.pid, stat[stat.rindex(")") + 2 :].split()[19])
        assert not owner.is_gone()
        child.send_signal(signal.SIGKILL)
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped: a zombie
        assert owner.is_gone()
    finally:
        child.kill()
        child.wait()
    assert owner.is_gone()
