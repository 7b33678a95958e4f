"""Batch screening: submit many studies at once, follow progress, export a CSV worklist.

A batch is a named set of pull jobs (one per study, by StudyInstanceUID or accession
number); each job is keyed ``study:<uid or accession>:<model version>``, so a study already
analysed by this model version is not analysed again. The CSV has one row per study, in
reading order (triage priority first), in the format of the API's CSV
(:mod:`ct_triage.server.worklist`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ct_triage.models.errors import TriageError
from ct_triage.server.jobs.model import (
    Batch,
    BatchProgress,
    JobKind,
    JobNotFound,
    JobStore,
    settled_progress,
)
from ct_triage.server.worklist import CSV_COLUMNS, csv_text, study_rows

if TYPE_CHECKING:
    from ct_triage.server.bridge import Bridge

logger = logging.getLogger(__name__)


def job_key(uid_or_accession: str, model_version: str) -> str:
    """The job key of one study for one model version."""
    return f"study:{uid_or_accession}:{model_version}"


def submit_batch(
    store: JobStore,
    *,
    name: str,
    created_by: str,
    accessions: Iterable[str] = (),
    study_uids: Iterable[str] = (),
    model_version: str,
) -> Batch:
    """Queue one pull job per study and group them in a batch.

    Duplicates within the lists are submitted once; a study with an existing job for this
    model version joins the batch with that job (it is not analysed again).
    """
    ids: list[str] = []
    seen: set[str] = set()
    items = [("accession", a.strip()) for a in accessions] + [
        ("study_uid", u.strip()) for u in study_uids
    ]
    for field_name, value in items:
        if not value or value in seen:
            continue
        seen.add(value)
        job, _created = store.submit(
            key=job_key(value, model_version),
            kind=JobKind.PULL,
            payload={field_name: value, "model_version": model_version},
            study_uid=value if field_name == "study_uid" else None,
            accession=value if field_name == "accession" else None,
        )
        ids.append(job.id)
    if not ids:
        raise TriageError("the batch names no study (empty list)")
    batch = store.create_batch(name=name, created_by=created_by, job_ids=ids)
    logger.info("batch %s: %d stud(ies) submitted", batch.id, len(ids))
    return batch


def submit_batch_from_query(
    store: JobStore,
    bridge: Bridge,
    *,
    date_range: tuple[date, date],
    modality: str = "CT",
    name: str,
    created_by: str,
    model_version: str,
) -> Batch:
    """Queue every study of the PACS in ``date_range`` (C-FIND, or QIDO-RS) as one batch.

    ``bridge.find_studies`` queries CT studies; ``modality`` filters on ModalitiesInStudy
    when the PACS returns it.
    """
    matches = bridge.find_studies(date_range=date_range)
    uids = [
        m.study_instance_uid
        for m in matches
        if not m.modalities_in_study or modality in m.modalities_in_study
    ]
    logger.info("query %s..%s: %d %s stud(ies)", date_range[0], date_range[1], len(uids), modality)
    return submit_batch(
        store, name=name, created_by=created_by, study_uids=uids, model_version=model_version
    )


def batch_csv(store: JobStore, batch_id: str, *, viewer_template: str | None = None) -> str:
    """The batch as CSV, one row per study in reading order.

    The same format as ``GET /api/v1/batches/{id}/csv``: :data:`CSV_COLUMNS` (patient
    identity, the numbers, the viewer link, the disclaimer on every row).
    """
    if store.get_batch(batch_id) is None:
        raise JobNotFound(f"batch {batch_id} not found")
    return csv_text(study_rows(store.worklist(batch_id=batch_id), viewer_template=viewer_template))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60:02d}:{rem % 60:02d}"


def progress_line(p: BatchProgress, *, width: int = 30) -> str:
    """One plain-text progress line: bar, counts, rate and ETA."""
    finished = p.done + p.declined + p.failed
    filled = int(width * finished / p.total) if p.total else width
    rate = f"{p.rate_per_min:.1f}/min" if p.rate_per_min is not None else "-/min"
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {finished}/{p.total} "
        f"done {p.done}, declined {p.declined}, failed {p.failed}, remaining {p.remaining} "
        f"| {rate} | ETA {_duration(p.eta_s)}"
    )


def follow_batch(
    store: JobStore,
    batch_id: str,
    *,
    out: TextIO = sys.stderr,
    interval_s: float = 2.0,
    stop: threading.Event | None = None,
    timeout_s: float | None = None,
) -> BatchProgress:
    """Print progress until the batch is finished (or ``stop`` / ``timeout_s``).

    On a TTY the line is redrawn in place (carriage return); otherwise a line is printed
    whenever the counts change. Returns the last progress.
    """
    return follow_progress(
        lambda: settled_progress(store, batch_id),
        out=out,
        interval_s=interval_s,
        stop=stop,
        timeout_s=timeout_s,
    )


def follow_progress(
    progress: Callable[[], BatchProgress],
    *,
    out: TextIO,
    interval_s: float,
    stop: threading.Event | None = None,
    timeout_s: float | None = None,
) -> BatchProgress:
    """Print ``progress()`` until nothing remains (see :func:`follow_batch`)."""
    tty = out.isatty()
    last = ""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        p = progress()
        line = progress_line(p)
        if tty:
            out.write("\r" + line)
        elif line.split("|")[0] != last.split("|")[0]:
            out.write(line + "\n")
        out.flush()
        last = line
        if p.remaining == 0 or (stop is not None and stop.is_set()):
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
        time.sleep(interval_s)
    if tty:
        out.write("\n")
    return p


def spool_in_use(data_dir: Path) -> bool:
    """Whether another process (a running ``ct-triage serve``) holds ``data_dir``'s spool.

    Probes the spool's lock (:class:`~ct_triage.dicom_bridge.spool.Spool`) without opening
    the spool. Call it before this process opens that spool itself: a POSIX lock probe
    from the process that holds the lock would release it.
    """
    lock = Path(data_dir) / "spool" / "spool.lock"
    if not lock.is_file():
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class ServerBatch:
    """A batch run through a running server's HTTP API (``ct-triage batch --server``).

    Parameters
    ----------
    url
        The server, e.g. ``http://127.0.0.1:8000``.
    token
        An API token of the operator role (``ct-triage token create --role operator``).
    timeout_s
        Per-request timeout.
    """

    def __init__(self, url: str, token: str, *, timeout_s: float = 60.0) -> None:
        # Imported here: httpx is not a dependency of ct-triage-server (installed with the
        # tests); only ``batch --server`` needs it.
        import httpx

        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url + "/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
        )

    def close(self) -> None:
        """Close the HTTP client."""
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx  # not a dependency of ct-triage-server, see __init__

        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise TriageError(f"server {self.url}: {exc}") from exc
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise TriageError(f"server {self.url} answered {r.status_code}: {detail}")
        return r

    def submit(self, body: dict[str, Any]) -> tuple[str, int]:
        """``POST /batches``; returns the batch id and its number of studies."""
        batch = self._call("POST", "/batches", json=body).json()
        return str(batch["id"]), len(batch["job_ids"])

    def progress(self, batch_id: str) -> BatchProgress:
        """``GET /batches/{id}``'s progress."""
        p = self._call("GET", f"/batches/{batch_id}").json()["progress"]
        return BatchProgress(
            batch_id=batch_id,
            total=int(p["total"]),
            done=int(p["done"]),
            declined=int(p["declined"]),
            failed=int(p["failed"]),
            running=int(p["running"]),
            queued=int(p["queued"]),
            rate_per_min=p["rate_per_min"],
            eta_s=p["eta_s"],
        )

    def csv(self, batch_id: str) -> str:
        """``GET /batches/{id}/csv``."""
        return str(self._call("GET", f"/batches/{batch_id}/csv").text)


__all__ = [
    "CSV_COLUMNS",
    "ServerBatch",
    "batch_csv",
    "follow_batch",
    "follow_progress",
    "job_key",
    "progress_line",
    "spool_in_use",
    "submit_batch",
    "submit_batch_from_query",
]
