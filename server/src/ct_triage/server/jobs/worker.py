"""Workers: take jobs from the :class:`~ct_triage.server.jobs.model.JobStore` and run them.

A :class:`Worker` claims one job at a time with a lease, extends the lease from a heartbeat
thread while the job runs, and records the outcome: done, declined (final), or failed
(retried with backoff by the store until the job's attempts are spent). A worker that dies
stops heart-beating; its lease expires and :meth:`JobStore.requeue_expired` (called by every
worker before each claim) queues the job again; a worker starting on the same host releases
the jobs of its dead processes at once (:meth:`JobStore.release_dead_leases`).

:class:`BridgeJobRunner` is the real runner: pull jobs are retrieved from the PACS through
the :class:`~ct_triage.server.bridge.Bridge`, upload jobs read from their path, push jobs
name series claimed in the spool; all go through
:func:`ct_triage.server.pipeline.analyze_study`, whose report the runner records (it does
not read back what was just written), and their results are queued in the bridge's outbox.
Both steps are idempotent, so a job re-run after a crash analyses and delivers its study
exactly once: the result folder is keyed by the job key and a complete ``report.json`` in it
is reused; the outbox ``job_ref`` is the job key.

``ct-triage worker`` (:mod:`ct_triage.server.cli.worker`) runs workers in a process of their
own.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ct_triage.dicom_bridge.spool import ReadySeries
from ct_triage.models.errors import StudyDeclined, TriageError
from ct_triage.server.jobs.model import Job, JobKind, JobStore, LeaseLost
from ct_triage.server.logconfig import job_context
from ct_triage.server.outputs import REPORT_NAME
from ct_triage.server.pipeline import analyze_study
from ct_triage.server.worklist import result_summary

if TYPE_CHECKING:
    from ct_triage.server.bridge import Bridge

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """What a runner returns for a job that ran to an answer (errors are raised instead)."""

    result: dict[str, Any] = field(default_factory=dict)


#: A job runner: analyse the job's study and return its outcome. Raises
#: :class:`StudyDeclined` (final), :class:`TriageError` or any exception (retried).
JobRunner = Callable[[Job], JobOutcome]


class Worker:
    """Run jobs from ``store`` with ``runner``, one at a time.

    Parameters
    ----------
    store
        The job store.
    runner
        Analyses one job (see :data:`JobRunner`).
    worker_id
        Unique name of this worker (recorded on its jobs).
    lease_s
        A claimed job is this worker's for this long, extended by each heartbeat.
    heartbeat_s
        Heartbeat interval; default a third of ``lease_s``.
    idle_s
        Wait between polls when no job is runnable.
    wake
        Set by whoever submits a job (``serve``'s intake) to end the idle wait at once.
    after_job
        Called after each job (``run_workers`` wakes the delivery loop with it).
    """

    def __init__(
        self,
        store: JobStore,
        runner: JobRunner,
        worker_id: str,
        *,
        lease_s: float = 120.0,
        heartbeat_s: float | None = None,
        idle_s: float = 0.5,
        wake: threading.Event | None = None,
        after_job: Callable[[], None] | None = None,
    ) -> None:
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        self.store = store
        self.runner = runner
        self.worker_id = worker_id
        self.lease_s = lease_s
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else lease_s / 3.0
        if not 0 < self.heartbeat_s < lease_s:
            raise ValueError("need 0 < heartbeat_s < lease_s")
        self.idle_s = idle_s
        self.wake = wake
        self.after_job = after_job

    def _idle(self, stop: threading.Event) -> None:
        if self.wake is None:
            stop.wait(self.idle_s)
        elif self.wake.wait(self.idle_s):
            self.wake.clear()

    def run(self, stop: threading.Event) -> None:
        """Run jobs until ``stop`` is set (the job in progress is finished first)."""
        logger.info("worker %s started", self.worker_id)
        try:  # jobs of this host's processes that died (SIGKILL, crash): at once, not at expiry
            self.store.release_dead_leases()
        except TriageError as exc:
            logger.error("worker %s: %s", self.worker_id, exc)
        while not stop.is_set():
            try:
                worked = self.run_once()
            except TriageError as exc:  # store unreachable: logged once, the loop goes on
                logger.error("worker %s: %s", self.worker_id, exc)
                worked = False
            if not worked:
                self._idle(stop)
        logger.info("worker %s stopped", self.worker_id)

    def run_once(self) -> bool:
        """Claim and run one job; False when no job was runnable."""
        self.store.requeue_expired()
        job = self.store.claim(self.worker_id, lease_s=self.lease_s)
        if job is None:
            return False
        with job_context(job.id[:12]):
            self._run(job)
        if self.after_job is not None:
            self.after_job()
        return True

    def _heartbeat(self, job: Job, done: threading.Event) -> None:
        while not done.wait(self.heartbeat_s):
            try:
                self.store.heartbeat(job.id, self.worker_id, lease_s=self.lease_s)
            except LeaseLost as exc:
                logger.warning("heartbeat: %s", exc)
                return
            except TriageError as exc:  # transient store error: try again next beat
                logger.warning("heartbeat of job %s failed: %s", job.id, exc)

    def _run(self, job: Job) -> None:
        logger.info("job %s (%s) attempt %d/%d", job.id, job.kind, job.attempts, job.max_attempts)
        done = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat, args=(job, done), name=f"heartbeat-{job.id[:8]}", daemon=True
        )
        beat.start()
        try:
            try:
                outcome = self.runner(job)
            except StudyDeclined as exc:
                self.store.decline(job.id, self.worker_id, str(exc))
                logger.warning("job %s declined: %s", job.id, exc)
                return
            except TriageError as exc:
                j = self.store.fail(job.id, self.worker_id, str(exc), retry=True)
                logger.error("job %s failed (%s): %s", job.id, j.state, exc)
                return
            except Exception as exc:
                j = self.store.fail(
                    job.id,
                    self.worker_id,
                    f"internal error: {type(exc).__name__}: {exc}",
                    retry=True,
                )
                logger.exception("job %s failed unexpectedly (%s)", job.id, j.state)
                return
            self.store.complete(job.id, self.worker_id, outcome.result)
            logger.info("job %s done", job.id)
        except LeaseLost as exc:
            # Another worker took the job over; its outcome is the same (idempotent runner).
            logger.warning("job %s: outcome not recorded: %s", job.id, exc)
        finally:
            done.set()
            beat.join()


class BridgeJobRunner:
    """Run pull / upload / push jobs through the bridge and the one analysis pipeline.

    Parameters
    ----------
    bridge
        The bridge (PACS access, spool, results folder, outbox).
    """

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self._retrieve_lock = threading.Lock()

    def __call__(self, job: Job) -> JobOutcome:
        """Analyse the job's study (or reuse its complete result) and queue its delivery."""
        out = self.bridge.job_result_dir(job.key)
        report_path = out / REPORT_NAME
        if report_path.is_file():
            # A previous attempt finished the analysis (then died): reuse, never redo.
            report: dict[str, Any] = json.loads(report_path.read_text())
            logger.info("job %s: reusing the complete result of a previous attempt", job.id)
        elif job.kind is JobKind.PULL:
            study_uid = self._retrieve(job)
            report = self.bridge.analyse_study_folder(study_uid, out).report
        elif job.kind is JobKind.PUSH and "series" in job.payload:
            report = self._analyse_pushed(job, out)
        else:
            path = job.payload.get("path")
            if not path:
                raise StudyDeclined(f"{job.kind} job has no 'path' to analyse")
            try:
                report = analyze_study(
                    Path(str(path)), out, self.bridge.model, self.bridge.options
                ).report
            except StudyDeclined as exc:
                # the PACS shows that the study was seen and why it was skipped, as for push
                # and pull (nothing is written when the files hold no DICOM header)
                self.bridge.report_not_analysed(
                    "uploads", str(exc), tag=out.name, source=Path(str(path))
                )
                raise
        self.bridge.enqueue_results(out, job_ref=job.key, report=report)
        return JobOutcome(result=result_summary(report, str(out)))

    def _analyse_pushed(self, job: Job, out: Path) -> dict[str, Any]:
        """Series pushed to our SCP, claimed in the spool by ``serve``: analyse them."""
        claimed = [
            ReadySeries(**{**item, "folder": Path(item["folder"])})
            for item in job.payload["series"]
        ]
        outcome = self.bridge.analyse_claimed(str(job.payload["study_uid"]), claimed, out)
        if outcome.status != "analysed" or outcome.report is None:
            raise StudyDeclined(outcome.detail)
        return outcome.report

    def _retrieve(self, job: Job) -> str:
        study_uid = job.payload.get("study_uid") or job.study_uid
        accession = job.payload.get("accession") or job.accession
        if not study_uid and not accession:
            raise StudyDeclined("pull job names neither a StudyInstanceUID nor an accession")
        with self._retrieve_lock:
            matches = self.bridge.find_studies(study_uid=study_uid, accession=accession)
            if not matches:
                what = f"StudyInstanceUID {study_uid}" if study_uid else f"accession {accession}"
                raise StudyDeclined(f"no CT study found in the PACS for {what}")
            if len(matches) > 1:
                logger.warning(
                    "job %s: %d studies match; analysing the first", job.id, len(matches)
                )
            uid = matches[0].study_instance_uid
            n = self.bridge.retrieve_study(uid)
        if n == 0:
            raise StudyDeclined(f"study {uid}: no CT instance could be retrieved")
        return uid


def run_workers(
    store: JobStore,
    bridge: Bridge,
    stop: threading.Event,
    *,
    n_workers: int,
    lease_s: float = 120.0,
    deliver_interval_s: float = 0.5,
    name: str | None = None,
    wake: threading.Event | None = None,
) -> None:
    """Run ``n_workers`` workers and the bridge's delivery loop until ``stop`` is set.

    ``wake`` (set by the submitter of a job) ends the workers' idle wait at once; a finished
    job wakes the delivery loop, so results leave without waiting for the next poll.
    Returns after every thread has finished its current step.
    """
    prefix = name or f"worker-{uuid.uuid4().hex[:8]}"
    runner = BridgeJobRunner(bridge)
    deliver_now = threading.Event()
    threads = [
        threading.Thread(
            target=Worker(
                store,
                runner,
                f"{prefix}-{i}",
                lease_s=lease_s,
                wake=wake,
                after_job=deliver_now.set,
            ).run,
            args=(stop,),
            name=f"{prefix}-{i}",
        )
        for i in range(n_workers)
    ]

    def deliver_loop() -> None:
        while not stop.is_set():
            try:
                bridge.deliver(wait=False)  # destinations run on their own threads
            except TriageError as exc:
                logger.error("delivery step failed: %s", exc)
            except Exception:
                logger.exception("delivery step failed unexpectedly")
            if deliver_now.wait(deliver_interval_s):
                deliver_now.clear()

    threads.append(threading.Thread(target=deliver_loop, name=f"{prefix}-deliver"))
    for t in threads:
        t.start()
    for t in threads:
        t.join()


__all__ = [
    "BridgeJobRunner",
    "JobOutcome",
    "JobRunner",
    "Worker",
    "run_workers",
]
