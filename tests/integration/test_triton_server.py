"""The Triton runtime against a real Triton Inference Server (2.51, from ``nvidia-pytriton``).

``tritonserver`` runs on free loopback ports with the generated CPU repository (Python-backend
model running the shipped ONNX file on ONNX Runtime, dynamic batching); ``ct-triage analyze``
runs with ``CT_TRIAGE_RUNTIME=triton`` over HTTP and gRPC.

Tolerance: per-pixel probabilities within 1e-5 of the in-process ONNX Runtime (same file, same
ONNX Runtime, batches formed differently); the reports' numbers (rounded to 0.01) and triage
class identical.

A loopback proxy (:class:`triton_server.RecordingProxy`) in front of the server keeps every
byte the client sends: the identifier search runs over it; it also slows or cuts the network.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from triton_server import (
    MODEL,
    RecordingProxy,
    TritonServer,
    leaked,
    require_triton,
    study_identifiers,
    triton_server,
)

from ct_triage.dicom_bridge.synthetic import write_phantom_series
from ct_triage.models.errors import InferenceError, ModelError, RuntimeUnavailable
from ct_triage.models.manifest import WEIGHTS_DIR, Manifest, load_manifest
from ct_triage.models.phantom import generate, spec_from_seed
from ct_triage.models.runtime.onnx import OnnxPredictor
from ct_triage.models.runtime.triton import TritonPredictor
from ct_triage.server.cli import main

pytestmark = pytest.mark.integration

PROTOCOLS = ["http", "grpc"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    require_triton()
    with triton_server(tmp_path_factory.mktemp("triton")) as running:
        yield running


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest(WEIGHTS_DIR)


@pytest.fixture(scope="module")
def reference(manifest: Manifest) -> OnnxPredictor:
    return OnnxPredictor(WEIGHTS_DIR / manifest.file, provider="cpu", threads=1)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("study")
    write_phantom_series(generate(spec_from_seed(13, n_slices=40, severity="moderate")), folder)
    return folder


@pytest.fixture(scope="module")
def local_report(study: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("local") / "out"
    mp = pytest.MonkeyPatch()
    mp.setenv("CT_TRIAGE_INFERENCE_THREADS", "1")
    try:
        assert main(["analyze", str(study), "--out", str(out)]) == 0
    finally:
        mp.undo()
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report


def _batch(manifest: Manifest, n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    spec = manifest.input
    rng = np.random.default_rng(seed)
    return rng.random((n, spec.channels, spec.height, spec.width), np.float32)


def _predictor(url: str, protocol: str, manifest: Manifest, **kw: Any) -> TritonPredictor:
    return TritonPredictor(
        url,
        MODEL,
        protocol="http" if protocol == "http" else "grpc",
        manifest=manifest,
        timeout_s=kw.pop("timeout_s", 10),
        **kw,
    )


def _env(mp: pytest.MonkeyPatch, **values: str) -> None:
    for key, value in values.items():
        mp.setenv(f"CT_TRIAGE_{key.upper()}", value)


def _same_result(remote: dict[str, Any], local: dict[str, Any]) -> None:
    for key in ("percent_involvement", "lesion_volume_ml", "lung_volume_ml", "triage"):
        assert remote[key] == local[key], key


# -- the predictor against the real server --------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_real_triton_matches_onnxruntime(
    server: TritonServer, protocol: str, manifest: Manifest, reference: OnnxPredictor
) -> None:
    pred = _predictor(server.url(protocol), protocol, manifest, max_batch=4)
    assert pred.max_batch == 4
    x = _batch(manifest, 6)
    got = pred.predict(x)
    assert got.shape == (6, manifest.num_classes, manifest.input.height, manifest.input.width)
    assert float(np.abs(got - reference.predict(x)).max()) < 1e-5


def test_dynamic_batching_serves_concurrent_requests_together(
    server: TritonServer, manifest: Manifest, reference: OnnxPredictor
) -> None:
    """Requests from several clients (sites) arrive together: fewer executions than requests."""
    before_req = server.metric("nv_inference_request_success", model=MODEL)
    before_exec = server.metric("nv_inference_exec_count", model=MODEL)
    x = _batch(manifest, 2, seed=3)
    want = reference.predict(x)
    errors: list[str] = []

    def site(n: int) -> None:
        pred = _predictor(server.url("grpc"), "grpc", manifest, site_id=f"site-{n}")
        for _ in range(3):
            if float(np.abs(pred.predict(x) - want).max()) >= 1e-5:
                errors.append(f"site {n}: wrong result")

    threads = [threading.Thread(target=site, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    requests = server.metric("nv_inference_request_success", model=MODEL) - before_req
    executions = server.metric("nv_inference_exec_count", model=MODEL) - before_exec
    assert requests == 18
    assert executions < requests, (executions, requests)
    for n in range(6):
        assert server.metric("ct_triage_site_requests_total", site=f"site-{n}") == 3


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_model_not_loaded(server: TritonServer, protocol: str, manifest: Manifest) -> None:
    with pytest.raises(RuntimeUnavailable, match=r"model 'absent' .*not ready") as info:
        TritonPredictor(server.url(protocol), "absent", protocol=protocol, manifest=manifest)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wrong_input_shape(server: TritonServer, protocol: str, manifest: Manifest) -> None:
    other = manifest.model_copy(
        update={"input": manifest.input.model_copy(update={"height": 256, "width": 256})}
    )
    with pytest.raises(ModelError, match=r"takes input \(-1, 1, 224, 224\).*manifest"):
        _predictor(server.url(protocol), protocol, other)
    pred = _predictor(server.url(protocol), protocol, manifest, retries=3)
    before = server.metric("nv_inference_request_success", model=MODEL)
    with pytest.raises(InferenceError, match="shape") as info:
        pred.predict(np.zeros((2, 1, 200, 224), np.float32))
    assert "\n" not in str(info.value)
    assert "attempts" not in str(info.value)  # a client error is not retried
    assert server.metric("nv_inference_request_success", model=MODEL) == before


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_slow_server_times_out_and_is_retried(
    server: TritonServer, protocol: str, manifest: Manifest, reference: OnnxPredictor
) -> None:
    port = server.http_port if protocol == "http" else server.grpc_port
    proxy = RecordingProxy(port)
    try:
        pred = _predictor(
            proxy.url, protocol, manifest, timeout_s=1.0, retries=2, retry_backoff_s=0.1
        )
        x = _batch(manifest, 1, seed=5)
        proxy.delay_s = 2.5  # every answer arrives after the client's 1 s timeout
        t0 = time.monotonic()
        with pytest.raises(InferenceError, match="after 3 attempts") as info:
            pred.predict(x)
        assert "\n" not in str(info.value)
        assert time.monotonic() - t0 < 15
        proxy.delay_s = 0.0  # the server is fast again: the same predictor recovers
        assert float(np.abs(pred.predict(x) - reference.predict(x)).max()) < 1e-5
    finally:
        proxy.close()


# -- analyze with CT_TRIAGE_RUNTIME=triton ----------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_analyze_over_triton_equals_local_and_sends_no_identifier(
    server: TritonServer,
    protocol: str,
    study: Path,
    local_report: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = server.http_port if protocol == "http" else server.grpc_port
    proxy = RecordingProxy(port)
    site = f"site-analyze-{protocol}"
    before = server.metric("ct_triage_site_slices_total", site=site)
    try:
        _env(monkeypatch, runtime="triton", triton_url=proxy.url, triton_protocol=protocol)
        _env(monkeypatch, site_id=site)
        out = tmp_path / "out"
        assert main(["analyze", str(study), "--out", str(out)]) == 0
    finally:
        proxy.close()
    remote = json.loads((out / "report.json").read_text())
    _same_result(remote, local_report)
    assert remote["model"]["execution_provider"].startswith(f"triton:{protocol}://")
    assert server.metric("ct_triage_site_slices_total", site=site) > before
    recorded = proxy.received()
    assert site.encode() in recorded  # the recording holds the requests' headers/parameters
    assert b"infer" in recorded.lower() or b"ModelInfer" in recorded
    identifiers = study_identifiers(study)
    assert len(identifiers) > 40  # names, IDs, UIDs of every slice, dates, accession
    assert leaked(recorded, identifiers) == []


def test_server_killed_mid_study_is_retried_and_nothing_is_lost(
    server: TritonServer,
    study: Path,
    local_report: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = RecordingProxy(server.http_port)
    _env(monkeypatch, runtime="triton", triton_url=proxy.url, inference_batch="2")
    _env(monkeypatch, triton_retries="6", triton_retry_backoff_s="0.5", triton_timeout_s="10")
    out = tmp_path / "out"
    rc: list[int] = []
    argv = ["analyze", str(study), "--out", str(out)]
    worker = threading.Thread(target=lambda: rc.append(main(argv)))
    try:
        worker.start()
        deadline = time.monotonic() + 60
        while proxy.received().count(b"/infer") < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proxy.received().count(b"/infer") >= 3, "the study never reached the server"
        server.kill()  # mid-study
        time.sleep(0.5)
        server.start()  # same ports, same repository
        worker.join(120)
    finally:
        proxy.close()
    assert rc == [0]
    _same_result(json.loads((out / "report.json").read_text()), local_report)


def test_analyze_when_the_server_stays_down_fails_in_one_line(
    server: TritonServer,
    study: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    proxy = RecordingProxy(server.http_port)
    proxy.refuse = True  # the pool's address answers, and closes every connection
    _env(monkeypatch, runtime="triton", triton_url=proxy.url, triton_retries="1")
    _env(monkeypatch, triton_retry_backoff_s="0.1", triton_timeout_s="2")
    out = tmp_path / "out"
    files = sorted(study.rglob("*.dcm"))
    try:
        assert main(["analyze", str(study), "--out", str(out)]) == 1  # not the input's fault
    finally:
        proxy.close()
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ct-triage")]
    assert len(err) == 1, err
    assert "Triton pool unavailable" in err[0]
    assert not out.exists()
    assert sorted(study.rglob("*.dcm")) == files  # the input is untouched


def test_analyze_with_local_fallback_when_the_pool_is_down(
    server: TritonServer,
    study: Path,
    local_report: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CT_TRIAGE_TRITON_FALLBACK=local: the study is analysed on the site's CPU, the same
    result as the local runtime, and the report says which runtime produced it."""
    proxy = RecordingProxy(server.http_port)
    proxy.refuse = True
    _env(monkeypatch, runtime="triton", triton_url=proxy.url, triton_fallback="local")
    _env(monkeypatch, triton_retries="1", triton_retry_backoff_s="0.1", triton_timeout_s="2")
    out = tmp_path / "out"
    try:
        assert main(["analyze", str(study), "--out", str(out)]) == 0
    finally:
        proxy.close()
    report = json.loads((out / "report.json").read_text())
    _same_result(report, local_report)
    assert report["model"]["execution_provider"] == "CPUExecutionProvider (local fallback)"
    seg = pydicom.dcmread(out / "seg.dcm", stop_before_pixels=True)
    assert "local fallback" in str(seg.to_json_dict())
