"""Storage SCP + durable spool: real pynetdicom associations on free loopback ports.

Checks PS3.4 Annex B behaviour (Success only once on disk, 0xA700 when the spool cannot
write), series completion (quiet period, expected count, late instances), crash recovery
(in-process and a real SIGKILL), own-output loop prevention, calling-AE allow-list, DICOM
TLS (PS3.15 B.9) and a real Orthanc pushing to us.
"""

from __future__ import annotations

import errno
import gc
import io
import logging
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pydicom
import pytest
from dicom_factory import SeriesSpec, make_slice, write_series
from orthanc import OrthancServer, orthanc_available
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    RLELossless,
    SegmentationStorage,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.association import Association
from tlsca import make_ca

from ct_triage.dicom_bridge.part10 import dataset_offset
from ct_triage.dicom_bridge.scp import (
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    VERIFICATION_SOP_CLASS,
    StorageSCP,
)
from ct_triage.dicom_bridge.spool import SeriesState, Spool, StoreAction
from ct_triage.dicom_bridge.tls import client_ssl_context, server_ssl_context
from ct_triage.models.errors import InvalidInput, TriageError

pytestmark = pytest.mark.integration

QUIET_S = 0.3
REPO_ROOT = Path(__file__).resolve().parents[2]


# --- helpers ---------------------------------------------------------------------------------
def _scu(ae_title: str = "TEST_SCU") -> AE:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(CTImageStorage, RLELossless)
    ae.add_requested_context(SegmentationStorage, ExplicitVRLittleEndian)
    return ae


def _associate(
    port: int,
    *,
    ae_title: str = "TEST_SCU",
    tls_args: tuple[ssl.SSLContext, str] | None = None,
) -> Association:
    return _scu(ae_title).associate("127.0.0.1", port, ae_title="CT_TRIAGE", tls_args=tls_args)


def _send(
    port: int, datasets: Sequence[Path | Dataset], *, ae_title: str = "TEST_SCU"
) -> list[int]:
    assoc = _associate(port, ae_title=ae_title)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _dataset_bytes(data: bytes) -> bytes:
    """The data set part of a Part 10 stream (after the File Meta Information)."""
    return data[dataset_offset(data) :]


def _series(folder: Path, n: int = 4, **kw: object) -> list[Path]:
    return write_series(folder, SeriesSpec(n_slices=n, **kw))  # type: ignore[arg-type]


def _uids(paths: Sequence[Path]) -> tuple[str, str, list[str]]:
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    return (
        str(headers[0].StudyInstanceUID),
        str(headers[0].SeriesInstanceUID),
        sorted(str(h.SOPInstanceUID) for h in headers),
    )


def _poll(predicate: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool", quiet_period_s=QUIET_S)
    yield s
    s.close()


@pytest.fixture
def scp(spool: Spool) -> Iterator[StorageSCP]:
    with StorageSCP(spool, host="127.0.0.1", port=0) as server:
        yield server


# --- association basics ---------------------------------------------------------------------
def test_c_echo(scp: StorageSCP) -> None:
    assoc = _associate(scp.port)
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == STATUS_SUCCESS
    assoc.release()


def test_calling_ae_not_allowed_is_rejected(spool: Spool, caplog: pytest.LogCaptureFixture) -> None:
    with StorageSCP(
        spool, host="127.0.0.1", port=0, allowed_calling_aets=frozenset({"PACS"})
    ) as server:
        with caplog.at_level(logging.ERROR, logger="pynetdicom"):
            assoc = _associate(server.port, ae_title="INTRUDER")
        assert assoc.is_rejected
        assert "Calling AE title not recognised" in caplog.text  # A-ASSOCIATE-RJ 1/1/3
        assert not assoc.is_established
        ok = _associate(server.port, ae_title="PACS")
        assert ok.is_established
        ok.release()


# --- store, index, completion ---------------------------------------------------------------
@pytest.mark.parametrize("rle", [False, True], ids=["explicit-le", "rle"])
def test_store_series_on_disk_bytes_equal_and_due_after_quiet(
    scp: StorageSCP, spool: Spool, tmp_path: Path, rle: bool
) -> None:
    paths = _series(tmp_path / "src", 5, rle=rle)
    study, series, sops = _uids(paths)
    t0 = time.time()
    assert _send(scp.port, paths) == [STATUS_SUCCESS] * 5

    assert spool.instance_uids(series) == sops
    folder = spool.series_folder(study, series)
    for p in paths:
        sop = str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        stored = (folder / f"{sop}.dcm").read_bytes()
        assert _dataset_bytes(stored) == _dataset_bytes(p.read_bytes())
        meta = pydicom.dcmread(io.BytesIO(stored)).file_meta
        assert meta.TransferSyntaxUID == (RLELossless if rle else ExplicitVRLittleEndian)
    assert not list((spool.root / "tmp").iterdir())

    assert spool.due() == []  # the quiet period has not passed yet
    _poll(lambda: spool.due())
    assert time.time() - t0 >= QUIET_S
    (ready,) = spool.due()
    assert (ready.series_uid, ready.study_uid, ready.instance_count) == (series, study, 5)
    assert ready.folder == folder
    assert ready.generation == 1
    assert ready.previous_result_ref is None
    claimed = spool.claim(series)
    assert spool.due() == []
    with pytest.raises(TriageError):
        spool.claim(series)
    spool.mark_done(series, claimed.generation, "job-1")
    assert spool.state(series) is SeriesState.DONE


def test_expected_count_waits_then_gives_up(scp: StorageSCP, spool: Spool, tmp_path: Path) -> None:
    paths = _series(tmp_path / "src", 5)
    _, series, _ = _uids(paths)
    spool.set_expected_count(series, 5)
    assert _send(scp.port, paths[:3]) == [STATUS_SUCCESS] * 3
    now = time.time()
    assert spool.due(now + QUIET_S + 0.2) == []  # quiet, but 3 of 5
    (gave_up,) = spool.due(now + spool.incomplete_after_s + 0.2)
    assert (gave_up.instance_count, gave_up.expected_count, gave_up.missing_count) == (3, 5, 2)

    assert _send(scp.port, paths[3:]) == [STATUS_SUCCESS] * 2
    now = time.time()
    (ready,) = spool.due(now + QUIET_S + 0.2)
    assert (ready.instance_count, ready.missing_count, ready.generation) == (5, 0, 1)


def test_duplicate_resend_is_idempotent(scp: StorageSCP, spool: Spool, tmp_path: Path) -> None:
    paths = _series(tmp_path / "src", 3)
    study, series, sops = _uids(paths)
    assert _send(scp.port, paths) == [STATUS_SUCCESS] * 3
    spool.mark_done(series, spool.claim(series, time.time() + 1).generation, "job-1")
    files = sorted(spool.series_folder(study, series).iterdir())
    mtimes = [f.stat().st_mtime_ns for f in files]

    assert _send(scp.port, paths) == [STATUS_SUCCESS] * 3
    assert spool.instance_uids(series) == sops
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert spool.state(series) is SeriesState.DONE
    assert spool.due(time.time() + 10) == []


def test_late_and_changed_instances_bump_generation(
    scp: StorageSCP, spool: Spool, tmp_path: Path
) -> None:
    spec = SeriesSpec(n_slices=4, study_uid=generate_uid(), series_uid=generate_uid())
    paths = write_series(tmp_path / "src", spec)
    series = str(spec.series_uid)
    assert _send(scp.port, paths[:3]) == [STATUS_SUCCESS] * 3
    first = spool.claim(series, time.time() + 1)
    spool.mark_done(series, first.generation, "result-gen1")

    assert _send(scp.port, paths[3:]) == [STATUS_SUCCESS]  # late
    assert spool.state(series) is SeriesState.RECEIVING
    assert spool.due() == []  # a new quiet period first
    (again,) = spool.due(time.time() + QUIET_S + 0.1)
    assert (again.generation, again.instance_count) == (2, 4)
    assert again.previous_result_ref == "result-gen1"

    # A late arrival while generation 2 is being analysed: gen 2's result still becomes
    # the reference that generation 3 supersedes.
    second = spool.claim(series, time.time() + 1)
    changed = pydicom.dcmread(paths[0])
    changed.SeriesDescription = "Chest corrected"
    outcome = spool.store(changed, calling_ae="TEST")
    assert outcome.action is StoreAction.REPLACED
    assert outcome.late
    assert outcome.generation == 3
    spool.mark_done(series, second.generation, "result-gen2")
    assert spool.state(series) is SeriesState.RECEIVING
    (third,) = spool.due(time.time() + 1)
    assert (third.generation, third.previous_result_ref) == (3, "result-gen2")


def test_write_error_answers_out_of_resources_and_records_nothing(
    scp: StorageSCP, spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _series(tmp_path / "src", 2)
    _, series, sops = _uids(paths)

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", disk_full)
        assert _send(scp.port, paths) == [STATUS_OUT_OF_RESOURCES] * 2
    assert spool.instance_uids(series) == []
    assert not list(spool.instances_dir.rglob("*.dcm"))
    assert not list((spool.root / "tmp").iterdir())
    assert spool.due(time.time() + 100) == []

    assert _send(scp.port, paths) == [STATUS_SUCCESS] * 2  # the peer's retry succeeds
    assert spool.instance_uids(series) == sops


def test_peer_abort_mid_series_keeps_acknowledged(
    scp: StorageSCP, spool: Spool, tmp_path: Path
) -> None:
    paths = _series(tmp_path / "src", 6)
    _, series, _ = _uids(paths)
    assoc = _associate(scp.port)
    acked = [assoc.send_c_store(p) for p in paths[:3]]
    assoc.abort()
    assert [int(s.Status) for s in acked] == [STATUS_SUCCESS] * 3
    expected = sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in paths[:3])
    assert spool.instance_uids(series) == expected
    # The partial series is held (issue 16: never analysed while its sender aborted) ...
    _poll(lambda: spool._index.series_row(series) and _aborted(spool, series))
    now = time.time()
    assert spool.due(now + QUIET_S + 1.0) == []
    # ... until the aborted-series timeout, when it goes as it is.
    (ready,) = spool.due(now + spool.aborted_wait_s + 1.0)
    assert (ready.instance_count, ready.completed_by) == (3, "aborted-timeout")
    assert len(list(ready.folder.glob("*.dcm"))) == 3


def _aborted(spool: Spool, series: str) -> bool:
    with spool._index.read() as db:
        row = db.execute("SELECT aborted_at FROM series WHERE series_uid = ?", (series,)).fetchone()
    return row is not None and row[0] is not None


@pytest.fixture
def eager(tmp_path: Path) -> Iterator[tuple[Spool, StorageSCP]]:
    """A spool whose quiet period is long, so only the sender's signals complete a series."""
    s = Spool(tmp_path / "eager-spool", quiet_period_s=60.0, settle_s=0.2, aborted_wait_s=120.0)
    with StorageSCP(s, host="127.0.0.1", port=0) as server:
        yield s, server
    s.close()


def test_released_association_completes_the_series_without_the_quiet_period(
    eager: tuple[Spool, StorageSCP], tmp_path: Path
) -> None:
    spool, scp = eager
    paths = _series(tmp_path / "src", 5)
    _, series, _ = _uids(paths)
    t0 = time.monotonic()
    assert _send(scp.port, paths) == [STATUS_SUCCESS] * 5
    _poll(lambda: spool.due())
    assert time.monotonic() - t0 < 30.0  # well inside the 60 s quiet period
    (ready,) = spool.due()
    assert (ready.series_uid, ready.instance_count) == (series, 5)
    assert ready.completed_by == "association-released"


def test_one_instance_per_association_waits_for_the_quiet_period(
    eager: tuple[Spool, StorageSCP], tmp_path: Path
) -> None:
    spool, scp = eager
    paths = _series(tmp_path / "src", 3)
    _, series, _ = _uids(paths)
    for p in paths:  # a sender that opens one association per image
        assert _send(scp.port, [p]) == [STATUS_SUCCESS]
    time.sleep(0.5)  # past settle_s: the last release has been recorded
    now = time.time()
    assert spool.due(now + 1.0) == []
    (ready,) = spool.due(now + spool.quiet_period_s + 0.1)
    assert (ready.series_uid, ready.instance_count) == (series, 3)
    assert ready.completed_by == "quiet-period"


def test_resend_after_an_abort_completes_the_held_series_once(
    eager: tuple[Spool, StorageSCP], tmp_path: Path
) -> None:
    """Issue 16: 60 of 106 then abort, then the full re-send -> one complete series."""
    spool, scp = eager
    paths = _series(tmp_path / "src", 8)
    _, series, sops = _uids(paths)
    assoc = _associate(scp.port)
    assert [int(assoc.send_c_store(p).Status) for p in paths[:5]] == [STATUS_SUCCESS] * 5
    assoc.abort()
    _poll(lambda: _aborted(spool, series))
    assert spool.due(time.time() + spool.settle_s + 30.0) == []  # held, not partial

    assert _send(scp.port, paths) == [STATUS_SUCCESS] * 8  # 5 duplicates + 3 new
    _poll(lambda: spool.due())
    (ready,) = spool.due()
    assert (ready.instance_count, ready.generation) == (8, 1)
    assert ready.completed_by == "association-released"
    assert spool.instance_uids(series) == sops


def test_own_output_accepted_not_spooled(
    scp: StorageSCP, spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    spec = SeriesSpec(n_slices=1, with_pixels=False)
    seg = make_slice(
        spec, 0, study_uid=generate_uid(), series_uid=generate_uid(), frame_of_reference_uid="1.2"
    )
    seg.SOPClassUID = SegmentationStorage
    seg.file_meta.MediaStorageSOPClassUID = SegmentationStorage
    seg.Modality = "SEG"
    seg.Manufacturer = "chest-ct-triage"
    with caplog.at_level(logging.INFO, logger="ct_triage.dicom_bridge.spool"):
        assert _send(scp.port, [seg]) == [STATUS_SUCCESS]
    assert "ignored own output" in caplog.text
    assert "Synthetic" not in caplog.text
    assert "SYNTH-0001" not in caplog.text
    assert not list(spool.instances_dir.rglob("*.dcm"))
    assert spool.due(time.time() + 100) == []


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_unsafe_uid_is_refused(spool: Spool, tmp_path: Path) -> None:
    ds = pydicom.dcmread(_series(tmp_path / "src", 1)[0])
    ds.SeriesInstanceUID = "../../etc"
    with pytest.raises(InvalidInput):
        spool.store(ds)
    assert not list(spool.root.rglob("*.dcm"))


# --- crash recovery ---------------------------------------------------------------------------
def test_restart_recovers_receiving_and_claimed(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    paths = _series(tmp_path / "src", 3)
    _, series, sops = _uids(paths)
    first = Spool(root, quiet_period_s=QUIET_S)
    for p in paths:
        first.store(p.read_bytes(), calling_ae="TEST")
    del first  # crash: never closed
    gc.collect()

    second = Spool(root, quiet_period_s=QUIET_S)
    assert second.instance_uids(series) == sops
    assert len(second.due(time.time() + 1)) == 1
    second.claim(series, time.time() + 1)
    del second  # crash mid-analysis
    gc.collect()

    third = Spool(root, quiet_period_s=QUIET_S)
    (again,) = third.due(time.time() + 1)
    assert (again.series_uid, again.generation, again.instance_count) == (series, 1, 3)
    third.close()


def test_recover_reconciles_files_and_rows(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    paths = _series(tmp_path / "src", 3)
    study, series, sops = _uids(paths)
    with Spool(root, quiet_period_s=QUIET_S) as s:
        for p in paths[:2]:
            s.store(p.read_bytes())
    folder = root / "instances" / study / series
    # the first stored instance (not sops[0]: sops are sorted, and their UIDs are random)
    gone = str(pydicom.dcmread(paths[0], stop_before_pixels=True).SOPInstanceUID)
    (folder / f"{gone}.dcm").unlink()  # row without file
    extra = pydicom.dcmread(paths[2])
    (folder / f"{extra.SOPInstanceUID}.dcm").write_bytes(paths[2].read_bytes())  # no row
    (root / "tmp" / "partial.tmp").write_bytes(b"x")
    with Spool(root, quiet_period_s=QUIET_S) as s:
        assert s.instance_uids(series) == sorted(
            u for u in sops if u != gone and (folder / f"{u}.dcm").exists()
        )
        assert gone not in s.instance_uids(series)
        assert str(extra.SOPInstanceUID) in s.instance_uids(series)
        assert not list((root / "tmp").iterdir())


def test_only_the_row_of_a_new_instance_commits_without_waiting_for_the_disk(
    tmp_path: Path,
) -> None:
    """A new instance's row skips the WAL fsync (its durable file is re-recorded after a power
    cut); a replaced instance's row and every state change wait for the disk."""
    paths = _series(tmp_path / "src", 2)
    with Spool(tmp_path / "spool", quiet_period_s=QUIET_S) as s:
        statements: list[str] = []
        s._index.db.set_trace_callback(statements.append)

        def levels() -> list[str]:
            found = [st.split("=")[1] for st in statements if "PRAGMA synchronous=" in st]
            statements.clear()
            return found

        s.store(paths[0].read_bytes())
        assert levels() == ["NORMAL", "FULL"]  # new: this commit only, then FULL again
        assert int(s._index.db.execute("PRAGMA synchronous").fetchone()[0]) == 2  # FULL
        changed = pydicom.dcmread(paths[0])
        changed.SeriesDescription = "Chest corrected"
        assert s.store(changed).action is StoreAction.REPLACED
        assert levels() == []  # replaced: synchronous (FULL) commit
        _, series, _ = _uids(paths)
        ready = s.claim(series, time.time() + QUIET_S + 1)
        s.mark_done(series, ready.generation, "result")
        assert levels() == []
    # what a power cut that lost the new instance's row leaves: its file, no row
    with Spool(tmp_path / "spool", quiet_period_s=QUIET_S) as s:
        s._index.db.execute("DELETE FROM instances")
    with Spool(tmp_path / "spool", quiet_period_s=QUIET_S) as s:
        sop = str(pydicom.dcmread(paths[0], stop_before_pixels=True).SOPInstanceUID)
        assert s.instance_uids(series) == [sop]
        assert s.state(series) is SeriesState.RECEIVING  # re-opened: analysed again


def test_purge_deletes_settled_series_past_retention_only(tmp_path: Path) -> None:
    """Done and failed series older than the retention go; newer or unsettled ones stay."""
    root = tmp_path / "spool"
    t0 = 1_000_000.0
    day = 86400.0
    groups = {
        name: _uids(_series(tmp_path / name, 3))
        for name in ("done_old", "failed_old", "done_new", "receiving_old", "claimed_old")
    }
    with Spool(root, quiet_period_s=QUIET_S) as s:
        for name, (_study, _series_uid, _sops) in groups.items():
            arrived = t0 if name.endswith("old") else t0 + 9 * day
            for p in sorted((tmp_path / name).iterdir()):
                s.store(p.read_bytes(), now=arrived)
        for name in ("done_old", "failed_old", "done_new", "claimed_old"):
            series_uid = groups[name][1]
            ready = s.claim(series_uid, now=t0 + 9 * day + QUIET_S + 1)
            if name.startswith("done"):
                s.mark_done(series_uid, ready.generation, f"result-{name}")
            elif name.startswith("failed"):
                s.mark_failed(series_uid, ready.generation, "declined")
        report = s.purge(7 * day, now=t0 + 10 * day)
        assert (report.series, report.instances) == (2, 6)
        assert report.bytes == sum(
            p.stat().st_size
            for name in ("done_old", "failed_old")
            for p in (tmp_path / name).iterdir()
        )
        for name, (study, series_uid, sops) in groups.items():
            gone = name in ("done_old", "failed_old")
            assert (s.state(series_uid) is None) is gone, name
            assert s.instance_uids(series_uid) == ([] if gone else sops), name
            assert (root / "instances" / study).exists() is not gone, name
        assert not list((root / "tmp").iterdir())
        assert s.purge(7 * day, now=t0 + 10 * day).series == 0  # idempotent
        # a late instance of a purged series starts the series again, on its own
        study, series_uid, _ = groups["done_old"]
        late = sorted((tmp_path / "done_old").iterdir())[0]
        assert s.store(late.read_bytes(), now=t0 + 10 * day).action == StoreAction.STORED
        assert s.state(series_uid) == SeriesState.RECEIVING
        assert len(s.instance_uids(series_uid)) == 1
    with Spool(root, quiet_period_s=QUIET_S) as s:  # the index and the files still agree
        assert s.state(groups["done_new"][1]) == SeriesState.DONE
        assert s.instance_uids(groups["done_new"][1]) == groups["done_new"][2]


def test_purge_crash_leaves_no_orphan_to_reanalyse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files moved out but not yet unlinked when the process dies: nothing comes back."""
    root = tmp_path / "spool"
    study, series_uid, _ = _uids(_series(tmp_path / "src", 3))
    with Spool(root, quiet_period_s=QUIET_S) as s:
        for p in sorted((tmp_path / "src").iterdir()):
            s.store(p.read_bytes(), now=1000.0)
        ready = s.claim(series_uid, now=2000.0)
        s.mark_done(series_uid, ready.generation, "result")

        def die(self: Path, *args: object, **kwargs: object) -> None:
            raise KeyboardInterrupt  # the process stops between commit and unlink

        monkeypatch.setattr(Path, "unlink", die)
        with pytest.raises(KeyboardInterrupt):
            s.purge(0.0, now=5000.0)
        monkeypatch.undo()
        assert list((root / "tmp").iterdir())  # moved aside, not yet deleted
    with Spool(root, quiet_period_s=QUIET_S) as s:
        assert s.state(series_uid) is None
        assert s.due(now=1e9) == []
        assert not list((root / "tmp").iterdir())
        assert not (root / "instances" / study / series_uid).exists() or not list(
            (root / "instances" / study / series_uid).iterdir()
        )


def test_second_process_cannot_open_a_held_spool(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    with Spool(root):
        code = (
            "import sys; from pathlib import Path; from ct_triage.dicom_bridge.spool import Spool;"
            "from ct_triage.models.errors import TriageError\n"
            "try:\n    Spool(Path(sys.argv[1]))\nexcept TriageError:\n    sys.exit(3)\n"
        )
        proc = subprocess.run([sys.executable, "-c", code, str(root)], timeout=60)
        assert proc.returncode == 3


_SCP_SCRIPT = """
import sys, time
from pathlib import Path
from ct_triage.dicom_bridge.scp import StorageSCP
from ct_triage.dicom_bridge.spool import Spool
scp = StorageSCP(Spool(Path(sys.argv[1]), quiet_period_s=0.3), host="127.0.0.1", port=0)
scp.start()
print(scp.port, flush=True)
while True:
    time.sleep(1)
"""


def test_sigkill_loses_nothing_acknowledged(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    paths = _series(tmp_path / "src", 6)
    _, series, sops = _uids(paths)
    proc = subprocess.Popen(
        [sys.executable, "-c", _SCP_SCRIPT, str(root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        assoc = _associate(port)
        assert assoc.is_established
        statuses = [int(assoc.send_c_store(p).Status) for p in paths]
        proc.kill()  # SIGKILL right after the last acknowledgement, association still open
        proc.wait(timeout=30)
        assoc.abort()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert statuses == [STATUS_SUCCESS] * 6
    with Spool(root, quiet_period_s=QUIET_S) as s:
        assert s.instance_uids(series) == sops
        (ready,) = s.due(time.time() + 1)
        assert ready.instance_count == 6
        for sop in sops:
            assert pydicom.dcmread(ready.folder / f"{sop}.dcm").SOPInstanceUID == sop


# --- TLS (PS3.15 B.9) -------------------------------------------------------------------------
def test_tls_echo_and_store_and_untrusted_clients_fail(spool: Spool, tmp_path: Path) -> None:
    pki = make_ca(tmp_path / "pki")
    other = make_ca(tmp_path / "other", name="Other CA")
    server_ctx = server_ssl_context(
        pki.server_cert, pki.server_key, ca=pki.ca_cert, require_client_cert=True
    )
    paths = _series(tmp_path / "src", 2)
    _, series, sops = _uids(paths)
    with StorageSCP(spool, host="127.0.0.1", port=0, ssl_context=server_ctx) as server:
        good = client_ssl_context(pki.ca_cert, pki.client_cert, pki.client_key)
        assoc = _associate(server.port, tls_args=(good, "localhost"))
        assert assoc.is_established
        assert int(assoc.send_c_echo().Status) == STATUS_SUCCESS
        assert [int(assoc.send_c_store(p).Status) for p in paths] == [STATUS_SUCCESS] * 2
        assoc.release()
        assert spool.instance_uids(series) == sops

        wrong_ca = client_ssl_context(other.ca_cert, other.client_cert, other.client_key)
        no_cert = client_ssl_context(pki.ca_cert)
        for ctx in (wrong_ca, no_cert):
            bad = _associate(server.port, tls_args=(ctx, "localhost"))
            assert not bad.is_established
        plain = _associate(server.port)
        assert not plain.is_established


def test_tls_missing_files_raise_clear_errors(tmp_path: Path) -> None:
    pki = make_ca(tmp_path / "pki")
    with pytest.raises(TriageError, match="does not exist"):
        server_ssl_context(tmp_path / "nope.pem", pki.server_key)
    with pytest.raises(TriageError, match="no CA"):
        server_ssl_context(pki.server_cert, pki.server_key, require_client_cert=True)
    with pytest.raises(TriageError, match="cannot be loaded"):
        server_ssl_context(pki.server_cert, pki.client_key)  # key does not match
    with pytest.raises(TriageError, match="together"):
        client_ssl_context(pki.ca_cert, pki.client_cert)


# --- a real PACS pushing to us ---------------------------------------------------------------
def test_orthanc_pushes_to_our_scp(spool: Spool, scp: StorageSCP, tmp_path: Path) -> None:
    reason = orthanc_available()
    if reason:
        pytest.skip(reason)
    server = OrthancServer(
        root=tmp_path / "orthanc", modalities={"triage": ("CT_TRIAGE", "127.0.0.1", scp.port)}
    )
    server.start()
    try:
        paths = _series(tmp_path / "src", 4)
        _, series, sops = _uids(paths)
        server.upload(paths)
        ids = server.instances()
        r = httpx.post(
            f"{server.url}/modalities/triage/store",
            json={"Resources": ids, "Synchronous": True},
            auth=server.auth,
            timeout=60,
        )
        r.raise_for_status()
    finally:
        server.stop()
    assert spool.instance_uids(series) == sops
    (ready,) = spool.due(time.time() + 1)
    assert ready.instance_count == 4
