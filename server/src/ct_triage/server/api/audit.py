"""The audit log: who read or submitted what, when, from where. Append-only JSON lines.

One line per event in ``<data_dir>/audit.jsonl``::

    {"time": "2025-01-01T10:00:00.123+00:00", "actor": "ward 3", "token_id": "a1b2c3d4e5f6",
     "role": "operator", "ip": "10.0.0.5", "action": "study.submit", "job_id": "...",
     "study_uid": "1.2.3", "status": 202}

It names the token (its name and public id, never the secret), the job and the
StudyInstanceUID; never a patient name, patient ID or accession number. A view that showed
patient identity (``worklist.read``, ``batch.csv``) lists the StudyInstanceUIDs shown
(``study_uids``) and their digest (``study_uids_sha256``): who saw which patients, when, from
where. A worklist page polls every few seconds; a view showing the same studies to the same
token as its previous view of that kind is still one event, with the digest only (the list
is in the earlier event with that digest), so the log does not grow by the whole list each
poll. The file is opened
in append mode and each line is written with one ``write`` under a lock; events that change
something (submissions, uploads, token changes) are also ``fsync``-ed.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from ct_triage.server.api.auth import Principal

__all__ = ["AuditEvent", "AuditLog"]


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audited action (no patient data)."""

    time: str
    actor: str | None
    token_id: str | None
    role: str | None
    ip: str | None
    action: str
    status: int
    job_id: str | None = None
    study_uid: str | None = None
    batch_id: str | None = None
    detail: str | None = None
    study_uids: tuple[str, ...] | None = None
    study_uids_sha256: str | None = None


class AuditLog:
    """Append-only JSON-lines audit log.

    Parameters
    ----------
    path
        The log file (its folder is created).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fh: IO[str] = self.path.open("a", encoding="utf-8")
        #: (token id, action) -> digest of the study list last written in full
        self._last_studies: dict[tuple[str | None, str], str] = {}

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._fh.close()

    def record(
        self,
        *,
        principal: Principal | None,
        ip: str | None,
        action: str,
        status: int,
        job_id: str | None = None,
        study_uid: str | None = None,
        batch_id: str | None = None,
        detail: str | None = None,
        study_uids: tuple[str, ...] | None = None,
        durable: bool = False,
    ) -> AuditEvent:
        """Append one event.

        Parameters
        ----------
        principal
            The caller (``None`` for a request refused before authentication).
        ip
            The client address.
        action
            What was done, e.g. ``"job.read"``, ``"study.submit"``, ``"auth.denied"``.
        status
            The HTTP status answered.
        job_id, study_uid, batch_id
            What it concerned.
        detail
            A short free text without patient data.
        study_uids
            The studies whose patient identity the caller was shown.
        durable
            ``fsync`` the line (for actions that change something).
        """
        digest = None
        if study_uids is not None:
            digest = hashlib.sha256("\n".join(study_uids).encode()).hexdigest()
            key = (principal.token_id if principal else None, action)
            with self._lock:
                if self._last_studies.get(key) == digest:
                    study_uids = None  # the same studies again: the digest says which
                else:
                    if len(self._last_studies) > 10_000:
                        self._last_studies.clear()
                    self._last_studies[key] = digest
        event = AuditEvent(
            time=datetime.now(UTC).isoformat(timespec="milliseconds"),
            actor=principal.name if principal else None,
            token_id=principal.token_id if principal else None,
            role=str(principal.role) if principal else None,
            ip=ip,
            action=action,
            status=status,
            job_id=job_id,
            study_uid=study_uid,
            batch_id=batch_id,
            detail=detail,
            study_uids=study_uids,
            study_uids_sha256=digest,
        )
        line = json.dumps({k: v for k, v in asdict(event).items() if v is not None})
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()
            if durable:
                os.fsync(self._fh.fileno())
        return event

    def read(self) -> Iterator[dict[str, object]]:
        """Every event so far (for tests and audits)."""
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)
