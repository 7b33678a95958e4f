"""The DICOM bridge end to end against a real Orthanc PACS.

Push: Orthanc C-STOREs a phantom study to our SCP → the series completes → analysis → SEG,
SR and overlay delivered back to Orthanc (C-STORE or STOW-RS), read back and checked.
Pull: a study in Orthanc is found (C-FIND / QIDO-RS) and retrieved by C-MOVE, C-GET or
WADO-RS. Faults: Orthanc down during delivery; our process SIGKILLed after acknowledging.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from orthanc import OrthancServer, free_port, orthanc_available
from pydicom.uid import CTImageStorage
from pynetdicom import AE

from ct_triage.dicom_bridge.synthetic import write_phantom_series
from ct_triage.models.errors import StudyDeclined
from ct_triage.models.lesions import LesionSegmenter, load_lesion_segmenter
from ct_triage.models.phantom import generate, spec_from_seed
from ct_triage.models.runtime.factory import RuntimeConfig
from ct_triage.server.bridge import Bridge
from ct_triage.server.jobs.model import Job, JobKind, JobState
from ct_triage.server.jobs.worker import BridgeJobRunner
from ct_triage.server.settings import Settings
from ct_triage.server.wiring import options_from

pytestmark = pytest.mark.integration

OUR_AET = "CT_TRIAGE"


def wait_until(pred: Callable[[], Any], timeout_s: float = 90.0, step_s: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A 60-slice synthetic chest CT with mild disease (DICOM files)."""
    folder = tmp_path_factory.mktemp("study")
    ph = generate(spec_from_seed(21, n_slices=60, severity="mild"))
    return write_phantom_series(ph, folder)


@pytest.fixture(scope="module")
def model() -> LesionSegmenter:
    return load_lesion_segmenter(RuntimeConfig(z_step_mm=0.0))


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[tuple[OrthancServer, int]]:
    """Orthanc that knows our SCP (for push and C-MOVE) on a free port."""
    reason = orthanc_available()
    if reason:
        pytest.skip(reason)
    our_port = free_port()
    server = OrthancServer(
        root=tmp_path / "orthanc", modalities={"triage": (OUR_AET, "127.0.0.1", our_port)}
    )
    server.start()
    try:
        yield server, our_port
    finally:
        server.stop()


def _settings(tmp_path: Path, orthanc: OrthancServer, our_port: int, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "ae_title": OUR_AET,
        "dicom_host": "127.0.0.1",
        "dicom_port": our_port,
        "quiet_period_s": 0.5,
        "min_slices": 40,
        "pacs": f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
        "destinations": [f"dimse:ORTHANC@127.0.0.1:{orthanc.dicom_port}"],
        "delivery_backoff_s": 0.2,
    }
    base.update(kw)
    return Settings(**base)


def _study_id(orthanc: OrthancServer) -> str:
    studies = orthanc.get("/studies")
    assert len(studies) == 1
    return str(studies[0])


#: Result kinds that share a modality, told apart by Series Description: the overlay and
#: the summary page (OT), the measurement SR and the lesion outline SR (SR).
_KINDS = {
    "OT": ("OT", "AI lung overlay"),
    "SUMMARY": ("OT", "AI lung summary"),
    "SR": ("SR", "AI lung measurements"),
    "OUTLINES": ("SR", "AI lesion outlines"),
}


def _series_of(orthanc: OrthancServer, kind: str) -> list[dict[str, Any]]:
    """Series of one result kind: SEG, SR, OUTLINES, OT (the overlay) or SUMMARY."""
    if kind not in _KINDS:
        return orthanc.series_by_modality(kind)
    modality, description = _KINDS[kind]
    return [
        s
        for s in orthanc.series_by_modality(modality)
        if str(s["MainDicomTags"].get("SeriesDescription", "")).startswith(description)
    ]


def _results_in_orthanc(orthanc: OrthancServer) -> dict[str, pydicom.Dataset]:
    """First instance of each result kind (SEG, SR, OT overlay, SUMMARY, OUTLINES) in Orthanc."""
    found: dict[str, pydicom.Dataset] = {}
    for modality in ("SEG", "SR", "OT", "SUMMARY", "OUTLINES"):
        series = _series_of(orthanc, modality)
        if len(series) != 1:
            continue
        iid = series[0]["Instances"][0]
        r = httpx.get(f"{orthanc.url}/instances/{iid}/file", auth=orthanc.auth, timeout=30)
        r.raise_for_status()
        found[modality] = pydicom.dcmread(io.BytesIO(r.content))
    return found


def _check_results(orthanc: OrthancServer, source: pydicom.Dataset) -> None:
    res = wait_until(lambda: (r := _results_in_orthanc(orthanc)) and len(r) == 5 and r, 30)
    seg, sr, sc = res["SEG"], res["SR"], res["OT"]
    for ds in (seg, sr, sc, res["SUMMARY"], res["OUTLINES"]):
        assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert source.SeriesInstanceUID in {s.SeriesInstanceUID for s in evidence}
    assert sc.SourceImageSequence[0].ReferencedSOPClassUID == CTImageStorage
    # The overlay's own series is the one listed as the derived series of the SR/SEG study.
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID


def _drain(bridge: Bridge, timeout_s: float = 60.0) -> None:
    def done() -> bool:
        bridge.deliver(now=time.time() + 3600)
        return not bridge.outbox.pending()

    wait_until(done, timeout_s, 0.2)


def test_push_analyse_and_deliver_by_c_store(
    pacs: tuple[OrthancServer, int], study: list[Path], model: LesionSegmenter, tmp_path: Path
) -> None:
    orthanc, our_port = pacs
    orthanc.upload(study)
    settings = _settings(tmp_path, orthanc, our_port)
    with Bridge(settings, model, options_from(settings)) as bridge:
        r = httpx.post(
            f"{orthanc.url}/modalities/triage/store",
            json={"Resources": [_study_id(orthanc)], "Synchronous": True},
            auth=orthanc.auth,
            timeout=120,
        )
        r.raise_for_status()
        assert bridge.process_due() == []  # inside the quiet period: nothing yet
        outcomes = wait_until(bridge.process_due, 60)
        assert [o.status for o in outcomes] == ["analysed"]
        _drain(bridge)
        source = pydicom.dcmread(study[0], stop_before_pixels=True)
        _check_results(orthanc, source)
        # No loop: Orthanc pushing our own results back to us is acknowledged, not analysed.
        seg_series = orthanc.series_by_modality("SEG")[0]["ID"]
        httpx.post(
            f"{orthanc.url}/modalities/triage/store",
            json={"Resources": [seg_series], "Synchronous": True},
            auth=orthanc.auth,
            timeout=60,
        ).raise_for_status()
        time.sleep(1.0)
        assert bridge.process_due() == []
        # retention: a week after their arrival the received images go, the results stay
        results = list(bridge.results_dir.rglob("*.dcm"))
        assert bridge.purge_spool(now=time.time() + 6 * 86400).series == 0
        purged = bridge.purge_spool(now=time.time() + 8 * 86400)
        assert (purged.series, purged.instances) == (1, len(study))
        assert not list(bridge.spool.instances_dir.rglob("*.dcm"))
        assert results
        assert all(p.exists() for p in results)


def test_spool_retention_zero_keeps_everything(
    study: list[Path], model: LesionSegmenter, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data", dicom_port=None, spool_retention_days=0)
    with Bridge(settings, model, options_from(settings)) as bridge:
        for p in study:
            bridge.spool.store(p.read_bytes(), now=1000.0)
        series_uid = str(pydicom.dcmread(study[0], stop_before_pixels=True).SeriesInstanceUID)
        ready = bridge.spool.claim(series_uid, now=2000.0)
        bridge.spool.mark_done(series_uid, ready.generation, "result")
        assert bridge.purge_spool(now=time.time() + 1e9).series == 0
        assert len(bridge.spool.instance_uids(series_uid)) == len(study)


def test_pull_by_c_move_and_deliver_by_stow(
    pacs: tuple[OrthancServer, int], study: list[Path], model: LesionSegmenter, tmp_path: Path
) -> None:
    orthanc, our_port = pacs
    orthanc.upload(study)
    source = pydicom.dcmread(study[0], stop_before_pixels=True)
    settings = _settings(
        tmp_path,
        orthanc,
        our_port,
        retrieve_method="c-move",
        destinations=[f"stow:{orthanc.dicomweb_url}"],
        pacs_dicomweb_user=orthanc.username,
        pacs_dicomweb_password=orthanc.password,
    )
    with Bridge(settings, model, options_from(settings)) as bridge:
        assert bridge.pull(study_uid=source.StudyInstanceUID) == [source.StudyInstanceUID]
        outcomes = bridge.process_due(now=time.time() + 10)
        assert [o.status for o in outcomes] == ["analysed"]
        _drain(bridge)
    _check_results(orthanc, source)


def test_pull_by_accession_with_c_get(
    pacs: tuple[OrthancServer, int], study: list[Path], model: LesionSegmenter, tmp_path: Path
) -> None:
    orthanc, our_port = pacs
    orthanc.upload(study)
    source = pydicom.dcmread(study[0], stop_before_pixels=True)
    settings = _settings(tmp_path, orthanc, our_port, retrieve_method="c-get", dicom_port=None)
    with Bridge(settings, model, options_from(settings)) as bridge:
        assert bridge.pull(accession=source.AccessionNumber) == [source.StudyInstanceUID]
        assert len(bridge.spool.instance_uids(source.SeriesInstanceUID)) == len(study)
        outcomes = bridge.process_due(now=time.time() + 10)
        assert [o.status for o in outcomes] == ["analysed"]
        _drain(bridge)
    _check_results(orthanc, source)


def test_pull_by_wado_rs_and_poller_watermark(
    pacs: tuple[OrthancServer, int], study: list[Path], model: LesionSegmenter, tmp_path: Path
) -> None:
    orthanc, our_port = pacs
    orthanc.upload(study)
    source = pydicom.dcmread(study[0], stop_before_pixels=True)
    settings = _settings(
        tmp_path,
        orthanc,
        our_port,
        retrieve_method="wado",
        pacs=None,
        dicom_port=None,
        pacs_dicomweb_url=orthanc.dicomweb_url,
        pacs_dicomweb_user=orthanc.username,
        pacs_dicomweb_password=orthanc.password,
        destinations=[f"stow:{orthanc.dicomweb_url}"],
    )
    with Bridge(settings, model, options_from(settings)) as bridge:
        # The phantom's StudyDate is fixed; the poller looks back far enough to see it.
        day = pydicom.valuerep.DA(source.StudyDate)
        assert bridge.poll_once(today=day) == [source.StudyInstanceUID]
        assert bridge.poll_once(today=day) == []  # seen: not retrieved twice
        assert len(bridge.spool.instance_uids(source.SeriesInstanceUID)) == len(study)
        outcomes = bridge.process_due(now=time.time() + 10)
        assert [o.status for o in outcomes] == ["analysed"]
        _drain(bridge)
    _check_results(orthanc, source)


def test_orthanc_down_during_delivery_is_retried(
    pacs: tuple[OrthancServer, int], study: list[Path], model: LesionSegmenter, tmp_path: Path
) -> None:
    orthanc, our_port = pacs
    settings = _settings(tmp_path, orthanc, our_port, dicom_port=None)
    with Bridge(settings, model, options_from(settings)) as bridge:
        for f in study:
            bridge.spool.store(f.read_bytes(), calling_ae="MODALITY")
        orthanc.stop()
        outcomes = bridge.process_due(now=time.time() + 10)
        assert [o.status for o in outcomes] == ["analysed"]
        bridge.deliver()
        pending = bridge.outbox.pending()
        assert pending
        assert all(d.attempts == 1 and d.last_error for d in pending)
        orthanc.start()
        _drain(bridge)
        assert not bridge.outbox.dead_letters()
    source = pydicom.dcmread(study[0], stop_before_pixels=True)
    _check_results(orthanc, source)


def _storescu(port: int, files: list[Path]) -> None:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, pydicom.uid.ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=OUR_AET)
    assert assoc.is_established
    try:
        for f in files:
            status = assoc.send_c_store(pydicom.dcmread(f))
            assert status.Status == 0x0000
    finally:
        assoc.release()


def _serve(settings_env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, **settings_env)
    return subprocess.Popen(
        [sys.executable, "-m", "ct_triage.server.cli", "serve"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def test_sigkill_after_acknowledging_then_restart_analyses(
    pacs: tuple[OrthancServer, int], study: list[Path], tmp_path: Path
) -> None:
    orthanc, our_port = pacs
    env = {
        "CT_TRIAGE_DATA_DIR": str(tmp_path / "data"),
        "CT_TRIAGE_AE_TITLE": OUR_AET,
        "CT_TRIAGE_DICOM_HOST": "127.0.0.1",
        "CT_TRIAGE_DICOM_PORT": str(our_port),
        "CT_TRIAGE_HTTP_PORT": "0",
        "CT_TRIAGE_QUIET_PERIOD_S": "30",  # long: the process dies before the series completes
        "CT_TRIAGE_DESTINATIONS": f'["dimse:ORTHANC@127.0.0.1:{orthanc.dicom_port}"]',
    }
    log = tmp_path / "serve.log"
    proc = _serve(env, log)
    try:
        wait_until(lambda: "DICOM listener" in log.read_text(), 60)
        _storescu(our_port, study)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not orthanc.series_by_modality("SEG")
    # Restart with a short quiet period: everything acknowledged is analysed and delivered.
    proc = _serve(dict(env, CT_TRIAGE_QUIET_PERIOD_S="0.5"), log)
    try:
        source = pydicom.dcmread(study[0], stop_before_pixels=True)
        wait_until(lambda: len(_results_in_orthanc(orthanc)) == 5, 120, 1.0)
        _check_results(orthanc, source)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert "analysed: triage" in log.read_text()


def _variant(src: list[Path], out: Path, **changes: Any) -> list[Path]:
    """Copy a series as a new series with changed attributes (new UIDs)."""
    out.mkdir(parents=True)
    series_uid = pydicom.uid.generate_uid()
    step = int(changes.pop("every", 1))
    paths = []
    for i, f in enumerate(sorted(src)[::step]):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        for k, v in changes.items():
            setattr(ds, k, v)
        p = out / f"{i:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def test_selection_prefers_thin_lung_kernel_series_and_records_why(
    pacs: tuple[OrthancServer, int], tmp_path: Path, model: LesionSegmenter
) -> None:
    orthanc, our_port = pacs
    ph = generate(spec_from_seed(22, n_slices=60, severity="mild", slice_spacing_mm=1.0))
    lung = write_phantom_series(ph, tmp_path / "lung")
    soft = _variant(
        lung,
        tmp_path / "soft",
        every=5,
        SliceThickness=5.0,
        ConvolutionKernel="STANDARD",
        SeriesDescription="Chest 5mm soft tissue",
        SeriesNumber=3,
    )
    scout = _variant(
        lung[:1],
        tmp_path / "scout",
        ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
        SeriesDescription="Scout",
        SeriesNumber=1,
    )
    settings = _settings(tmp_path, orthanc, our_port, min_slices=10)
    with Bridge(settings, model, options_from(settings)) as bridge:
        _storescu(our_port, scout + soft + lung)
        outcomes = wait_until(bridge.process_due, 60)
        assert len(outcomes) == 1
        (o,) = outcomes
        lung_uid = pydicom.dcmread(lung[0], stop_before_pixels=True).SeriesInstanceUID
        assert o.status == "analysed"
        assert o.series_uid == lung_uid
        assert o.result_dir is not None
        report = json.loads((o.result_dir / "report.json").read_text())
        verdicts = {v["series"]: v for v in report["series_selection"]}
        assert len(verdicts) == 3
        taken = [v for v in verdicts.values() if v["taken"]]
        assert len(taken) == 1
        assert "lung kernel" in taken[0]["reason"]
        assert any("localizer" in v["reason"] for v in verdicts.values())


def test_late_instance_reruns_the_series_and_supersedes_the_result(
    pacs: tuple[OrthancServer, int], study: list[Path], model: LesionSegmenter, tmp_path: Path
) -> None:
    orthanc, our_port = pacs
    settings = _settings(tmp_path, orthanc, our_port, dicom_port=None, destinations=[])
    ordered = sorted(study)
    with Bridge(settings, model, options_from(settings)) as bridge:
        for f in ordered[:-1]:
            bridge.spool.store(f.read_bytes(), calling_ae="MODALITY")
        (first,) = bridge.process_due(now=time.time() + 10)
        assert first.status == "analysed"
        assert first.result_dir is not None
        old = json.loads((first.result_dir / "report.json").read_text())
        assert old["supersedes"] is None
        assert old["volume"]["shape_zyx"][0] == len(study) - 1
        # The last slice arrives late: the series is analysed again, the result supersedes.
        bridge.spool.store(ordered[-1].read_bytes(), calling_ae="MODALITY")
        (second,) = bridge.process_due(now=time.time() + 10)
        assert second.status == "analysed"
        assert second.result_dir is not None
        assert second.result_dir != first.result_dir
        new = json.loads((second.result_dir / "report.json").read_text())
        assert new["volume"]["shape_zyx"][0] == len(study)
        assert (
            new["supersedes"]["seg_sop_instance_uid"] == old["outputs"]["seg"]["sop_instance_uid"]
        )
        assert new["supersedes"]["sr_sop_instance_uid"] == old["outputs"]["sr"]["sop_instance_uid"]
        assert (
            new["outputs"]["seg"]["sop_instance_uid"] != old["outputs"]["seg"]["sop_instance_uid"]
        )
        sr = pydicom.dcmread(second.result_dir / "sr.dcm")
        predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
        assert (
            predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            == old["outputs"]["sr"]["sop_instance_uid"]
        )
        assert bridge.process_due(now=time.time() + 10) == []


def _scu_send(port: int, paths: list[Path], *, abort: bool = False) -> None:
    """C-STORE ``paths`` to our SCP in one association, then release (or abort) it."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title=OUR_AET)
    assert assoc.is_established
    try:
        assert all(int(assoc.send_c_store(p).Status) == 0 for p in paths)
    finally:
        assoc.abort() if abort else assoc.release()


def _result_series(orthanc: OrthancServer) -> dict[str, list[dict[str, Any]]]:
    return {m: _series_of(orthanc, m) for m in ("SEG", "SR", "OT", "SUMMARY", "OUTLINES")}


def _one_result_each(orthanc: OrthancServer) -> dict[str, list[dict[str, Any]]]:
    found = _result_series(orthanc)
    assert {m: len(s) for m, s in found.items()} == dict.fromkeys(found, 1)
    return found


def test_aborted_send_is_held_and_the_resend_is_analysed_once(
    pacs: tuple[OrthancServer, int], study: list[Path], model: LesionSegmenter, tmp_path: Path
) -> None:
    """Issue 16: an association aborted part-way is not analysed as a partial series."""
    orthanc, our_port = pacs
    settings = _settings(tmp_path, orthanc, our_port, completion_settle_s=0.3)
    ordered = sorted(study)
    with Bridge(settings, model, options_from(settings)) as bridge:
        _scu_send(our_port, ordered[:45], abort=True)
        time.sleep(1.0)  # quiet period (0.5 s) over, the abort recorded
        assert bridge.process_due(now=time.time() + 30) == []  # held, not analysed
        _scu_send(our_port, ordered)  # the sender's full re-send: 45 duplicates + 15 new
        (outcome,) = wait_until(bridge.process_due, 60)
        assert outcome.status == "analysed"
        assert outcome.result_dir is not None
        report = json.loads((outcome.result_dir / "report.json").read_text())
        assert report["volume"]["shape_zyx"][0] == len(study)
        _drain(bridge)
        _one_result_each(orthanc)
        assert bridge.process_due(now=time.time() + 600) == []


def test_superseded_result_is_retracted_from_orthanc(
    pacs: tuple[OrthancServer, int], study: list[Path], model: LesionSegmenter, tmp_path: Path
) -> None:
    """Issue 16: the partial result of an aborted send (analysed after the hold) is replaced
    in the PACS by the full re-send's result: one SEG, one SR, one overlay series in the end."""
    orthanc, our_port = pacs
    settings = _settings(
        tmp_path,
        orthanc,
        our_port,
        completion_settle_s=0.3,
        aborted_series_wait_s=1.0,
        retract_superseded=[f"orthanc:{orthanc.url}"],
        pacs_dicomweb_user=orthanc.username,
        pacs_dicomweb_password=orthanc.password,
    )
    ordered = sorted(study)
    with Bridge(settings, model, options_from(settings)) as bridge:
        _scu_send(our_port, ordered[:45], abort=True)
        (partial,) = wait_until(bridge.process_due, 60)
        assert partial.status == "analysed"
        _drain(bridge)
        old = _one_result_each(orthanc)

        _scu_send(our_port, ordered)
        (full,) = wait_until(bridge.process_due, 60)
        assert full.status == "analysed"
        assert full.result_dir is not None
        report = json.loads((full.result_dir / "report.json").read_text())
        assert report["volume"]["shape_zyx"][0] == len(study)
        _drain(bridge)
        new = wait_until(
            lambda: (r := _result_series(orthanc)) and all(len(s) == 1 for s in r.values()) and r,
            30,
        )
        for modality in ("SEG", "SR", "OT"):
            assert new[modality][0]["ID"] != old[modality][0]["ID"]
        sr_uid = report["outputs"]["sr"]["series_instance_uid"]
        assert new["SR"][0]["MainDicomTags"]["SeriesInstanceUID"] == sr_uid


def test_declined_study_gets_one_not_analysed_sr_and_page_in_orthanc(
    pacs: tuple[OrthancServer, int], study: list[Path], model: LesionSegmenter, tmp_path: Path
) -> None:
    """A study with no usable chest CT (here only a localizer series) ends with one "not
    analysed" SR and one summary page in the PACS, in its own study, delivered exactly once."""
    orthanc, our_port = pacs
    mr = _variant(
        study,
        tmp_path / "scout",
        ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
        SeriesDescription="Scout",
    )
    source = pydicom.dcmread(mr[0], stop_before_pixels=True)
    settings = _settings(tmp_path, orthanc, our_port)
    with Bridge(settings, model, options_from(settings)) as bridge:
        _storescu(our_port, mr)
        outcomes = wait_until(bridge.process_due, 60)
        assert [o.status for o in outcomes] == ["declined"]
        _drain(bridge)
        # asking again for the same decision writes and sends nothing new
        tag = f"{source.SeriesInstanceUID}.g1"
        bridge.report_not_analysed(source.StudyInstanceUID, outcomes[0].detail, tag=tag)
        _drain(bridge)
        srs = wait_until(lambda: orthanc.series_by_modality("SR"), 30)
        pages = [
            s
            for s in orthanc.series_by_modality("OT")
            if "not analysed" in str(s["MainDicomTags"].get("SeriesDescription", ""))
        ]
        assert len(srs) == 1
        assert len(srs[0]["Instances"]) == 1
        assert len(pages) == 1
        assert len(pages[0]["Instances"]) == 1
        r = httpx.get(
            f"{orthanc.url}/instances/{srs[0]['Instances'][0]}/file", auth=orthanc.auth, timeout=30
        )
        r.raise_for_status()
        sr = pydicom.dcmread(io.BytesIO(r.content))
        assert sr.StudyInstanceUID == source.StudyInstanceUID
        assert sr.PatientID == source.PatientID
        texts = [str(v.value) for v in sr.iterall() if v.keyword == "TextValue"]
        assert any(t.startswith("Not analysed: ") and "localizer" in t for t in texts), texts
        assert not orthanc.series_by_modality("SEG")


def test_declined_upload_gets_a_not_analysed_sr_in_orthanc(
    pacs: tuple[OrthancServer, int], study: list[Path], model: LesionSegmenter, tmp_path: Path
) -> None:
    """An uploaded study that is declined is reported to the PACS like a pushed one: the
    upload job fails with the one-line reason, and one "not analysed" SR lands in its study."""
    orthanc, our_port = pacs
    scout = _variant(
        study,
        tmp_path / "upload" / "files",
        ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
        SeriesDescription="Scout",
    )
    source = pydicom.dcmread(scout[0], stop_before_pixels=True)
    settings = _settings(tmp_path, orthanc, our_port)
    job = Job(
        id="j1",
        key="upload:test-declined",
        kind=JobKind.UPLOAD,
        state=JobState.RUNNING,
        payload={"path": str(tmp_path / "upload" / "files")},
    )
    with Bridge(settings, model, options_from(settings)) as bridge:
        with pytest.raises(StudyDeclined, match="localizer"):
            BridgeJobRunner(bridge)(job)
        _drain(bridge)
        (sr_series,) = wait_until(lambda: orthanc.series_by_modality("SR"), 30)
        r = httpx.get(
            f"{orthanc.url}/instances/{sr_series['Instances'][0]}/file",
            auth=orthanc.auth,
            timeout=30,
        )
        r.raise_for_status()
        sr = pydicom.dcmread(io.BytesIO(r.content))
        assert sr.StudyInstanceUID == source.StudyInstanceUID
        texts = [str(v.value) for v in sr.iterall() if v.keyword == "TextValue"]
        assert any(t.startswith("Not analysed: ") and "localizer" in t for t in texts), texts
        assert not orthanc.series_by_modality("SEG")


def test_retractors_against_orthanc(pacs: tuple[OrthancServer, int], study: list[Path]) -> None:
    """Orthanc's REST API deletes a series (twice is fine); its DICOMweb has no DELETE, which
    is a refusal (not retried), not a silent success."""
    from ct_triage.dicom_bridge.dicomweb import BasicAuth, DicomWebError, DicomWebNode
    from ct_triage.dicom_bridge.retract import DicomWebRetractor, OrthancRetractor

    orthanc, _ = pacs
    orthanc.upload(study[:3])
    head = pydicom.dcmread(study[0], stop_before_pixels=True)
    study_uid, series_uid = str(head.StudyInstanceUID), str(head.SeriesInstanceUID)
    auth = BasicAuth(orthanc.username, orthanc.password)
    with pytest.raises(DicomWebError) as refused:
        DicomWebRetractor(DicomWebNode(orthanc.dicomweb_url, auth=auth)).retract_series(
            study_uid, [series_uid]
        )
    assert (refused.value.http_status, refused.value.transient) == (405, False)
    assert len(orthanc.get("/series")) == 1
    rest = OrthancRetractor(DicomWebNode(orthanc.url, auth=auth))
    assert rest.retract_series(study_uid, [series_uid]) == 1
    assert orthanc.get("/series") == []
    assert rest.retract_series(study_uid, [series_uid]) == 0  # already gone: idempotent


def test_declined_pulled_study_gets_its_not_analysed_objects_once(
    pacs: tuple[OrthancServer, int], study: list[Path], model: LesionSegmenter, tmp_path: Path
) -> None:
    """The pull path of ``serve`` (a PULL job: retrieve, then analyse the study folder): a
    study with only a localizer series is declined, and its "not analysed" SR and page land
    in Orthanc once, however often the job is retried."""
    orthanc, our_port = pacs
    scout = _variant(
        study,
        tmp_path / "scout",
        ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
        SeriesDescription="Scout",
    )
    orthanc.upload(scout)
    source = pydicom.dcmread(scout[0], stop_before_pixels=True)
    uid = str(source.StudyInstanceUID)
    settings = _settings(tmp_path, orthanc, our_port, retrieve_method="c-get", dicom_port=None)
    with Bridge(settings, model, options_from(settings)) as bridge:
        assert bridge.retrieve_study(uid) == len(scout)
        out = bridge.job_result_dir("pull:" + uid)
        for _ in range(2):  # a retried job decides again: nothing new is sent
            with pytest.raises(StudyDeclined, match="localizer"):
                bridge.analyse_study_folder(uid, out)
            _drain(bridge)
        wait_until(lambda: orthanc.series_by_modality("SR"), 30)
        time.sleep(1.0)  # a second copy would arrive now
        srs = orthanc.series_by_modality("SR")
        pages = orthanc.series_by_modality("OT")
        assert [len(s["Instances"]) for s in srs] == [1]
        assert [len(s["Instances"]) for s in pages] == [1]
        assert "not analysed" in pages[0]["MainDicomTags"]["SeriesDescription"]
        assert not orthanc.series_by_modality("SEG")
