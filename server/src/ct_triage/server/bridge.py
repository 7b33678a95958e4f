"""The DICOM bridge service: receive or pull studies, analyse complete series, deliver results.

It wires the bridge's parts (``dicom_bridge.scp``/``spool``/``query``/``dicomweb``/
``deliver``) to the one analysis pipeline (:mod:`ct_triage.server.pipeline`); it holds no
DICOM protocol code and no compute of its own.

Flow::

    PACS --C-STORE--> StorageSCP --> Spool --(series quiet)--> process_due()
    PACS <--C-FIND/C-MOVE/C-GET/QIDO/WADO-- pull() / poll_once() --> Spool
    process_due(): choose the study's series -> analyse -> results/ -> Outbox.enqueue
    deliver(): Outbox.run_once() --> C-STORE / STOW-RS destinations (retried, dead-lettered)

Selection is per *study*: when a series completes, the bridge waits until no other series of
the same study is still arriving, then chooses among all of the study's series (a scout, a
soft-tissue and a lung series pushed together give one analysis of the lung series). A series
already analysed at its current generation is not analysed again; a late instance bumps its
generation, and the new result supersedes the old one (recorded in ``report.json`` and in the
new SR's PredecessorDocumentsSequence); with ``retract_superseded`` configured, the old
result's series are deleted from the PACS once the new result is delivered
(:mod:`ct_triage.dicom_bridge.retract`).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from ct_triage.dicom_bridge.deliver import CStoreDestination, Destination, Outbox, StowDestination
from ct_triage.dicom_bridge.dicomweb import BasicAuth, BearerToken, DicomWebClient, DicomWebNode
from ct_triage.dicom_bridge.load import load_series
from ct_triage.dicom_bridge.query import DimseClient, PacsError, PacsNode, StudyMatch
from ct_triage.dicom_bridge.retract import (
    DicomWebRetractor,
    OrthancRetractor,
    Retractor,
    parse_retract_target,
)
from ct_triage.dicom_bridge.scp import StorageSCP
from ct_triage.dicom_bridge.spool import PurgeReport, ReadySeries, SeriesState, Spool
from ct_triage.dicom_bridge.tls import client_ssl_context, server_ssl_context
from ct_triage.models.analysis import LesionModel
from ct_triage.models.errors import StudyDeclined, TriageError
from ct_triage.models.identity import ModelIdentity
from ct_triage.server.logconfig import job_context
from ct_triage.server.pipeline import (
    AnalysisOptions,
    AnalysisResult,
    analyze_series,
    analyze_study,
    choose_series,
    result_files,
    write_not_analysed,
)
from ct_triage.server.settings import Settings, parse_dimse_node
from ct_triage.server.timing import StageTimer

logger = logging.getLogger(__name__)


class ConfigurationError(TriageError):
    """The bridge settings cannot work (e.g. pulling without a PACS)."""


@dataclass(frozen=True, slots=True)
class StudyOutcome:
    """What happened to one study when its series completed."""

    study_uid: str
    series_uid: str | None
    status: str  # "analysed" | "declined" | "failed" | "skipped"
    detail: str
    result_dir: Path | None = None


def _ssl_server(settings: Settings) -> Any:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    return server_ssl_context(
        settings.tls_cert,
        settings.tls_key,
        ca=settings.tls_ca,
        require_client_cert=settings.tls_ca is not None,
    )


def _ssl_client(settings: Settings) -> Any:
    if settings.tls_ca is None:
        return None
    return client_ssl_context(settings.tls_ca, settings.tls_cert, settings.tls_key)


def dicomweb_node(settings: Settings, url: str | None = None) -> DicomWebNode | None:
    """The PACS's DICOMweb service from the settings (``None`` when not configured)."""
    url = url or settings.pacs_dicomweb_url
    if not url:
        return None
    auth: BasicAuth | BearerToken | None = None
    if settings.pacs_dicomweb_token:
        auth = BearerToken(settings.pacs_dicomweb_token)
    elif settings.pacs_dicomweb_user:
        auth = BasicAuth(settings.pacs_dicomweb_user, settings.pacs_dicomweb_password or "")
    return DicomWebNode(url=url, auth=auth)


def build_destinations(settings: Settings) -> dict[str, Destination]:
    """Delivery destinations named by ``settings.destinations``, with the delivery timeouts."""
    out: dict[str, Destination] = {}
    for spec in settings.destinations:
        kind, _, target = spec.partition(":")
        if kind == "dimse":
            aet, host, port = parse_dimse_node(target)
            node = PacsNode(aet, host, port, tls=_ssl_client(settings))
            client = DimseClient(
                settings.ae_title,
                connect_timeout_s=settings.delivery_connect_timeout_s,
                acse_timeout_s=settings.delivery_association_timeout_s,
                dimse_timeout_s=settings.delivery_store_timeout_s,
                network_timeout_s=max(
                    settings.delivery_store_timeout_s, settings.delivery_association_timeout_s
                ),
            )
            out[spec] = CStoreDestination(node, client=client)
        else:
            web = dicomweb_node(settings, target)
            assert web is not None
            out[spec] = StowDestination(replace(web, timeout_s=settings.delivery_store_timeout_s))
    return out


def build_retractors(settings: Settings) -> dict[str, Retractor]:
    """Where superseded results are deleted (``settings.retract_superseded``)."""
    out: dict[str, Retractor] = {}
    for spec in settings.retract_superseded:
        kind, url = parse_retract_target(spec)
        node = dicomweb_node(settings, url)
        assert node is not None
        node = replace(node, timeout_s=settings.delivery_connect_timeout_s)
        out[spec] = OrthancRetractor(node) if kind == "orthanc" else DicomWebRetractor(node)
    return out


_RETRACTIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS retractions (
    job_ref         TEXT NOT NULL,
    target          TEXT NOT NULL,
    study_uid       TEXT NOT NULL,
    series_uids     TEXT NOT NULL,
    delivery_ids    TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error      TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_ref, target)
)
"""


class Bridge:
    """Receive/pull, analyse and deliver, with durable state under ``settings.data_dir``.

    Parameters
    ----------
    settings
        The process settings.
    lesion_model
        The lesion segmenter (loaded and validated once, at start-up).
    options
        Selection rules and triage thresholds.
    """

    def __init__(
        self,
        settings: Settings,
        lesion_model: LesionModel,
        options: AnalysisOptions,
        *,
        delivery_lease_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.model = lesion_model
        self.options = options
        data = settings.data_dir
        data.mkdir(parents=True, exist_ok=True)
        self.results_dir = data / "results"
        self.results_dir.mkdir(exist_ok=True)
        self.spool = Spool(
            data / "spool",
            quiet_period_s=settings.quiet_period_s,
            settle_s=settings.completion_settle_s,
            aborted_wait_s=settings.aborted_series_wait_s,
        )
        self.outbox = Outbox(
            data / "outbox",
            build_destinations(settings),
            max_attempts=settings.delivery_max_attempts,
            backoff_base_s=settings.delivery_backoff_s,
            lease_s=600.0 if delivery_lease_s is None else delivery_lease_s,
        )
        self._state = sqlite3.connect(data / "bridge.db", check_same_thread=False)
        self._state.execute(
            "CREATE TABLE IF NOT EXISTS seen_studies (study_uid TEXT PRIMARY KEY, seen REAL)"
        )
        self._state.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT)")
        self._state.execute(_RETRACTIONS_SCHEMA)
        self._state.commit()
        self._state_lock = threading.Lock()
        self.retractors = build_retractors(settings)
        self._lock = threading.Lock()
        self._next_purge = 0.0  # monotonic time of the next spool purge (0: at the first step)
        self.scp: StorageSCP | None = None
        if settings.dicom_port is not None:
            self.scp = StorageSCP(
                self.spool,
                ae_title=settings.ae_title,
                host=settings.dicom_host,
                port=settings.dicom_port,
                allowed_calling_aets=frozenset(settings.allowed_calling_aets) or None,
                ssl_context=_ssl_server(settings),
            )
        self.dimse = DimseClient(settings.ae_title)
        self.pacs = (
            PacsNode(*parse_dimse_node(settings.pacs), tls=_ssl_client(settings))
            if settings.pacs
            else None
        )
        self.web = dicomweb_node(settings)

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Start the DICOM listener (when configured)."""
        if self.scp is not None:
            try:
                self.scp.start()
            except (OSError, TriageError) as exc:  # the SCP reports a failed bind either way
                if isinstance(exc, TriageError) and "bind" not in str(exc):
                    raise
                raise ConfigurationError(
                    f"cannot listen for DICOM on {self.settings.dicom_host}:"
                    f"{self.settings.dicom_port}: "
                    f"{exc.strerror if isinstance(exc, OSError) else exc} (port in use? set "
                    "CT_TRIAGE_DICOM_PORT)"
                ) from exc
            logger.info("DICOM listener %s on port %d", self.settings.ae_title, self.scp.port)

    def check_pacs(self) -> None:
        """Start-up check: the configured PACS answers C-ECHO and/or DICOMweb (QIDO-RS).

        Raises
        ------
        ConfigurationError
            With the node and the reason (refused, rejected AE title, wrong password, ...).
        """
        try:
            if self.pacs is not None:
                self.dimse.echo(self.pacs)
            if self.web is not None:
                with DicomWebClient(self.web) as client:
                    client.search_studies(limit=1)
        except TriageError as exc:
            raise ConfigurationError(f"PACS check failed: {exc}") from exc

    #: How long :meth:`close` waits for delivery attempts still running (seconds).
    CLOSE_WAIT_S: float = 10.0

    def close(self) -> None:
        """Stop the listener, wait a little for running deliveries, close the state."""
        if self.scp is not None:
            self.scp.stop()
        if not self.outbox.join(timeout_s=self.CLOSE_WAIT_S):
            logger.warning(
                "deliveries still running at shutdown; they are re-sent after their lease"
            )
        self.spool.close()
        self._state.close()

    def __enter__(self) -> Bridge:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, stop: threading.Event, *, interval_s: float = 0.5) -> None:
        """Process, deliver, poll and purge the spool until ``stop`` is set."""
        next_poll = 0.0
        while not stop.is_set():
            try:
                self.process_due()
                self.deliver(wait=False)
                if self.settings.poll_interval_s and time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self.settings.poll_interval_s
                    self.poll_once()
                self.purge_spool_if_due()
            except TriageError as exc:  # logged once here; the loop goes on
                logger.error("bridge step failed: %s", exc)
            except Exception:
                logger.exception("bridge step failed unexpectedly")
            stop.wait(interval_s)

    # -- retention -----------------------------------------------------------------------
    #: How often :meth:`purge_spool_if_due` purges (seconds of monotonic time).
    PURGE_INTERVAL_S: float = 3600.0

    def purge_spool(self, now: float | None = None) -> PurgeReport:
        """Delete spooled instances past ``spool_retention_days`` (see :meth:`Spool.purge`)."""
        days = self.settings.spool_retention_days
        if days <= 0:
            return PurgeReport(0, 0, 0)
        return self.spool.purge(days * 86400.0, now=now)

    def purge_spool_if_due(self) -> None:
        """:meth:`purge_spool` at start-up and then once every :attr:`PURGE_INTERVAL_S`."""
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + self.PURGE_INTERVAL_S
            self.purge_spool()

    # -- analysis ------------------------------------------------------------------------
    def process_due(self, now: float | None = None) -> list[StudyOutcome]:
        """Analyse the studies whose series have completed (see the module docstring)."""
        with self._lock:
            return [
                self._process_claimed(study_uid, claimed)
                for study_uid, claimed in self._claim_ready_studies(now)
            ]

    def claim_due(self, now: float | None = None) -> list[tuple[str, list[ReadySeries]]]:
        """Claim the completed series of the studies that are ready, without analysing them.

        ``serve`` turns each group into a PUSH job (see
        :class:`ct_triage.server.jobs.worker.BridgeJobRunner`), which calls
        :meth:`analyse_claimed`. A claimed series that is never settled (the process died)
        is due again after a restart, and resubmitting it finds the same job (same key).
        """
        with self._lock:
            return self._claim_ready_studies(now)

    def _claim_ready_studies(self, now: float | None) -> list[tuple[str, list[ReadySeries]]]:
        ready = self.spool.due(now)
        by_study: dict[str, list[ReadySeries]] = {}
        for r in ready:
            by_study.setdefault(r.study_uid, []).append(r)
        groups = []
        for study_uid, series in by_study.items():
            due_uids = {r.series_uid for r in series}
            states = self.spool.study_series(study_uid)
            waiting = [
                uid
                for uid, st in states.items()
                if st is SeriesState.RECEIVING and uid not in due_uids
            ]
            if waiting:
                logger.info("study %s: %d series still arriving, waiting", study_uid, len(waiting))
                continue
            claimed: list[ReadySeries] = []
            for r in series:
                try:
                    claimed.append(self.spool.claim(r.series_uid, now))
                except TriageError as exc:  # another worker took it
                    logger.info("series %s not claimed: %s", r.series_uid, exc)
            if claimed:
                groups.append((study_uid, claimed))
        return groups

    def analyse_claimed(
        self, study_uid: str, claimed: list[ReadySeries], out_dir: Path
    ) -> StudyOutcome:
        """Analyse claimed series of one study into ``out_dir`` (no delivery queued).

        Raises
        ------
        StudyDeclined
            No usable chest CT in the study; the series are marked failed in the spool.
        """
        try:
            return self._analyse_claimed(study_uid, claimed, out_dir=out_dir, enqueue=False)
        except StudyDeclined as exc:
            for r in claimed:
                self.spool.mark_failed(r.series_uid, r.generation, f"declined: {exc}")
            self.report_not_analysed(study_uid, str(exc), tag=out_dir.name)
            raise

    def _process_claimed(self, study_uid: str, claimed: list[ReadySeries]) -> StudyOutcome:
        job = uuid.uuid4().hex[:12]
        with job_context(job):
            try:
                return self._analyse_claimed(study_uid, claimed, job=job)
            except StudyDeclined as exc:
                for r in claimed:
                    self.spool.mark_failed(r.series_uid, r.generation, f"declined: {exc}")
                self._write_declined(study_uid, job, str(exc))
                first = claimed[0]
                self.report_not_analysed(
                    study_uid, str(exc), tag=f"{first.series_uid}.g{first.generation}"
                )
                logger.warning("study %s declined: %s", study_uid, exc)
                return StudyOutcome(study_uid, None, "declined", str(exc))
            except TriageError as exc:
                for r in claimed:
                    self.spool.mark_failed(r.series_uid, r.generation, f"failed: {exc}")
                logger.error("study %s failed: %s", study_uid, exc)
                return StudyOutcome(study_uid, None, "failed", str(exc))
            except Exception as exc:
                for r in claimed:
                    self.spool.mark_failed(r.series_uid, r.generation, f"internal error: {exc}")
                logger.exception("study %s failed unexpectedly", study_uid)
                return StudyOutcome(study_uid, None, "failed", f"internal error: {exc}")

    def _analyse_claimed(
        self,
        study_uid: str,
        claimed: list[ReadySeries],
        *,
        job: str = "",
        out_dir: Path | None = None,
        enqueue: bool = True,
    ) -> StudyOutcome:
        study_folder = claimed[0].folder.parent
        timer = StageTimer()
        with tempfile.TemporaryDirectory(prefix="ct-triage-sel-") as work:
            choice = choose_series(study_folder, self.options, Path(work), timer)
        chosen_uid = choice.series.series_instance_uid
        chosen = next((r for r in claimed if r.series_uid == chosen_uid), None)
        verdict = next((v for v in choice.reasons if v.taken), None)
        if chosen is None:
            # The best series of the study was analysed before, at its current generation.
            reason = f"not selected: {verdict.label if verdict else chosen_uid} is preferred"
            for r in claimed:
                self.spool.mark_done(r.series_uid, r.generation, reason)
            return StudyOutcome(study_uid, chosen_uid, "skipped", reason)
        for r in claimed:
            if r is not chosen:
                why = next(
                    (v.reason for v in choice.reasons if v.series_instance_uid == r.series_uid),
                    "another series of the study is preferred",
                )
                self.spool.mark_done(r.series_uid, r.generation, f"not selected: {why}")
        with timer.stage("load"):
            series = load_series(choice.paths)
        out = out_dir or self.results_dir / study_uid / f"{chosen_uid}.g{chosen.generation}.{job}"
        result = analyze_series(
            series,
            choice,
            out,
            self.model,
            self.options,
            timer=timer,
            supersedes=self._superseded(chosen.previous_result_ref),
        )
        if enqueue:
            self.enqueue_results(out, job_ref=f"{chosen_uid}.g{chosen.generation}")
        self.spool.mark_done(chosen_uid, chosen.generation, str(out))
        triage = result.report["triage"]["category"]
        logger.info("study %s series %s analysed: triage %s", study_uid, chosen_uid, triage)
        return StudyOutcome(study_uid, chosen_uid, "analysed", triage, out)

    @property
    def outbox_has_destinations(self) -> bool:
        return bool(self.settings.destinations)

    @staticmethod
    def _superseded(previous_ref: str | None) -> dict[str, Any] | None:
        if not previous_ref:
            return None
        report = Path(previous_ref) / "report.json"
        if not report.is_file():
            return {"result": previous_ref}
        old = json.loads(report.read_text())
        outs = old.get("outputs", {})
        return {
            "result": previous_ref,
            "seg_sop_instance_uid": outs.get("seg", {}).get("sop_instance_uid"),
            "sr_sop_instance_uid": outs.get("sr", {}).get("sop_instance_uid"),
            "overlay_series_instance_uid": outs.get("overlay", {}).get("series_instance_uid"),
        }

    # -- jobs (pull / upload jobs of the job store) -------------------------------------
    def job_result_dir(self, job_key: str) -> Path:
        """The result folder of a job, stable across its attempts (keyed by the job key)."""
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in job_key)
        return self.results_dir / "jobs" / safe

    def analyse_study_folder(self, study_uid: str, out_dir: Path) -> AnalysisResult:
        """Analyse a study already in the spool (e.g. after :meth:`retrieve_study`).

        The study's series are then marked analysed in the spool, so that the push path
        (:meth:`process_due`) does not analyse them a second time.

        Raises
        ------
        StudyDeclined
            No usable chest CT series in the study (the series are marked failed).
        TriageError
            The study is not in the spool, or the analysis failed.
        """
        folder = self.spool.instances_dir / study_uid
        if not folder.is_dir():
            raise TriageError(f"study {study_uid} is not in the spool")
        try:
            result = analyze_study(folder, out_dir, self.model, self.options)
        except StudyDeclined as exc:
            self._settle_spool(study_uid, None, f"declined: {exc}")
            self.report_not_analysed(study_uid, str(exc), tag=out_dir.name)
            raise
        self._settle_spool(study_uid, str(result.out_dir), None)
        return result

    def _settle_spool(self, study_uid: str, result_ref: str | None, failure: str | None) -> None:
        # Everything retrieved is complete: claim as if the quiet period were over.
        later = time.time() + self.spool.settled_after_s + 1.0
        for series_uid, state in self.spool.study_series(study_uid).items():
            if state is not SeriesState.RECEIVING:
                continue
            try:
                ready = self.spool.claim(series_uid, later)
            except TriageError as exc:  # claimed by the push path meanwhile
                logger.info("series %s not settled: %s", series_uid, exc)
                continue
            if failure is None:
                self.spool.mark_done(series_uid, ready.generation, result_ref or "")
            else:
                self.spool.mark_failed(series_uid, ready.generation, failure)

    def enqueue_results(self, out_dir: Path, *, job_ref: str) -> list[str]:
        """Queue a result folder's SEG, SR and overlay for delivery (idempotent per job_ref).

        When the result supersedes an earlier one, the earlier one's series are queued for
        retraction from the PACS (``retract_superseded``), done once these deliveries are.
        """
        ids: list[str] = []
        if self.outbox_has_destinations:
            ids = self.outbox.enqueue(result_files(out_dir), job_ref=job_ref)
        self._queue_retraction(out_dir, job_ref, ids)
        return ids

    # -- supersede in the PACS -----------------------------------------------------------
    def _queue_retraction(self, out_dir: Path, job_ref: str, delivery_ids: list[str]) -> None:
        if not self.retractors:
            return
        report = json.loads((out_dir / "report.json").read_text())
        previous = (report.get("supersedes") or {}).get("result")
        if not previous:
            return
        old_report = Path(str(previous)) / "report.json"
        if not old_report.is_file():
            logger.warning("superseded result %s has no report.json; not retracted", previous)
            return
        outputs = json.loads(old_report.read_text()).get("outputs", {})
        series = [
            str(uid)
            for key in ("seg", "sr", "summary", "outlines_sr", "overlay")
            if (uid := (outputs.get(key) or {}).get("series_instance_uid"))
        ]
        if not series:
            return
        now = time.time()
        with self._state_lock:
            for target in self.retractors:
                self._state.execute(
                    "INSERT OR IGNORE INTO retractions (job_ref, target, study_uid, series_uids,"
                    " delivery_ids, state, next_attempt_at) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                    (
                        job_ref,
                        target,
                        str(report["study_instance_uid"]),
                        json.dumps(series),
                        json.dumps(delivery_ids),
                        now,
                    ),
                )
            self._state.commit()
        logger.info(
            "result %s supersedes %d series; retracted once delivered", job_ref, len(series)
        )

    def retract_due(self, now: float | None = None) -> int:
        """Delete superseded results whose successors were delivered; returns how many ran.

        A retraction waits while any delivery of the new result is pending (or dead: the
        old result then stays, better than none). Transient PACS errors are retried with the
        delivery backoff up to ``delivery_max_attempts``; a refusal ends it with an error.
        """
        if not self.retractors:
            return 0
        t = time.time() if now is None else now
        with self._state_lock:
            rows = self._state.execute(
                "SELECT job_ref, target, study_uid, series_uids, delivery_ids, attempts "
                "FROM retractions WHERE state = 'pending' AND next_attempt_at <= ?",
                (t,),
            ).fetchall()
        ran = 0
        for job_ref, target, study_uid, series_json, ids_json, attempts in rows:
            states = {self.outbox.get(i).state.value for i in json.loads(ids_json)}
            if states - {"done"}:
                continue
            retractor = self.retractors.get(str(target))
            if retractor is None:  # target removed from the settings since
                continue
            ran += 1
            state, error, next_at = "done", "", t
            try:
                n = retractor.retract_series(str(study_uid), json.loads(series_json))
                logger.info("superseded result retracted from %r: %d series", retractor, n)
            except PacsError as exc:
                error = str(exc)
                if exc.transient and attempts + 1 < self.settings.delivery_max_attempts:
                    state, next_at = "pending", t + self.outbox.backoff_s(attempts + 1)
                    logger.warning("retraction from %r failed, will retry: %s", retractor, exc)
                else:
                    state = "dead"
                    logger.error("retraction from %r failed: %s", retractor, exc)
            with self._state_lock:
                self._state.execute(
                    "UPDATE retractions SET state = ?, attempts = attempts + 1, "
                    "next_attempt_at = ?, last_error = ? WHERE job_ref = ? AND target = ?",
                    (state, next_at, error, job_ref, target),
                )
                self._state.commit()
        return ran

    def report_not_analysed(self, study_uid: str, reason: str, *, tag: str) -> list[str]:
        """Write and queue the "not analysed: REASON" SR and page of a declined study.

        Delivered like results, to every destination; ``tag`` names the decision (a job or
        a series generation), so asking again for the same decision sends nothing new.
        Never raises: the decline itself is the outcome that matters.
        """
        out = self.results_dir / study_uid / f"not-analysed.{tag}"
        try:
            identity: ModelIdentity = self.model.identity  # type: ignore[attr-defined]
            files = write_not_analysed(self.spool.instances_dir / study_uid, reason, identity, out)
            if not files or not self.outbox_has_destinations:
                return []
            return self.outbox.enqueue(files, job_ref=f"not-analysed.{tag}")
        except Exception:
            logger.exception("study %s: the 'not analysed' objects were not written", study_uid)
            return []

    def _write_declined(self, study_uid: str, job: str, reason: str) -> None:
        folder = self.results_dir / study_uid
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"declined.{job}.json").write_text(
            json.dumps({"study_instance_uid": study_uid, "declined": reason}, indent=2) + "\n"
        )

    # -- delivery ------------------------------------------------------------------------
    def deliver(self, now: float | None = None, *, wait: bool = True) -> int:
        """Attempt every due delivery once, each destination in parallel; returns how many
        were attempted. ``wait=False`` (the service loops) returns without waiting for them:
        a destination still busy is skipped by the next call, the others go on."""
        if not self.outbox_has_destinations:
            return self.retract_due(now) if self.retractors else 0
        attempted = self.outbox.run_once(now, wait=wait)
        self.retract_due(now)
        return attempted

    # -- pull mode -----------------------------------------------------------------------
    def find_studies(
        self,
        *,
        study_uid: str | None = None,
        accession: str | None = None,
        date_range: tuple[date, date] | None = None,
    ) -> list[StudyMatch]:
        """C-FIND (or QIDO-RS when only DICOMweb is configured) for CT studies."""
        if self.pacs is not None:
            return self.dimse.find_studies(
                self.pacs, study_uid=study_uid, accession=accession, date_range=date_range
            )
        if self.web is not None:
            with DicomWebClient(self.web) as client:
                return client.search_studies(
                    study_uid=study_uid, accession=accession, date_range=date_range
                )
        raise ConfigurationError(
            "no PACS configured to query: set CT_TRIAGE_PACS (AET@host:port) "
            "or CT_TRIAGE_PACS_DICOMWEB_URL"
        )

    def retrieve_study(self, study_uid: str) -> int:
        """Retrieve the CT series of one study into the spool; returns the instance count."""
        method = self.settings.retrieve_method
        if method == "wado":
            if self.web is None:
                raise ConfigurationError("retrieve_method 'wado' needs CT_TRIAGE_PACS_DICOMWEB_URL")
            with DicomWebClient(self.web) as client:
                series = client.search_series(study_uid, modality="CT")
                total = 0
                for s in series:
                    if s.number_of_instances:
                        self.spool.set_expected_count(s.series_instance_uid, s.number_of_instances)
                    with tempfile.TemporaryDirectory(prefix="ct-triage-wado-") as tmp:
                        files = client.retrieve_series(study_uid, s.series_instance_uid, Path(tmp))
                        total += self._spool_files(files, calling_ae="DICOMWEB")
                return total
        if self.pacs is None:
            raise ConfigurationError(f"retrieve_method {method!r} needs CT_TRIAGE_PACS")
        total = 0
        for s in self.dimse.find_series(self.pacs, study_uid, modality="CT"):
            if s.number_of_instances:
                self.spool.set_expected_count(s.series_instance_uid, s.number_of_instances)
            if method == "c-move":
                if self.scp is None or not self.scp.running:
                    raise ConfigurationError("retrieve_method 'c-move' needs our DICOM listener")
                result = self.dimse.move_series(
                    self.pacs, study_uid, s.series_instance_uid, self.settings.ae_title
                )
                total += result.completed
            else:
                with tempfile.TemporaryDirectory(prefix="ct-triage-get-") as tmp:
                    result = self.dimse.get_series(
                        self.pacs, study_uid, s.series_instance_uid, Path(tmp)
                    )
                    total += self._spool_files(result.files, calling_ae=self.pacs.ae_title)
        logger.info("study %s: %d instance(s) retrieved by %s", study_uid, total, method)
        return total

    def _spool_files(self, files: Sequence[Path], *, calling_ae: str) -> int:
        for f in files:
            self.spool.store(f.read_bytes(), calling_ae=calling_ae)
        return len(files)

    def pull(self, *, study_uid: str | None = None, accession: str | None = None) -> list[str]:
        """One-shot pull: find the studies and retrieve them into the spool."""
        if not study_uid and not accession:
            raise ConfigurationError("pull needs a StudyInstanceUID or an AccessionNumber")
        studies = self.find_studies(study_uid=study_uid, accession=accession)
        if not studies:
            raise StudyDeclined(
                "no CT study found in the PACS for "
                + (f"StudyInstanceUID {study_uid}" if study_uid else f"accession {accession}")
            )
        for st in studies:
            self.retrieve_study(st.study_instance_uid)
            self._mark_seen(st.study_instance_uid)
        return [st.study_instance_uid for st in studies]

    def poll_once(self, today: date | None = None) -> list[str]:
        """Find CT studies new since the watermark and retrieve them (pull mode)."""
        today = today or date.today()
        row = self._state.execute("SELECT value FROM kv WHERE key = 'watermark'").fetchone()
        start = (
            date.fromisoformat(row[0])
            if row
            else today - timedelta(days=self.settings.poll_lookback_days)
        )
        new = []
        for st in self.find_studies(date_range=(start, today)):
            if self._seen(st.study_instance_uid):
                continue
            try:
                self.retrieve_study(st.study_instance_uid)
            except TriageError as exc:
                logger.error("poll: study %s not retrieved: %s", st.study_instance_uid, exc)
                continue
            self._mark_seen(st.study_instance_uid)
            new.append(st.study_instance_uid)
        # The watermark stays on today's date: studies of today are found again on the next
        # poll and skipped by the seen-set; nothing between polls is missed.
        self._state.execute(
            "INSERT INTO kv(key, value) VALUES('watermark', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (today.isoformat(),),
        )
        self._state.commit()
        if new:
            logger.info("poll: %d new CT stud(ies) retrieved", len(new))
        return new

    def _seen(self, study_uid: str) -> bool:
        row = self._state.execute(
            "SELECT 1 FROM seen_studies WHERE study_uid = ?", (study_uid,)
        ).fetchone()
        return row is not None

    def _mark_seen(self, study_uid: str) -> None:
        self._state.execute(
            "INSERT OR IGNORE INTO seen_studies(study_uid, seen) VALUES(?, ?)",
            (study_uid, time.time()),
        )
        self._state.commit()


__all__ = [
    "Bridge",
    "ConfigurationError",
    "StudyOutcome",
    "build_destinations",
    "build_retractors",
    "dicomweb_node",
]
