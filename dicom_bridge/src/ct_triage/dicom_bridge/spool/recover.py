"""Crash recovery: reconcile the index with the files after a restart.

* leftover temporary files are deleted (never acknowledged);
* a file without a row is recorded (crash between rename and commit, or a power cut that
  lost the row of a new instance: :meth:`SpoolIndex.record` commits those without waiting
  for the disk);
* a row without a file is dropped, with a warning;
* a series left ``claimed`` (crash mid-analysis) becomes due again.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ct_triage.models.errors import InvalidInput

from .header import content_digest, read_instance_header
from .index import SeriesState, SpoolIndex
from .store import InstanceStore

__all__ = ["recover"]

logger = logging.getLogger(__name__)


def recover(index: SpoolIndex, files: InstanceStore) -> None:
    """Reconcile ``index`` with ``files`` (see the module docstring and :meth:`Spool.recover`)."""
    for tmp in files.tmp_dir.iterdir():
        tmp.unlink(missing_ok=True)
    on_disk: dict[str, Path] = {}
    for study_dir in files.instances_dir.iterdir():
        if not study_dir.is_dir():
            continue
        for series_dir in study_dir.iterdir():
            if not series_dir.is_dir():
                continue
            for f in series_dir.iterdir():
                if f.suffix == ".dcm":
                    on_disk[f.stem] = f
    with index.read() as db:
        rows = db.execute(
            "SELECT i.sop_instance_uid, s.study_uid, s.series_uid FROM instances i "
            "JOIN series s ON s.series_uid = i.series_uid"
        ).fetchall()
    known: set[str] = set()
    lost: list[str] = []
    for sop_uid, study_uid, series_uid in rows:
        path = files.series_folder(str(study_uid), str(series_uid)) / f"{sop_uid}.dcm"
        if on_disk.get(str(sop_uid)) == path:
            known.add(str(sop_uid))
        else:
            lost.append(str(sop_uid))
    with index.tx() as db:
        for sop_uid in lost:
            logger.warning("spool index lists %s but its file is missing; dropped", sop_uid)
            db.execute("DELETE FROM instances WHERE sop_instance_uid = ?", (sop_uid,))
        db.execute("DELETE FROM series WHERE series_uid NOT IN (SELECT series_uid FROM instances)")
        reset = db.execute(
            "UPDATE series SET state = ?, claimed_generation = NULL WHERE state = ?",
            (SeriesState.RECEIVING, SeriesState.CLAIMED),
        ).rowcount
    if reset:
        logger.warning("%d series claimed before a restart are due again", reset)
    adopted = 0
    for sop_uid, path in on_disk.items():
        if sop_uid in known:
            continue
        try:
            raw = path.read_bytes()
            hdr = read_instance_header(raw)
        except (OSError, InvalidInput) as exc:
            logger.warning("unreadable spool file %s left in place: %s", path.name, exc)
            continue
        if path.parent != files.series_folder(hdr.study_uid, hdr.series_uid):
            logger.warning("spool file %s is in the wrong folder; ignored", path.name)
            continue
        index.record(hdr, content_digest(raw), len(raw), "", path.stat().st_mtime)
        adopted += 1
    if adopted:
        logger.warning("recorded %d spool file(s) missing from the index", adopted)
