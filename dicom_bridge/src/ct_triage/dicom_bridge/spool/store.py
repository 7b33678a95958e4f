"""Durable instance writes: the file on disk first, then its row in the index.

Each instance goes to ``instances/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`` through the
one durable-write helper (:func:`ct_triage.models.durable.write_durably`: a temporary file in
``tmp/``, ``fsync``, :func:`os.replace`, ``fsync`` of the folder) and only then is recorded in
the index, so that what the Storage SCP acknowledges (PS3.4 B.2.2) survives a power cut. The
bytes are kept as they arrived: the Part 10 encoding (PS3.10 section 7) with the peer's
transfer syntax and File Meta Information.
"""

from __future__ import annotations

import enum
import errno
import io
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from ct_triage.models.durable import fsync_dir, write_durably
from ct_triage.models.errors import InvalidInput

from .header import IGNORED_SOP_CLASSES, InstanceHeader, content_digest, read_instance_header
from .index import SpoolIndex

__all__ = ["InstanceStore", "StoreAction", "StoreOutcome", "ensure_dir"]

logger = logging.getLogger(__name__)

#: Locks striped by SOP Instance UID: two sends of one instance are stored one after the other.
_STRIPES = 64


class StoreAction(enum.StrEnum):
    """What :meth:`Spool.store` did with one instance."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    REPLACED = "replaced"
    IGNORED = "ignored"


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    """The result of :meth:`Spool.store`.

    Parameters
    ----------
    action
        Stored anew, duplicate (identical re-send, nothing changed), replaced (changed
        content) or ignored (our own output or another non-image object; not written).
    sop_instance_uid, series_uid, study_uid
        The instance.
    generation
        The series generation after this store; ``None`` when ignored.
    late
        ``True`` when this instance re-opened a completed series (generation bumped).
    path
        The file, ``None`` when ignored.
    """

    action: StoreAction
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    generation: int | None
    late: bool
    path: Path | None


def ensure_dir(path: Path) -> None:
    """Create ``path`` and missing parents, fsyncing each parent that gained an entry."""
    if path.is_dir():
        return
    ensure_dir(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        return
    fsync_dir(path.parent)


def _encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class InstanceStore:
    """The instance files of one spool folder and the path that writes them.

    Parameters
    ----------
    instances_dir
        ``<root>/instances``.
    tmp_dir
        ``<root>/tmp``: temporary files, on the same file system.
    index
        The spool's index.
    """

    def __init__(self, instances_dir: Path, tmp_dir: Path, index: SpoolIndex) -> None:
        self.instances_dir = instances_dir
        self.tmp_dir = tmp_dir
        self._index = index
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]

    def series_folder(self, study_uid: str, series_uid: str) -> Path:
        """Folder of one series' instances."""
        return self.instances_dir / study_uid / series_uid

    def store(
        self,
        data: bytes | Dataset,
        *,
        calling_ae: str = "",
        header: InstanceHeader | None = None,
        now: float | None = None,
    ) -> StoreOutcome:
        """Make one instance durable, then record it (:meth:`Spool.store` documents it)."""
        raw = _encode(data) if isinstance(data, Dataset) else data
        hdr = header or read_instance_header(raw)
        if hdr.sop_class_uid in IGNORED_SOP_CLASSES:
            if hdr.is_own_output:
                logger.info("ignored own output %s (from %s)", hdr.sop_instance_uid, calling_ae)
            else:
                logger.info(
                    "ignored non-image object %s of class %s (from %s)",
                    hdr.sop_instance_uid,
                    hdr.sop_class_uid,
                    calling_ae,
                )
            return StoreOutcome(
                StoreAction.IGNORED,
                hdr.sop_instance_uid,
                hdr.series_uid,
                hdr.study_uid,
                None,
                False,
                None,
            )
        digest = content_digest(raw)
        t = time.time() if now is None else now
        stripe = self._stripes[hash(hdr.sop_instance_uid) % _STRIPES]
        with stripe:
            existing = self._index.instance_row(hdr.sop_instance_uid)
            if existing is not None and existing[1] != hdr.series_uid:
                raise InvalidInput(
                    f"SOP Instance {hdr.sop_instance_uid} was received before in another series"
                )
            series_row = self._index.series_row(hdr.series_uid)
            if series_row is not None and series_row[0] != hdr.study_uid:
                raise InvalidInput(f"series {hdr.series_uid} already belongs to another study")
            folder = self.series_folder(hdr.study_uid, hdr.series_uid)
            path = folder / f"{hdr.sop_instance_uid}.dcm"
            if existing is not None and existing[0] == digest and path.is_file():
                logger.debug("duplicate %s ignored", hdr.sop_instance_uid)
                gen = int(series_row[2]) if series_row is not None else None
                return StoreOutcome(
                    StoreAction.DUPLICATE,
                    hdr.sop_instance_uid,
                    hdr.series_uid,
                    hdr.study_uid,
                    gen,
                    False,
                    path,
                )
            ensure_dir(folder)
            write_durably(path, raw, tmp_dir=self.tmp_dir, tmp_prefix="tmp")
            try:
                generation, late = self._index.record(
                    hdr, digest, len(raw), calling_ae, t, sync=existing is not None
                )
            except sqlite3.Error as exc:
                if existing is None:
                    path.unlink(missing_ok=True)
                raise OSError(errno.EIO, f"spool index not writable: {exc}") from exc
        action = StoreAction.REPLACED if existing is not None else StoreAction.STORED
        if late:
            logger.info(
                "late instance %s re-opens series %s (generation %d)",
                hdr.sop_instance_uid,
                hdr.series_uid,
                generation,
            )
        return StoreOutcome(
            action,
            hdr.sop_instance_uid,
            hdr.series_uid,
            hdr.study_uid,
            generation,
            late,
            path,
        )
