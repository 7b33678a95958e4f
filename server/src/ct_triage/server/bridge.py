"""The DICOM bridge service: receive or pull studies, analyse complete series, deliver results.

It wires the bridge's parts (``dicom_bridge.scp``/``spool``/``query``/``dicomweb``/
``deliver``) to the one analysis pipeline (:mod:`ct_triage.server.pipeline`); it holds no
DICOM protocol code and no compute of its own.

Flow::

    PACS --C-STORE--> StorageSCP --> Spool --(series quiet)--> process_due()
    PACS <--C-FIND/C-MOVE/C-GET/QIDO/WADO-- pull() / poll_once() --> Spool
    process_due() / a push job: pipeline.analyze_study -> results/ -> Outbox.enqueue
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
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from ct_triage.dicom_bridge.deliver import Outbox
from ct_triage.dicom_bridge.dicomweb import DicomWebClient
from ct_triage.dicom_bridge.dimse import PacsNode
from ct_triage.dicom_bridge.qr_results import StudyMatch
from ct_triage.dicom_bridge.query import DimseClient
from ct_triage.dicom_bridge.scp import StorageSCP
from ct_triage.dicom_bridge.spool import PurgeReport, ReadySeries, SeriesState, Spool
from ct_triage.models.analysis import LesionModel
from ct_triage.models.errors import StudyDeclined, TriageError
from ct_triage.models.identity import ModelIdentity
from ct_triage.server.bridge_state import BridgeState
from ct_triage.server.destinations import (
    build_destinations,
    build_retractors,
    dicomweb_node,
    tls_client,
    tls_server,
)
from ct_triage.server.logconfig import job_context
from ct_triage.server.pipeline import (
    AnalysisOptions,
    AnalysisResult,
    NotSelected,
    analyze_study,
    result_files,
    superseded_entry,
    write_not_analysed,
)
from ct_triage.server.retractions import RetractionQueue
from ct_triage.server.settings import Settings, parse_dimse_node

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
    #: The report of an analysed study (the ``report.json`` written into ``result_dir``).
    report: dict[str, Any] | None = None


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
        self._state = BridgeState(data / "bridge.db")
        self.retractions = RetractionQueue(
            self._state, build_retractors(settings), self.outbox, settings.delivery_max_attempts
        )
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
                ssl_context=tls_server(settings),
            )
        self.dimse = DimseClient(settings.ae_title)
        self.pacs = (
            PacsNode(*parse_dimse_node(settings.pacs), tls=tls_client(settings))
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
        """Run the study of ``claimed`` through the pipeline and settle them in the spool.

        The pipeline chooses among all of the study's series; only a claimed one is analysed
        (into ``out_dir``, or a folder named after the series and its generation), and its
        result supersedes the series' previous one.
        """
        by_uid = {r.series_uid: r for r in claimed}

        def folder(uid: str) -> Path:
            return (
                out_dir or self.results_dir / study_uid / f"{uid}.g{by_uid[uid].generation}.{job}"
            )

        result = analyze_study(
            claimed[0].folder.parent,
            folder,
            self.model,
            self.options,
            eligible_series=by_uid.keys(),
            supersedes={
                r.series_uid: superseded_entry(r.previous_result_ref)
                for r in claimed
                if r.previous_result_ref
            },
        )
        if isinstance(result, NotSelected):
            # The best series of the study was analysed before, at its current generation.
            for r in claimed:
                self.spool.mark_done(r.series_uid, r.generation, result.reason)
            return StudyOutcome(study_uid, result.series_instance_uid, "skipped", result.reason)
        chosen = by_uid[result.series_instance_uid]
        for r in claimed:
            if r is not chosen:
                why = next(
                    (v.reason for v in result.selection if v.series_instance_uid == r.series_uid),
                    "another series of the study is preferred",
                )
                self.spool.mark_done(r.series_uid, r.generation, f"not selected: {why}")
        out = folder(chosen.series_uid)
        if enqueue:
            job_ref = f"{chosen.series_uid}.g{chosen.generation}"
            self.enqueue_results(out, job_ref=job_ref, report=result.report)
        self.spool.mark_done(chosen.series_uid, chosen.generation, str(out))
        triage = result.report["triage"]["category"]
        logger.info("study %s series %s analysed: triage %s", study_uid, chosen.series_uid, triage)
        return StudyOutcome(study_uid, chosen.series_uid, "analysed", triage, out, result.report)

    @property
    def outbox_has_destinations(self) -> bool:
        return bool(self.settings.destinations)

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

    def enqueue_results(self, out_dir: Path, *, job_ref: str, report: dict[str, Any]) -> list[str]:
        """Queue a result folder's SEG, SR and overlay for delivery (idempotent per job_ref).

        ``report`` is the result's report (as written into ``out_dir``). When the result
        supersedes an earlier one, the earlier one's series are queued for retraction from
        the PACS (``retract_superseded``), done once these deliveries are.
        """
        ids: list[str] = []
        if self.outbox_has_destinations:
            ids = self.outbox.enqueue(result_files(out_dir), job_ref=job_ref)
        self.retractions.queue(report, job_ref, ids)
        return ids

    def retract_due(self, now: float | None = None) -> int:
        """Delete superseded results whose successors were delivered (see
        :meth:`RetractionQueue.run_due`); returns how many ran."""
        return self.retractions.run_due(now)

    def report_not_analysed(
        self, study_uid: str, reason: str, *, tag: str, source: Path | None = None
    ) -> list[str]:
        """Write and queue the "not analysed: REASON" SR and page of a declined study.

        Delivered like results, to every destination; ``tag`` names the decision (a job or
        a series generation), so asking again for the same decision sends nothing new.
        ``source`` is the folder of the study's files (default: its spool folder; an upload
        passes its own). Never raises: the decline itself is the outcome that matters.
        """
        out = self.results_dir / study_uid / f"not-analysed.{tag}"
        folder = source if source is not None else self.spool.instances_dir / study_uid
        try:
            identity: ModelIdentity = self.model.identity  # type: ignore[attr-defined]
            files = write_not_analysed(folder, reason, identity, out)
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
            return self.retract_due(now)
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
            self._state.mark_seen(st.study_instance_uid)
        return [st.study_instance_uid for st in studies]

    def poll_once(self, today: date | None = None) -> list[str]:
        """Find CT studies new since the watermark and retrieve them (pull mode)."""
        today = today or date.today()
        start = self._state.watermark() or today - timedelta(days=self.settings.poll_lookback_days)
        new = []
        for st in self.find_studies(date_range=(start, today)):
            if self._state.seen(st.study_instance_uid):
                continue
            try:
                self.retrieve_study(st.study_instance_uid)
            except TriageError as exc:
                logger.error("poll: study %s not retrieved: %s", st.study_instance_uid, exc)
                continue
            self._state.mark_seen(st.study_instance_uid)
            new.append(st.study_instance_uid)
        # The watermark stays on today's date: studies of today are found again on the next
        # poll and skipped by the seen-set; nothing between polls is missed.
        self._state.set_watermark(today)
        if new:
            logger.info("poll: %d new CT stud(ies) retrieved", len(new))
        return new


__all__ = ["Bridge", "ConfigurationError", "StudyOutcome"]
