"""Retention: the instances of analysed (or failed) series go ``max_age_s`` after their last
arrival; their results stay.

The bridge runs :meth:`Spool.purge` hourly (``CT_TRIAGE_SPOOL_RETENTION_DAYS``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .index import SeriesState, SpoolIndex
from .store import InstanceStore

__all__ = ["PurgeReport", "purge"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """What :meth:`Spool.purge` deleted."""

    series: int
    instances: int
    bytes: int


def purge(
    index: SpoolIndex, files: InstanceStore, max_age_s: float, now: float | None = None
) -> PurgeReport:
    """Delete the instances of settled series older than ``max_age_s`` (see :meth:`Spool.purge`).

    Raises
    ------
    ValueError
        ``max_age_s`` is negative.
    """
    if max_age_s < 0:
        raise ValueError("max_age_s must be >= 0")
    cutoff = (time.time() if now is None else now) - max_age_s
    with index.read() as db:
        rows = db.execute(
            "SELECT series_uid, study_uid FROM series WHERE state IN (?, ?) AND last_received < ?",
            (SeriesState.DONE, SeriesState.FAILED, cutoff),
        ).fetchall()
    purged_series = instances = freed = 0
    for series_uid, study_uid in rows:
        # one transaction per series: the receive path waits for one series at most
        moved = _purge_series(index, files, str(series_uid), str(study_uid), cutoff)
        if moved is None:
            continue
        purged_series += 1
        instances += len(moved)
        for path in moved:
            try:
                freed += path.stat().st_size
                path.unlink()
            except OSError as exc:  # left for recover()
                logger.warning("spool purge could not delete a file: %s", exc)
        for folder in (
            files.series_folder(str(study_uid), str(series_uid)),
            files.instances_dir / str(study_uid),
        ):
            with contextlib.suppress(OSError):  # only when empty: a late arrival's stays
                folder.rmdir()
    report = PurgeReport(series=purged_series, instances=instances, bytes=freed)
    if purged_series:
        logger.info(
            "spool purge: %d series, %d instances, %.1f MB older than %.1f days",
            report.series,
            report.instances,
            freed / 1e6,
            max_age_s / 86400,
        )
    return report


def _purge_series(
    index: SpoolIndex, files: InstanceStore, series_uid: str, study_uid: str, cutoff: float
) -> list[Path] | None:
    """Move one settled series' files into ``tmp/`` and drop its rows (one transaction).

    Returns the moved files, or ``None`` when the series changed meanwhile (a late
    instance re-opened it) or a file could not be moved (the moved ones are put back).
    """
    with index.tx() as db:
        still = db.execute(
            "SELECT 1 FROM series WHERE series_uid = ? AND state IN (?, ?) AND last_received < ?",
            (series_uid, SeriesState.DONE, SeriesState.FAILED, cutoff),
        ).fetchone()
        if still is None:
            return None
        folder = files.series_folder(study_uid, series_uid)
        uids = [
            str(r[0])
            for r in db.execute(
                "SELECT sop_instance_uid FROM instances WHERE series_uid = ?", (series_uid,)
            )
        ]
        staged: list[tuple[Path, Path]] = []
        try:
            for uid in uids:
                src = folder / f"{uid}.dcm"
                if src.exists():
                    dst = files.tmp_dir / f"purge-{uid}.dcm"
                    os.replace(src, dst)
                    staged.append((src, dst))
        except OSError as exc:
            for src, dst in reversed(staged):  # put back what moved; keep the series
                os.replace(dst, src)
            logger.warning("spool purge skipped a series: %s", exc)
            return None
        db.execute("DELETE FROM instances WHERE series_uid = ?", (series_uid,))
        db.execute("DELETE FROM expected_counts WHERE series_uid = ?", (series_uid,))
        db.execute("DELETE FROM series WHERE series_uid = ?", (series_uid,))
    return [dst for _, dst in staged]
