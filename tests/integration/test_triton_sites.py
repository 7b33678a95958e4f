"""Hospital sites sharing one Triton pool, and a site whose pool goes down.

Each site is what a hospital runs: its own ``ct-triage serve`` process (DICOM listener, job
store, data folder) and its own Orthanc that receives the results. All sites send inference to
one real ``tritonserver`` through a recording loopback proxy, which keeps every byte they send:
the study identifiers (names, IDs, UIDs, dates, accession) must not be in it. Small phantom
studies (40 slices) keep this within two cores.
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
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pydicom
import pytest
from orthanc import OrthancServer, free_port, orthanc_available
from pydicom.uid import CTImageStorage
from pynetdicom import AE
from triton_server import (
    RecordingProxy,
    TritonServer,
    leaked,
    require_triton,
    study_identifiers,
    triton_server,
)

from ct_triage.dicom_bridge.synthetic import write_phantom_series
from ct_triage.models.phantom import generate, spec_from_seed

pytestmark = pytest.mark.integration


def wait_until(pred: Callable[[], Any], timeout_s: float, step_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step_s)
    raise AssertionError(f"condition not met within {timeout_s} s")


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[TritonServer]:
    require_triton()
    reason = orthanc_available()
    if reason:
        pytest.skip(reason)
    with triton_server(tmp_path / "pool") as running:
        yield running


def _study(folder: Path, seed: int) -> list[Path]:
    return write_phantom_series(generate(spec_from_seed(seed, n_slices=40)), folder)


@dataclass
class Site:
    """One hospital: its Orthanc, its ``ct-triage serve`` and its data folder."""

    name: str
    root: Path
    orthanc: OrthancServer
    dicom_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.root / "serve.log"

    def start(self, triton_url: str, **env: str) -> None:
        values = {
            "CT_TRIAGE_DATA_DIR": str(self.root / "data"),
            "CT_TRIAGE_AE_TITLE": "CT_TRIAGE",
            "CT_TRIAGE_DICOM_HOST": "127.0.0.1",
            "CT_TRIAGE_DICOM_PORT": str(self.dicom_port),
            "CT_TRIAGE_HTTP_PORT": "0",
            "CT_TRIAGE_QUIET_PERIOD_S": "0.5",
            "CT_TRIAGE_DESTINATIONS": f'["dimse:ORTHANC@127.0.0.1:{self.orthanc.dicom_port}"]',
            "CT_TRIAGE_DELIVERY_BACKOFF_S": "0.2",
            "CT_TRIAGE_RUNTIME": "triton",
            "CT_TRIAGE_TRITON_URL": triton_url,
            "CT_TRIAGE_SITE_ID": self.name,
            "CT_TRIAGE_INFERENCE_THREADS": "1",
            "CT_TRIAGE_WORKERS": "1",
        }
        values.update(env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ct_triage.server.cli", "serve"],
            env=dict(os.environ, **values),
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: "DICOM listener" in self.log.read_text(errors="replace"), 90)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    def store(self, files: list[Path]) -> None:
        """C-STORE the study to the site's listener: every instance acknowledged (success)."""
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, pydicom.uid.ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", self.dicom_port, ae_title="CT_TRIAGE")
        assert assoc.is_established
        try:
            for f in files:
                status = assoc.send_c_store(pydicom.dcmread(f))
                assert status.Status == 0x0000
        finally:
            assoc.release()

    def results(self) -> dict[str, list[pydicom.Dataset]]:
        """The result instances (SEG, SR) in this site's Orthanc, by modality."""
        found: dict[str, list[pydicom.Dataset]] = {}
        for modality in ("SEG", "SR"):
            for series in self.orthanc.series_by_modality(modality):
                for iid in series["Instances"]:
                    data = self.orthanc.get_bytes(f"/instances/{iid}/file")
                    ds = pydicom.dcmread(io.BytesIO(data))
                    found.setdefault(modality, []).append(ds)
        return found

    def reports(self) -> list[dict[str, Any]]:
        return [
            json.loads(p.read_text())
            for p in sorted((self.root / "data" / "results").rglob("report.json"))
        ]


@pytest.fixture
def make_site(tmp_path: Path) -> Iterator[Callable[[str], Site]]:
    sites: list[Site] = []

    def make(name: str) -> Site:
        orthanc = OrthancServer(root=tmp_path / name / "orthanc")
        orthanc.start()
        site = Site(name, tmp_path / name, orthanc, free_port())
        site.root.mkdir(parents=True, exist_ok=True)
        sites.append(site)
        return site

    try:
        yield make
    finally:
        for site in sites:
            site.stop()
            site.orthanc.stop()


def _uids(site: Site, modality: str) -> set[str]:
    return {str(ds.SOPInstanceUID) for ds in site.results().get(modality, [])}


def _has(site: Site, modality: str, uid: str) -> bool:
    return uid in _uids(site, modality)


def _analysed_once(site: Site, studies: list[list[Path]], timeout_s: float) -> None:
    """Each study analysed exactly once: one report, and its SEG and SR (no other SEG) in
    the site's own Orthanc."""
    want = sorted(
        str(pydicom.dcmread(s[0], stop_before_pixels=True).StudyInstanceUID) for s in studies
    )

    def complete() -> bool:
        r = site.results()
        return len(r.get("SEG", [])) >= len(want) and len(site.reports()) >= len(want)

    wait_until(complete, timeout_s)
    time.sleep(2)  # a duplicate analysis or delivery would arrive now
    reports = site.reports()
    assert sorted(r["study_instance_uid"] for r in reports) == want, site.name
    results = site.results()
    assert sorted(ds.StudyInstanceUID for ds in results["SEG"]) == want, site.name
    segs = {str(ds.SOPInstanceUID) for ds in results["SEG"]}
    srs = {str(ds.SOPInstanceUID) for ds in results.get("SR", [])}
    for report in reports:
        assert report["outputs"]["seg"]["sop_instance_uid"] in segs
        sr_uid: str = report["outputs"]["sr"]["sop_instance_uid"]
        if sr_uid not in srs:  # delivered a moment after the SEG
            wait_until(partial(_has, site, "SR", sr_uid), 30)
    measurement_srs = [  # not the outline SR, which only studies with lesions have
        ds
        for ds in site.results().get("SR", [])
        if str(ds.SeriesDescription).startswith("AI lung measurements")
    ]
    per_study = [sum(ds.StudyInstanceUID == uid for ds in measurement_srs) for uid in want]
    assert per_study == [1] * len(want), per_study  # one measurement SR for every study


def test_three_sites_share_one_pool_and_send_no_identifier(
    pool: TritonServer, make_site: Callable[[str], Site], tmp_path: Path
) -> None:
    proxy = RecordingProxy(pool.http_port)
    names = ["site-a", "site-b", "site-c"]
    try:
        sites = [make_site(name) for name in names]
        for site in sites:
            site.start(proxy.url)
        studies = [_study(tmp_path / f"study-{n}", seed) for n, seed in enumerate((3, 4, 5))]
        for site, study in zip(sites, studies, strict=True):
            site.store(study)
        for site, study in zip(sites, studies, strict=True):
            _analysed_once(site, [study], 240)
    finally:
        proxy.close()
    for site, study in zip(sites, studies, strict=True):
        (report,) = site.reports()
        assert report["model"]["execution_provider"].startswith("triton:http://")
        source = pydicom.dcmread(study[0], stop_before_pixels=True)
        assert report["study_instance_uid"] == source.StudyInstanceUID
        assert pool.metric("ct_triage_site_slices_total", site=site.name) > 0
        assert "Traceback" not in site.log.read_text(errors="replace")
    recorded = proxy.received()
    for name in names:
        assert name.encode() in recorded  # the recording has every site's requests
    identifiers: set[str] = set()
    for study in studies:
        identifiers |= study_identifiers(study[0].parent)
    assert len(identifiers) > 100
    assert leaked(recorded, identifiers) == []


def test_pool_down_mid_batch_falls_back_to_the_local_cpu(
    pool: TritonServer, make_site: Callable[[str], Site], tmp_path: Path
) -> None:
    """CT_TRIAGE_TRITON_FALLBACK=local: every study analysed once; each report names its
    runtime (the pool before the failure, the local CPU after it)."""
    proxy = RecordingProxy(pool.http_port)
    site = make_site("site-fallback")
    try:
        site.start(
            proxy.url,
            CT_TRIAGE_TRITON_FALLBACK="local",
            CT_TRIAGE_TRITON_RETRIES="1",
            CT_TRIAGE_TRITON_RETRY_BACKOFF_S="0.2",
            CT_TRIAGE_TRITON_RETRY_AFTER_S="600",
        )
        studies = [_study(tmp_path / f"study-{seed}", seed) for seed in (6, 7, 8)]
        site.store(studies[0])
        wait_until(lambda: b"/infer" in proxy.received(), 120, 0.05)
        pool.kill()  # mid-batch: the first study is being inferred, two more are coming
        for study in studies[1:]:
            site.store(study)  # C-STORE success still means on disk
        _analysed_once(site, studies, 300)
    finally:
        proxy.close()
    providers = [r["model"]["execution_provider"] for r in site.reports()]
    assert len(providers) == 3
    # the two studies stored after the failure ran wholly on the local CPU (the pool is not
    # tried again for CT_TRIAGE_TRITON_RETRY_AFTER_S); the first one maybe partly on the pool
    assert providers.count("CPUExecutionProvider (local fallback)") >= 2, providers
    assert "fallback" in site.log.read_text(errors="replace")


def test_pool_down_mid_batch_studies_wait_and_finish_when_it_returns(
    pool: TritonServer, make_site: Callable[[str], Site], tmp_path: Path
) -> None:
    """No fallback: the studies' jobs are retried with backoff and finish on the pool once it
    is back; none lost, none twice."""
    proxy = RecordingProxy(pool.http_port)
    site = make_site("site-wait")
    try:
        site.start(
            proxy.url,
            CT_TRIAGE_TRITON_RETRIES="2",
            CT_TRIAGE_TRITON_RETRY_BACKOFF_S="0.2",
        )
        studies = [_study(tmp_path / f"study-{seed}", seed) for seed in (9, 10)]
        site.store(studies[0])
        wait_until(lambda: b"/infer" in proxy.received(), 120, 0.05)
        pool.kill()
        site.store(studies[1])
        wait_until(lambda: "failed (queued)" in site.log.read_text(errors="replace"), 60)
        assert not site.results()  # nothing analysed while the pool is down
        pool.start()
        _analysed_once(site, studies, 300)
    finally:
        proxy.close()
    providers = [r["model"]["execution_provider"] for r in site.reports()]
    assert len(providers) == 2
    assert all(p.startswith("triton:http://") for p in providers)
