"""Result delivery into a real Orthanc: C-STORE and STOW-RS destinations, the outbox's
retry/backoff across an Orthanc outage, and dead-lettering of rejected instances.

Orthanc 1.10 answers C-STORE 0xA700 and STOW-RS HTTP 400 with a FailedSOPSequence item for
an instance without SeriesInstanceUID: that is how the tests make the PACS refuse a store.
(A Lua ``ReceivedInstanceFilter`` returning false is no use here: Orthanc 1.10 drops the
instance but still answers Success.)
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dicom_factory import SeriesSpec, write_series
from orthanc import OrthancServer, free_port
from pydicom.uid import CTImageStorage, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from ct_triage.dicom_bridge.deliver import DeliveryState, Outbox
from ct_triage.dicom_bridge.destinations import CStoreDestination, Destination, StowDestination
from ct_triage.dicom_bridge.dicomweb import BasicAuth, DicomWebNode
from ct_triage.dicom_bridge.dimse import PacsNode
from ct_triage.dicom_bridge.query import DimseClient

pytestmark = pytest.mark.integration

T0 = 1_000_000.0


def _clock() -> float:
    return T0


def _cstore(orthanc: OrthancServer) -> CStoreDestination:
    node = PacsNode("ORTHANC", "127.0.0.1", orthanc.dicom_port)
    return CStoreDestination(node, client=DimseClient(connect_timeout_s=2, acse_timeout_s=5))


def _stow(orthanc: OrthancServer) -> StowDestination:
    user, password = orthanc.auth
    return StowDestination(
        DicomWebNode(orthanc.dicomweb_url, auth=BasicAuth(user, password), timeout_s=5)
    )


def _stored_sop_uids(orthanc: OrthancServer) -> list[str]:
    return [
        orthanc.get(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"]
        for i in orthanc.instances()
    ]


def _uids(files: list[Path]) -> list[str]:
    return sorted(str(pydicom.dcmread(f).SOPInstanceUID) for f in files)


def _results(tmp_path: Path, n: int = 3) -> list[Path]:
    return write_series(tmp_path / "results", SeriesSpec(n_slices=n))


@pytest.mark.parametrize("kind", ["cstore", "stow"])
def test_delivery_stores_into_orthanc(orthanc: OrthancServer, tmp_path: Path, kind: str) -> None:
    dest: Destination = _cstore(orthanc) if kind == "cstore" else _stow(orthanc)
    files = _results(tmp_path)
    box = Outbox(tmp_path / "box", {"pacs": dest}, seed=1, clock=_clock)
    [delivery_id] = box.enqueue(files, job_ref="job-1")
    assert box.run_once(now=T0) == 1
    d = box.get(delivery_id)
    assert (d.state, d.attempts, d.n_stored) == (DeliveryState.DONE, 1, 3)
    assert sorted(_stored_sop_uids(orthanc)) == _uids(files)
    assert box.run_once(now=T0 + 1e6) == 0
    assert not (tmp_path / "box" / "outbox" / delivery_id).exists()


def test_enqueue_is_idempotent_per_job_and_destination(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    files = _results(tmp_path)
    box = Outbox(tmp_path / "box", {"a": _cstore(orthanc), "b": _stow(orthanc)}, clock=_clock)
    first = box.enqueue(files, job_ref="job-7")
    assert len(first) == 2
    assert box.enqueue(files, job_ref="job-7") == first
    assert Outbox(tmp_path / "box", {"a": _cstore(orthanc)}).enqueue(files, job_ref="job-7") == [
        first[0]
    ]
    assert len(box.pending()) == 2
    assert box.enqueue(files, job_ref="job-8") != first


def test_orthanc_outage_is_retried_with_backoff_then_delivered_once(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    files = _results(tmp_path, n=4)
    box = Outbox(
        tmp_path / "box",
        {"dimse": _cstore(orthanc), "web": _stow(orthanc)},
        backoff_base_s=2.0,
        seed=42,
        clock=_clock,
    )
    ids = box.enqueue(files, job_ref="job-outage")
    orthanc.stop()
    assert box.run_once(now=T0) == 2
    pending = {d.id: d for d in box.pending()}
    assert set(pending) == set(ids)
    for d in pending.values():
        assert d.attempts == 1
        assert T0 + 1.0 <= d.next_attempt_at <= T0 + 2.0  # equal jitter in [base/2, base]
        assert "not sent" in d.last_error
    assert "connection refused" in pending[ids[0]].last_error
    assert "could not connect to DICOMweb server" in pending[ids[1]].last_error
    assert not box.dead_letters()

    orthanc.start()
    assert box.run_once(now=T0 + 0.5) == 0  # backoff not elapsed: nothing attempted
    assert box.run_once(now=T0 + 2.0) == 2
    assert all(box.get(i).state is DeliveryState.DONE for i in ids)
    assert all(box.get(i).attempts == 2 for i in ids)
    stored = _stored_sop_uids(orthanc)
    assert sorted(stored) == _uids(files)  # each instance exactly once, same UIDs


def _with_one_broken(files: list[Path]) -> Path:
    ds = pydicom.dcmread(files[1])
    del ds.SeriesInstanceUID
    ds.save_as(files[1], enforce_file_format=True)
    return files[1]


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("cstore", "C-STORE status 0xA700"), ("stow", "FailureReason 0xC000")],
)
def test_rejected_store_is_dead_lettered_not_retried(
    orthanc: OrthancServer, tmp_path: Path, kind: str, reason: str
) -> None:
    dest: Destination = _cstore(orthanc) if kind == "cstore" else _stow(orthanc)
    files = _results(tmp_path)
    broken = _with_one_broken(files)
    box = Outbox(tmp_path / "box", {"pacs": dest}, max_attempts=5, clock=_clock)
    [delivery_id] = box.enqueue(files, job_ref="job-bad")
    assert box.run_once(now=T0) == 1
    [dead] = box.dead_letters()
    assert dead.id == delivery_id
    assert dead.attempts == 1
    assert reason in dead.last_error
    assert str(pydicom.dcmread(broken).SOPInstanceUID) in dead.last_error
    assert dead.n_stored == 2  # the good instances went through
    assert box.run_once(now=T0 + 1e6) == 0  # never attempted again by itself
    assert len(orthanc.instances()) == 2

    box.retry_dead_letter(delivery_id)  # an operator re-queues it: only the rest is re-sent
    assert box.run_once() == 1
    assert box.get(delivery_id).state is DeliveryState.DEAD
    assert len(orthanc.instances()) == 2


def test_unreachable_destination_dead_letters_after_max_attempts(tmp_path: Path) -> None:
    node = PacsNode("NOWHERE", "127.0.0.1", free_port())
    dest = CStoreDestination(node, client=DimseClient(connect_timeout_s=1))
    box = Outbox(
        tmp_path / "box", {"pacs": dest}, max_attempts=2, backoff_base_s=1.0, seed=0, clock=_clock
    )
    [delivery_id] = box.enqueue(_results(tmp_path), job_ref="job-x")
    assert box.run_once(now=T0) == 1
    assert box.run_once(now=T0 + 10) == 1
    [dead] = box.dead_letters()
    assert dead.id == delivery_id
    assert dead.last_error.startswith("gave up after 2 attempts")
    assert box.run_once(now=T0 + 1e6) == 0


@pytest.mark.parametrize("kind", ["cstore", "stow"])
def test_files_are_sent_unchanged(orthanc: OrthancServer, tmp_path: Path, kind: str) -> None:
    """The file is sent in its own transfer syntax as it is on disk (C-STORE: streamed;
    STOW-RS: the PS3.10 bytes): Orthanc keeps the same dataset, pixel data included."""
    files = _results(tmp_path, n=2)
    dest: Destination = _cstore(orthanc) if kind == "cstore" else _stow(orthanc)
    assert dest.send(files).ok
    for f in files:
        ours = pydicom.dcmread(f)
        [iid] = [
            i
            for i in orthanc.instances()
            if orthanc.get(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"]
            == ours.SOPInstanceUID
        ]
        stored = pydicom.dcmread(io.BytesIO(orthanc.get_bytes(f"/instances/{iid}/file")))
        assert stored.file_meta.TransferSyntaxUID == ours.file_meta.TransferSyntaxUID
        assert stored == ours


def test_cstore_re_encodes_for_a_peer_without_the_files_syntax(tmp_path: Path) -> None:
    """A peer that takes only Implicit VR Little Endian gets the decoded dataset, re-encoded."""
    received: list[pydicom.Dataset] = []

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    ae = AE(ae_title="IMPLICIT")
    ae.add_supported_context(CTImageStorage, ImplicitVRLittleEndian)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert server is not None
    try:
        files = _results(tmp_path, n=2)
        assert str(pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID) != ImplicitVRLittleEndian
        node = PacsNode("IMPLICIT", "127.0.0.1", port)
        result = CStoreDestination(node, client=DimseClient(connect_timeout_s=2)).send(files)
    finally:
        server.shutdown()
    assert result.ok
    assert sorted(str(ds.SOPInstanceUID) for ds in received) == _uids(files)
    for ds in received:
        assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        [src] = [f for f in files if pydicom.dcmread(f).SOPInstanceUID == ds.SOPInstanceUID]
        assert ds.PixelData == pydicom.dcmread(src).PixelData


@pytest.mark.parametrize("shim", [True, False])
def test_a_response_taken_by_the_reactor_reaches_the_sender(
    orthanc: OrthancServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shim: bool
) -> None:
    """pynetdicom's reactor can win a race for the C-STORE response of the request just sent
    (it then drops it as "unexpected" and the sender waits out the DIMSE timeout; seen in CI
    under load). The race is made certain here: the first response the DIMSE provider
    decodes goes to the reactor's handler instead of the queue. With our association shim
    the sender still gets its status at once; without it (pynetdicom alone) it gets none."""
    import ct_triage.dicom_bridge.dimse as dimse

    if not shim:
        monkeypatch.setattr(dimse, "keep_responses_for_waiting_sender", lambda assoc: None)
    [path] = _results(tmp_path, n=1)
    ts = str(pydicom.dcmread(path).file_meta.TransferSyntaxUID)
    client = DimseClient(connect_timeout_s=2, acse_timeout_s=5, dimse_timeout_s=3)
    node = PacsNode("ORTHANC", "127.0.0.1", orthanc.dicom_port)
    with client.associate(node, [(CTImageStorage, [ts])], purpose="C-STORE") as assoc:
        q = assoc.dimse.msg_queue
        put = q.put
        taken: list[Any] = []

        def reactor_takes_first(item: Any, block: bool = True, timeout: Any = None) -> None:
            cx, msg = item
            if not taken and not msg.is_valid_request:
                taken.append(msg)
                assoc._serve_request(msg, cx)  # what the reactor does with a message it took
                return
            put(item, block, timeout)

        monkeypatch.setattr(q, "put", reactor_takes_first)
        status = assoc.send_c_store(path)
    assert len(taken) == 1
    if shim:
        assert status.get("Status") == 0x0000
        assert _stored_sop_uids(orthanc) == _uids([path])
    else:
        assert status.get("Status") is None  # pynetdicom alone: the answer was lost
