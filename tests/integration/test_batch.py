"""Batch screening end to end against a real Orthanc PACS with the real model.

Twenty small phantom studies (60 slices, severities none to severe) are uploaded to Orthanc
once per module. One batch, by accession number, is pulled by C-GET, analysed by two
in-process workers and delivered back by C-STORE; the CSV and the worklist are checked
against the results. A worker process SIGKILLed mid-batch and restarted leaves every study
analysed and delivered exactly once (one SEG series per study in Orthanc).
"""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from orthanc import OrthancServer, free_port, orthanc_available

from ct_triage.dicom_bridge.synthetic import write_phantom_series
from ct_triage.models.lesions import LesionSegmenter, load_lesion_segmenter
from ct_triage.models.phantom import generate, spec_from_seed
from ct_triage.models.runtime.factory import RuntimeConfig
from ct_triage.server.batch import (
    CSV_COLUMNS,
    batch_csv,
    follow_batch,
    submit_batch,
)
from ct_triage.server.bridge import Bridge
from ct_triage.server.jobs.model import JobState
from ct_triage.server.jobs.store import SqlJobStore
from ct_triage.server.jobs.worker import run_workers
from ct_triage.server.settings import Settings
from ct_triage.server.wiring import options_from

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEVERITIES = ("none", "mild", "moderate", "severe")
N_STUDIES = 25
N_KILL = 5  # studies of the SIGKILL test; the other 20 form the in-process batch


def _write_study(args: tuple[int, str, Path]) -> tuple[str, str]:
    seed, severity, folder = args
    files = write_phantom_series(
        generate(spec_from_seed(seed, n_slices=60, severity=severity)), folder
    )
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    return str(ds.AccessionNumber), str(ds.StudyInstanceUID)


@pytest.fixture(scope="module")
def model() -> LesionSegmenter:
    return load_lesion_segmenter(RuntimeConfig(z_step_mm=0.0))


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OrthancServer, list[str]]]:
    """Orthanc holding N_STUDIES phantom studies; yields it with their accession numbers."""
    reason = orthanc_available()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("batch")
    jobs = [(500 + i, SEVERITIES[i % 4], root / f"study{i:02d}") for i in range(N_STUDIES)]
    with ProcessPoolExecutor(max_workers=2) as pool:
        ids = list(pool.map(_write_study, jobs))
    assert len({a for a, _ in ids}) == N_STUDIES
    # Orthanc answers C-FIND / C-GET only from the modalities it knows.
    server = OrthancServer(
        root=root / "orthanc", modalities={"triage": ("CT_TRIAGE", "127.0.0.1", free_port())}
    )
    server.start()
    try:
        for _seed, _sev, folder in jobs:
            server.upload(sorted(folder.glob("*.dcm")))
        yield server, [a for a, _ in ids]
    finally:
        server.stop()


def _settings(data: Path, orthanc: OrthancServer) -> Settings:
    return Settings(
        data_dir=data,
        ae_title="CT_TRIAGE",
        dicom_port=None,
        quiet_period_s=0.5,
        pacs=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
        retrieve_method="c-get",
        destinations=[f"dimse:ORTHANC@127.0.0.1:{orthanc.dicom_port}"],
        delivery_backoff_s=0.2,
    )


def _seg_series_per_study(orthanc: OrthancServer) -> Counter[str]:
    out: Counter[str] = Counter()
    for s in orthanc.series_by_modality("SEG"):
        study = orthanc.get(f"/studies/{s['ParentStudy']}")
        out[study["MainDicomTags"]["StudyInstanceUID"]] += 1
    return out


def _wait(pred: Any, timeout_s: float, step_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := pred():
            return value
        time.sleep(step_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


def test_batch_by_accession_end_to_end(
    pacs: tuple[OrthancServer, list[str]], model: LesionSegmenter, tmp_path: Path
) -> None:
    orthanc, accessions = pacs
    mine = accessions[N_KILL:]
    assert len(mine) >= 20  # the issue asks for a batch of at least 20 studies
    settings = _settings(tmp_path / "data", orthanc)
    store = SqlJobStore.sqlite(tmp_path / "jobs.db")
    stop = threading.Event()
    try:
        with Bridge(settings, model, options_from(settings)) as bridge:
            batch = submit_batch(
                store,
                name="return-to-work",
                created_by="test",
                accessions=mine,
                model_version=model.identity.version,
            )
            again = submit_batch(  # idempotent: the same jobs, no new work
                store,
                name="again",
                created_by="test",
                accessions=mine[:2],
                model_version=model.identity.version,
            )
            assert set(again.job_ids) <= set(batch.job_ids)
            workers = threading.Thread(
                target=run_workers, args=(store, bridge, stop), kwargs={"n_workers": 2}
            )
            workers.start()
            out = io.StringIO()
            t0 = time.monotonic()
            try:
                progress = follow_batch(store, batch.id, out=out, interval_s=1.0, timeout_s=600)
                _wait(lambda: not bridge.outbox.pending(), 60)
            finally:
                stop.set()
                workers.join()
            elapsed = time.monotonic() - t0
            print(f"\n{len(mine)} studies in {elapsed:.1f} s with 2 workers", file=sys.stderr)
            print(out.getvalue().splitlines()[-1], file=sys.stderr)
        assert progress.done == len(mine), out.getvalue()
        assert progress.rate_per_min is not None
        assert "ETA" in out.getvalue()
        assert not out.getvalue().count("\r")  # not a TTY: plain lines

        # CSV: header, one row per study matching each job's result and its DICOM.
        text = batch_csv(store, batch.id)
        rows = list(csv.DictReader(io.StringIO(text)))
        assert tuple(rows[0].keys()) == CSV_COLUMNS
        assert sorted(r["accession"] for r in rows) == sorted(mine)
        jobs = {j.accession: j for j in store.list_jobs(batch_id=batch.id)}
        for r in rows:
            job = jobs[r["accession"]]
            res = job.result
            assert r["state"] == "done"
            assert r["study_uid"] == res["study_uid"]
            assert r["series_uid"] == res["series_uid"]
            assert float(r["percent_involvement_total"]) == pytest.approx(
                res["percent_involvement"]["total"], abs=0.005
            )
            assert float(r["lesion_volume_ml_ggo"]) == pytest.approx(
                res["lesion_volume_ml"]["ggo"], abs=0.005
            )
            assert float(r["lung_volume_ml_left"]) == pytest.approx(
                res["lung_volume_ml"]["left"], abs=0.005
            )
            assert int(r["severity_score"]) == res["severity_score"]
            assert r["triage"] == res["triage"]
            assert int(r["priority"]) == res["priority"] == job.priority
            assert r["model_version"] == model.identity.version
            assert r["patient_id"].startswith("PHANTOM-")
            assert r["study_date"]
            assert "NOT FOR PRIMARY DIAGNOSIS" in r["disclaimer"]
            assert (Path(res["result_dir"]) / "report.json").is_file()
        # Finished: the rate is frozen at completion (it does not fall afterwards).
        rate = follow_batch(store, batch.id, out=io.StringIO()).rate_per_min
        time.sleep(1.1)
        assert follow_batch(store, batch.id, out=io.StringIO()).rate_per_min == rate
        # The worklist (= CSV order) is in triage priority order, then severity.
        keys = [(int(r["priority"]), -int(r["severity_score"])) for r in rows]
        assert keys == sorted(keys)
        assert len({r["triage"] for r in rows}) >= 2  # varied severities
        # Every study's results were delivered once.
        segs = _seg_series_per_study(orthanc)
        assert all(segs[res.result["study_uid"]] == 1 for res in jobs.values())
    finally:
        store.close()


def _worker_proc(env: dict[str, str], store_url: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ct_triage.server.cli",
            "worker",
            "--store",
            store_url,
            "--workers",
            "1",
            "--lease-s",
            "6",
            "--delivery-lease-s",
            "5",
        ],
        env=dict(os.environ, **env),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def test_sigkill_mid_batch_then_restart_analyses_and_delivers_once(
    pacs: tuple[OrthancServer, list[str]], model: LesionSegmenter, tmp_path: Path
) -> None:
    orthanc, accessions = pacs
    mine = accessions[:N_KILL]
    env = {
        "CT_TRIAGE_DATA_DIR": str(tmp_path / "data"),
        "CT_TRIAGE_AE_TITLE": "CT_TRIAGE",
        "CT_TRIAGE_DICOM_PORT": "0",
        "CT_TRIAGE_DICOM_HOST": "127.0.0.1",
        "CT_TRIAGE_PACS": f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
        "CT_TRIAGE_RETRIEVE_METHOD": "c-get",
        "CT_TRIAGE_DESTINATIONS": f'["dimse:ORTHANC@127.0.0.1:{orthanc.dicom_port}"]',
        "CT_TRIAGE_DELIVERY_BACKOFF_S": "0.2",
    }
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    store = SqlJobStore.sqlite(tmp_path / "jobs.db")
    log = tmp_path / "worker.log"
    try:
        batch = submit_batch(
            store,
            name="kill",
            created_by="test",
            accessions=mine,
            model_version=model.identity.version,
        )
        proc = _worker_proc(env, url, log)
        try:
            # Kill while a job runs, after at least one finished.
            _wait(
                lambda: (
                    store.batch_progress(batch.id).done >= 2
                    and store.batch_progress(batch.id).running == 1
                ),
                180,
                0.2,
            )
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        killed = store.batch_progress(batch.id)
        assert killed.running == 1
        assert killed.remaining > 0
        proc = _worker_proc(env, url, log)
        try:
            _wait(lambda: store.batch_progress(batch.id).remaining == 0, 180)
            jobs = store.list_jobs(batch_id=batch.id)
            uids = {j.result["study_uid"] for j in jobs}
            _wait(lambda: all(_seg_series_per_study(orthanc)[u] >= 1 for u in uids), 60)
            time.sleep(2.0)  # anything delivered twice would show up by now
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        assert all(j.state is JobState.DONE for j in jobs), [(j.state, j.error) for j in jobs]
        assert any(j.attempts == 2 for j in jobs)  # the killed job was taken up again
        segs = _seg_series_per_study(orthanc)
        assert {u: segs[u] for u in uids} == dict.fromkeys(uids, 1)
        # the restarted worker released the killed process's job at once, not at lease expiry
        assert "is gone; released in attempt" in log.read_text()
    finally:
        store.close()


def test_batch_beside_a_running_serve_goes_through_its_api(
    pacs: tuple[OrthancServer, list[str]], tmp_path: Path
) -> None:
    """``ct-triage batch`` next to ``ct-triage serve`` on the same data folder: the batch is
    sent to the server's API and analysed by its workers (it used to stop with "spool ... is
    in use by another process"). No destination: nothing is delivered, so the other tests'
    one-SEG-per-study counts hold."""
    orthanc, accessions = pacs
    mine = accessions[N_KILL : N_KILL + 2]
    http_port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CT_TRIAGE_")},
        "CT_TRIAGE_DATA_DIR": str(tmp_path / "data"),
        "CT_TRIAGE_DICOM_PORT": "0",
        "CT_TRIAGE_DICOM_HOST": "127.0.0.1",
        "CT_TRIAGE_HTTP_HOST": "127.0.0.1",
        "CT_TRIAGE_HTTP_PORT": str(http_port),
        "CT_TRIAGE_PACS": f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
        "CT_TRIAGE_RETRIEVE_METHOD": "c-get",
        "CT_TRIAGE_QUIET_PERIOD_S": "0.5",
    }
    cli = [sys.executable, "-m", "ct_triage.server.cli"]

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cli, *args],
            cwd=tmp_path,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    made = run("token", "create", "--role", "operator", "--name", "batch desk")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    listing = tmp_path / "accessions.txt"
    listing.write_text("\n".join(mine) + "\n")
    log = tmp_path / "serve.log"
    serve = subprocess.Popen(
        [*cli, "serve"], cwd=tmp_path, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )
    try:

        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{http_port}/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        _wait(up, 180)
        no_token = run("batch", "--accessions", str(listing))
        assert no_token.returncode == 1
        assert "--server URL" in no_token.stderr
        assert "Traceback" not in no_token.stderr
        out = tmp_path / "batch.csv"
        done = run(
            "batch", "--accessions", str(listing), "--csv", str(out), CT_TRIAGE_API_TOKEN=token
        )
        assert done.returncode == 0, done.stderr + log.read_text()
        assert f"analysed by the server at http://127.0.0.1:{http_port}" in done.stderr
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert sorted(r["accession"] for r in rows) == sorted(mine)
    assert all(r["state"] == "done" for r in rows), rows
    assert all(r["patient_id"].startswith("PHANTOM-") for r in rows)
