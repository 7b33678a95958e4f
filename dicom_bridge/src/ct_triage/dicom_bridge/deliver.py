"""Result delivery: a durable, idempotent outbox in front of the destinations.

The :class:`Outbox` keeps deliveries in SQLite under its root, with the files hard-linked
(or copied) into ``root/outbox/<delivery id>/``. A retry re-sends the same files, hence the
same SOP Instance UIDs; instances a destination already acknowledged are not sent again.
Transient failures are retried with exponential backoff and jitter; a rejection or
``max_attempts`` failures dead-letter the delivery with its reason, so nothing loops.
Destinations are independent: each one's attempts run in a thread of their own, so an
unresponsive one only delays itself.

The destinations themselves (C-STORE, STOW-RS; what counts as stored, rejected or not sent)
are in :mod:`ct_triage.dicom_bridge.destinations`.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import random
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ct_triage.dicom_bridge.destinations import Destination, InstanceState, not_sent_result
from ct_triage.dicom_bridge.part10 import read_file_meta
from ct_triage.models import sqlite_store
from ct_triage.models.durable import fsync_dir, fsync_file

__all__ = ["Delivery", "DeliveryState", "Outbox"]

LOGGER = logging.getLogger(__name__)


class DeliveryState(enum.Enum):
    """Life cycle of one delivery."""

    PENDING = "pending"
    DONE = "done"
    DEAD = "dead"


@dataclass(frozen=True)
class Delivery:
    """One (job, destination) delivery as stored in the outbox."""

    id: str
    job_ref: str
    destination: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_error: str
    n_files: int
    n_stored: int


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    job_ref TEXT NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (job_ref, destination)
);
CREATE TABLE IF NOT EXISTS delivery_files (
    delivery_id TEXT NOT NULL REFERENCES deliveries(id),
    name TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    stored INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (delivery_id, name)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_attempt_at);
"""


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
        fsync_file(dst)


class Outbox:
    """Durable delivery queue with retry, backoff, dead letters (SQLite under ``root``).

    Parameters
    ----------
    root
        Folder holding ``outbox.sqlite3`` and ``outbox/<delivery id>/`` file copies.
    destinations
        Configured destinations by name; deliveries refer to them by name.
    max_attempts
        Attempts before a transiently failing delivery is dead-lettered.
    backoff_base_s, backoff_max_s
        Delay before retry *n* (1-based) is ``min(max, base * 2**(n-1))``, then
        "equal jitter": uniformly drawn in ``[delay/2, delay]``.
    clock
        Wall-clock time source (persisted times must survive restarts).
    seed
        Seeds the jitter for reproducible schedules (tests).
    lease_s
        A claimed delivery is invisible to other workers for this long, so that two
        processes never send it at once; a crashed worker's claim expires.
    """

    def __init__(
        self,
        root: Path,
        destinations: Mapping[str, Destination],
        *,
        max_attempts: int = 5,
        backoff_base_s: float = 2.0,
        backoff_max_s: float = 300.0,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
        lease_s: float = 600.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 < backoff_base_s <= backoff_max_s:
            raise ValueError("need 0 < backoff_base_s <= backoff_max_s")
        self.root = root
        self.destinations = dict(destinations)
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.clock = clock
        self.lease_s = lease_s
        self._rng = random.Random(seed)
        self._files_root = root / "outbox"
        self._files_root.mkdir(parents=True, exist_ok=True)
        self._db_path = root / "outbox.sqlite3"
        self._busy: dict[str, threading.Thread] = {}
        self._busy_lock = threading.Lock()
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One connection (WAL, ``synchronous=FULL``, autocommit, 30 s busy timeout)."""
        db = sqlite_store.connect(self._db_path, busy_timeout_s=30.0)
        try:
            yield db
        finally:
            db.close()

    def backoff_s(self, attempt: int) -> float:
        """Delay after failed attempt number ``attempt`` (1-based), jitter included."""
        delay = min(self.backoff_max_s, self.backoff_base_s * 2.0 ** (attempt - 1))
        return delay / 2.0 + self._rng.uniform(0.0, delay / 2.0)

    # -- enqueue -------------------------------------------------------------------------
    def enqueue(self, files: Sequence[Path], *, job_ref: str) -> list[str]:
        """Queue ``files`` for every destination; return the delivery ids.

        Idempotent per ``(job_ref, destination)``: enqueueing the same job again returns
        the existing deliveries and copies nothing.
        """
        if not files:
            raise ValueError("nothing to deliver")
        uids = [read_file_meta(p).sop_instance_uid for p in files]
        names = [p.name for p in files]
        if len(set(names)) != len(names):
            raise ValueError("file names to deliver must be unique")
        now = self.clock()
        ids: list[str] = []
        with self._connect() as db:
            for dest in self.destinations:
                with sqlite_store.transaction(db):
                    row = db.execute(
                        "SELECT id FROM deliveries WHERE job_ref = ? AND destination = ?",
                        (job_ref, dest),
                    ).fetchone()
                    if row is not None:
                        ids.append(str(row[0]))
                        continue  # leaves the block: COMMIT
                    delivery_id = uuid.uuid4().hex
                    staging = self._files_root / f".staging-{delivery_id}"
                    staging.mkdir()
                    for p in files:
                        _link_or_copy(p, staging / p.name)
                    fsync_dir(staging)
                    os.replace(staging, self._files_root / delivery_id)
                    fsync_dir(self._files_root)
                    db.execute(
                        "INSERT INTO deliveries (id, job_ref, destination, state, attempts,"
                        " next_attempt_at, created_at, updated_at)"
                        " VALUES (?, ?, ?, 'pending', 0, ?, ?, ?)",
                        (delivery_id, job_ref, dest, now, now, now),
                    )
                    db.executemany(
                        "INSERT INTO delivery_files (delivery_id, name, sop_instance_uid)"
                        " VALUES (?, ?, ?)",
                        [(delivery_id, n, u) for n, u in zip(names, uids, strict=True)],
                    )
                LOGGER.info(
                    "outbox: queued delivery %s of job %s to %s (%d instance(s))",
                    delivery_id,
                    job_ref,
                    dest,
                    len(files),
                )
                ids.append(delivery_id)
        return ids

    # -- run -----------------------------------------------------------------------------
    def run_once(self, now: float | None = None, *, wait: bool = True) -> int:
        """Attempt every due pending delivery once; return how many were attempted.

        Destinations are independent: the due deliveries of each destination are sent by a
        thread of their own, so one that does not answer (it accepts TCP and then stays
        silent until its timeouts expire) never delays another. A destination whose
        previous attempt is still running is skipped; its deliveries stay due.

        Parameters
        ----------
        now
            Wall-clock time of this round (``clock()`` by default).
        wait
            Return once every attempt started here has finished (default); ``False``
            returns at once (a service loop), :meth:`join` waits for them.
        """
        now = self.clock() if now is None else now
        claimed: dict[str, list[str]] = {}
        with self._connect() as db:
            due = [
                (str(r[0]), str(r[1]))
                for r in db.execute(
                    "SELECT id, destination FROM deliveries"
                    " WHERE state = 'pending' AND next_attempt_at <= ?"
                    " ORDER BY next_attempt_at, created_at",
                    (now,),
                )
            ]
            with self._busy_lock:
                busy = {d for d, t in self._busy.items() if t.is_alive()}
            for delivery_id, dest_name in due:
                if dest_name in busy:
                    continue
                # Claim: bump attempts and push next_attempt_at out by the lease, atomically.
                cur = db.execute(
                    "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = ?,"
                    " updated_at = ? WHERE id = ? AND state = 'pending' AND next_attempt_at <= ?",
                    (now + self.lease_s, now, delivery_id, now),
                )
                if cur.rowcount == 1:
                    claimed.setdefault(dest_name, []).append(delivery_id)
        threads = []
        for dest_name, ids in claimed.items():
            thread = threading.Thread(
                target=self._attempt_all,
                args=(dest_name, ids, now),
                name=f"deliver-{dest_name}"[:60],
                daemon=True,
            )
            with self._busy_lock:
                self._busy[dest_name] = thread
            thread.start()
            threads.append(thread)
        if wait:
            for thread in threads:
                thread.join()
        return sum(len(ids) for ids in claimed.values())

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for attempts still running; ``True`` when none is left."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._busy_lock:
            threads = list(self._busy.values())
        for thread in threads:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(left)
        return not any(t.is_alive() for t in threads)

    def _attempt_all(self, dest_name: str, ids: Sequence[str], now: float) -> None:
        """One destination's claimed deliveries, in order (its own thread)."""
        try:
            with self._connect() as db:
                for delivery_id in ids:
                    self._attempt(db, delivery_id, now)
        except Exception:  # boundary of the thread: logged once; the lease re-offers them
            LOGGER.exception("outbox: attempts to %s failed unexpectedly", dest_name)

    def _attempt(self, db: sqlite3.Connection, delivery_id: str, now: float) -> None:
        job_ref, dest_name, attempts = db.execute(
            "SELECT job_ref, destination, attempts FROM deliveries WHERE id = ?",
            (delivery_id,),
        ).fetchone()
        folder = self._files_root / delivery_id
        todo = [
            (folder / str(name), str(uid))
            for name, uid in db.execute(
                "SELECT name, sop_instance_uid FROM delivery_files"
                " WHERE delivery_id = ? AND stored = 0 ORDER BY name",
                (delivery_id,),
            )
        ]
        destination = self.destinations.get(dest_name)
        if destination is None:
            self._dead(db, delivery_id, now, f"destination {dest_name!r} is not configured")
            return
        if not todo:
            self._done(db, delivery_id, now)
            return
        try:
            result = destination.send([p for p, _ in todo])
        except Exception as exc:  # boundary: a bug in a destination must not loop forever
            LOGGER.exception("outbox: delivery %s to %s raised", delivery_id, dest_name)
            result = not_sent_result(
                [p for p, _ in todo], [u for _, u in todo], f"{type(exc).__name__}: {exc}"
            )
        stored = [o.sop_instance_uid for o in result.outcomes if o.state is InstanceState.STORED]
        db.executemany(
            "UPDATE delivery_files SET stored = 1 WHERE delivery_id = ? AND sop_instance_uid = ?",
            [(delivery_id, u) for u in stored],
        )
        reported = {o.sop_instance_uid for o in result.outcomes}
        missing = [u for _, u in todo if u not in reported]
        if result.rejected:
            first = result.rejected[0]
            reason = (
                f"{len(result.rejected)} instance(s) rejected by {dest_name}; first: "
                f"{first.sop_instance_uid}: {first.reason}"
            )
            self._dead(db, delivery_id, now, reason)
        elif not result.not_sent and not missing:
            self._done(db, delivery_id, now)
        else:
            reasons = [o.reason for o in result.not_sent] or ["instances not reported"]
            reason = f"{len(result.not_sent) + len(missing)} instance(s) not sent: {reasons[0]}"
            if attempts >= self.max_attempts:
                self._dead(db, delivery_id, now, f"gave up after {attempts} attempts; {reason}")
            else:
                delay = self.backoff_s(attempts)
                db.execute(
                    "UPDATE deliveries SET next_attempt_at = ?, last_error = ?, updated_at = ?"
                    " WHERE id = ?",
                    (now + delay, reason, now, delivery_id),
                )
                LOGGER.warning(
                    "outbox: delivery %s of job %s to %s failed (attempt %d/%d), retry in %.1f s:"
                    " %s",
                    delivery_id,
                    job_ref,
                    dest_name,
                    attempts,
                    self.max_attempts,
                    delay,
                    reason,
                )

    def _done(self, db: sqlite3.Connection, delivery_id: str, now: float) -> None:
        db.execute(
            "UPDATE deliveries SET state = 'done', last_error = '', updated_at = ? WHERE id = ?",
            (now, delivery_id),
        )
        shutil.rmtree(self._files_root / delivery_id, ignore_errors=True)
        LOGGER.info("outbox: delivery %s done", delivery_id)

    def _dead(self, db: sqlite3.Connection, delivery_id: str, now: float, reason: str) -> None:
        db.execute(
            "UPDATE deliveries SET state = 'dead', last_error = ?, updated_at = ? WHERE id = ?",
            (reason, now, delivery_id),
        )
        LOGGER.error("outbox: delivery %s dead-lettered: %s", delivery_id, reason)

    # -- inspection ----------------------------------------------------------------------
    def _list(self, where: str, args: tuple[object, ...] = ()) -> list[Delivery]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT d.id, d.job_ref, d.destination, d.state, d.attempts, d.next_attempt_at,"
                " d.last_error, COUNT(f.name), COALESCE(SUM(f.stored), 0)"
                " FROM deliveries d LEFT JOIN delivery_files f ON f.delivery_id = d.id"
                f" WHERE {where} GROUP BY d.id ORDER BY d.created_at, d.id",
                args,
            ).fetchall()
        return [
            Delivery(
                id=r[0],
                job_ref=r[1],
                destination=r[2],
                state=DeliveryState(r[3]),
                attempts=int(r[4]),
                next_attempt_at=float(r[5]),
                last_error=r[6],
                n_files=int(r[7]),
                n_stored=int(r[8]),
            )
            for r in rows
        ]

    def get(self, delivery_id: str) -> Delivery:
        """One delivery by id (``KeyError`` if unknown)."""
        found = self._list("d.id = ?", (delivery_id,))
        if not found:
            raise KeyError(delivery_id)
        return found[0]

    def pending(self) -> list[Delivery]:
        """Deliveries still to be (re)tried."""
        return self._list("d.state = 'pending'")

    def dead_letters(self) -> list[Delivery]:
        """Deliveries given up on, with ``last_error`` saying why."""
        return self._list("d.state = 'dead'")

    def retry_dead_letter(self, delivery_id: str) -> None:
        """Put a dead-lettered delivery back in the queue (attempts reset, due now)."""
        now = self.clock()
        with self._connect() as db:
            cur = db.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?,"
                " updated_at = ? WHERE id = ? AND state = 'dead'",
                (now, now, delivery_id),
            )
        if cur.rowcount != 1:
            raise KeyError(f"no dead-lettered delivery {delivery_id}")
        LOGGER.info("outbox: dead letter %s re-queued", delivery_id)
