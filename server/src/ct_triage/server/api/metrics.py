"""Prometheus metrics (text exposition format 0.0.4), one registry per application.

* ``ct_triage_jobs{state}``: jobs in each state (gauge, read from the store at scrape time);
* ``ct_triage_queue_depth``: jobs queued (gauge);
* ``ct_triage_stage_duration_seconds{stage}``: per-stage latency of the analyses finished
  since this process started (histogram, from each result's ``report.json`` ``timings_s``);
* ``ct_triage_model_info{name,version,sha256,execution_provider}``: the model and the
  execution provider actually in use in this process (info, value 1);
* ``ct_triage_http_requests_total{method,route,status}``: requests answered (counter).

``GET /metrics`` needs a token (any role; give Prometheus a ``viewer`` token through its
``authorization: {credentials_file: ...}`` scrape option). No module-level registry: the
default global one of ``prometheus_client`` is not used.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from ct_triage.models.identity import ModelIdentity
from ct_triage.server.jobs.model import JobState, JobStore

__all__ = ["CONTENT_TYPE", "ApiMetrics"]

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _StoreCollector(Collector):
    """Job counts and model info, read at scrape time."""

    def __init__(self, store: JobStore, model: ModelIdentity | None) -> None:
        self.store = store
        self.model = model

    def collect(self) -> Iterable[Metric]:
        counts = self.store.counts_by_state()
        jobs = GaugeMetricFamily("ct_triage_jobs", "Jobs by state.", labels=["state"])
        for state in JobState:
            jobs.add_metric([state.value], counts.get(state, 0))
        yield jobs
        yield GaugeMetricFamily(
            "ct_triage_queue_depth",
            "Jobs waiting for a worker.",
            value=counts.get(JobState.QUEUED, 0),
        )
        info = InfoMetricFamily("ct_triage_model", "The model and execution provider in use.")
        m = self.model
        info.add_metric(
            [],
            {
                "name": m.name if m else "",
                "version": m.version if m else "",
                "sha256": m.sha256 if m else "",
                "execution_provider": (m.provider or "unknown") if m else "not-loaded",
            },
        )
        yield info

    def describe(self) -> Iterable[Metric]:
        return []


class ApiMetrics:
    """The registry of one application and what feeds it.

    Parameters
    ----------
    store
        The job store (counts, finished jobs).
    model
        The model loaded in this process, if any.
    """

    def __init__(self, store: JobStore, model: ModelIdentity | None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.store = store
        self.started_at = datetime.now(UTC)
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self.stage_seconds = Histogram(
            "ct_triage_stage_duration_seconds",
            "Duration of each analysis stage (from report.json timings_s).",
            labelnames=["stage"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.http_requests = Counter(
            "ct_triage_http_requests",
            "HTTP requests answered.",
            labelnames=["method", "route", "status"],
            registry=self.registry,
        )
        self.registry.register(_StoreCollector(store, model))

    def _observe_finished(self) -> None:
        """Feed the stage histogram with jobs finished since the last scrape."""
        jobs = self.store.list_jobs(states=[JobState.DONE], since=self.started_at, limit=10_000)
        for job in jobs:
            if job.id in self._seen:
                continue
            self._seen.add(job.id)
            result_dir = job.result.get("result_dir")
            if not result_dir:
                continue
            try:
                report = json.loads((Path(result_dir) / "report.json").read_text())
            except (OSError, ValueError):
                logger.warning("job %s: report.json unreadable for metrics", job.id)
                continue
            for stage, seconds in (report.get("timings_s") or {}).items():
                if isinstance(seconds, int | float):
                    self.stage_seconds.labels(stage=stage).observe(float(seconds))

    def render(self) -> bytes:
        """Refresh from the store and return the exposition text (blocking: use a thread)."""
        with self._lock:
            self._observe_finished()
            return generate_latest(self.registry)
