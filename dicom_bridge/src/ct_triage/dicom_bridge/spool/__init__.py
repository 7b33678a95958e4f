"""The durable receive spool: instances on disk first, then series completion.

What the Storage SCP acknowledges with Success (PS3.4 B.2.3, status ``0x0000``) is on disk
first: :meth:`Spool.store` writes each instance to a temporary file, ``fsync``\\ s it, renames
it into place with :func:`os.replace`, ``fsync``\\ s the folder and only then records it in
a SQLite index (WAL journal, ``synchronous=FULL``) in one transaction. Layout under
``root``::

    spool.db                                         the index (series, instances, counts)
    spool.lock                                       held (POSIX lock) by the owning process
    tmp/                                             partial writes, same file system
    instances/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm

Files keep the peer's encoding: the Part 10 bytes (PS3.10 section 7) with the transfer
syntax and File Meta Information the instance arrived in.

When is a series *complete*? DICOM has no "end of series" message, so the spool combines
what the sender can tell us (first rule that applies wins):

1. **The sender aborted.** An association that carried instances of the series ended in
   A-ABORT (or the connection dropped, PS3.8 7.3/7.4): the series is held -- *not* analysed
   as a partial -- until a later association that carries it is released normally (then
   the rules below apply), or ``aborted_wait_s`` pass without an arrival.
2. **Expected count known** (NumberOfSeriesRelatedInstances from C-FIND / QIDO-RS, PS3.4
   C.6.1.1.5, recorded with :meth:`Spool.set_expected_count`): complete ``settle_s`` after
   the last arrival once that many are present; otherwise ``incomplete_after_s`` after the
   last arrival, with the shortfall recorded.
3. **The sender released the association** (A-RELEASE, PS3.8 7.2) that carried two or more
   instances of the series (or all of them): complete ``settle_s`` after the last arrival. A
   PACS that routes a *stable* series or study (Orthanc ``OnStableSeries``/``OnStableStudy``,
   dcm4chee-arc export rules) sends it in one association, so its release means "this is
   what I have". A sender using one association per image (one instance each) does not
   count: its series falls back to rule 4.
4. **Quiet period**: nothing arrived for ``quiet_period_s``.

The CT Image IOD carries no instance count of its series: ImagesInAcquisition (0020,1002)
is optional and counts an *acquisition* (several reconstructions share one), and
NumberOfSlices (0054,0081) belongs to NM/PET. The spool does not guess from them.

A series then goes through ``due -> claim -> mark_done | mark_failed``; an instance arriving
after a series completed (a *late* instance, or a changed re-send) bumps its ``generation``
and makes it due again, and the caller's new result supersedes ``previous_result_ref``
(the bridge then retracts the old result from the PACS where configured).

Our own outputs coming back from the PACS (SEG, Comprehensive 3D SR, Secondary Capture with
Manufacturer ``chest-ct-triage``) are acknowledged but never spooled, so results never loop
back into analysis; other non-image objects of those classes are ignored the same way.

Instances of series that were analysed (or failed) are deleted ``max_age_s`` after their last
arrival by :meth:`Spool.purge` (the bridge runs it hourly, ``CT_TRIAGE_SPOOL_RETENTION_DAYS``);
the results stay.

The spool survives a crash: on start-up :meth:`Spool.recover` reconciles the index with the
files, and a series claimed but never marked done becomes due again. One process owns a
spool folder at a time (a POSIX lock on ``spool.lock``); threads of that process may share
one :class:`Spool`.

The package, one module per responsibility:

==================  ==========================================================================
``spool.py``        :class:`Spool`: the folder, its lock and life cycle; the public API
``header.py``       what the spool reads of an instance (UIDs, class, own output or not)
``store.py``        durable instance writes (:mod:`ct_triage.models.durable`), then the record
``index.py``        the SQLite index (:mod:`ct_triage.models.sqlite_store`), :class:`SeriesState`
``completion.py``   the completion rules, ``due -> claim -> mark_done | mark_failed``
``purge.py``        retention
``recover.py``      reconciling the index with the files after a crash
==================  ==========================================================================
"""

from .completion import ReadySeries
from .header import IGNORED_SOP_CLASSES, InstanceHeader, read_instance_header
from .index import SeriesState
from .purge import PurgeReport
from .spool import Spool
from .store import StoreAction, StoreOutcome

__all__ = [
    "IGNORED_SOP_CLASSES",
    "InstanceHeader",
    "PurgeReport",
    "ReadySeries",
    "SeriesState",
    "Spool",
    "StoreAction",
    "StoreOutcome",
    "read_instance_header",
]
