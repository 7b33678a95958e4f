"""``ct-triage analyze`` with the runtime chosen by configuration (``CT_TRIAGE_RUNTIME``...).

The same study is analysed in-process with ONNX Runtime and through a real Triton Inference
Server (``tritonserver`` 2.51 from the ``nvidia-pytriton`` wheel, the generated CPU repository:
Python backend, ONNX Runtime inside) over HTTP and gRPC.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from triton_server import TritonServer, require_triton, triton_server

from ct_triage.dicom_bridge.synthetic import write_phantom_series
from ct_triage.models.phantom import generate, spec_from_seed
from ct_triage.models.runtime.triton import is_available
from ct_triage.server.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ph = generate(spec_from_seed(13, n_slices=40, severity="moderate"))
    folder = tmp_path_factory.mktemp("runtimes") / "dicom"
    write_phantom_series(ph, folder)
    return folder


def _analyze(study: Path, out: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    for key, value in env.items():
        monkeypatch.setenv(f"CT_TRIAGE_{key.upper()}", value)
    assert main(["analyze", str(study), "--out", str(out)]) == 0
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    require_triton()
    with triton_server(tmp_path_factory.mktemp("triton")) as running:
        yield running


@pytest.fixture(params=["http", "grpc"])
def triton_url(request: pytest.FixtureRequest, server: TritonServer) -> Iterator[tuple[str, str]]:
    protocol: str = request.param
    before = server.metric("nv_inference_request_success")
    yield protocol, server.url(protocol)
    assert server.metric("nv_inference_request_success") > before, "Triton was not called"


def test_triton_runtime_gives_the_onnxruntime_result(
    study: Path,
    tmp_path: Path,
    triton_url: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    local = _analyze(study, tmp_path / "onnx", monkeypatch, inference_threads="2")
    protocol, url = triton_url
    remote = _analyze(
        study,
        tmp_path / "triton",
        monkeypatch,
        runtime="triton",
        triton_url=url,
        triton_protocol=protocol,
    )
    assert local["model"]["execution_provider"] == "CPUExecutionProvider"
    assert "triton" in remote["model"]["execution_provider"].lower()
    assert protocol in remote["model"]["execution_provider"].lower()
    for key in ("percent_involvement", "lesion_volume_ml", "lung_volume_ml", "triage"):
        assert remote[key] == local[key], key


def test_triton_runtime_without_a_server_fails_in_one_line(
    study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if not is_available("http"):
        pytest.skip("tritonclient[http] is not installed (the 'triton' extra)")
    monkeypatch.setenv("CT_TRIAGE_RUNTIME", "triton")
    monkeypatch.setenv("CT_TRIAGE_TRITON_URL", "127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("CT_TRIAGE_TRITON_TIMEOUT_S", "2")
    monkeypatch.setenv("CT_TRIAGE_TRITON_RETRY_BACKOFF_S", "0.1")
    out = tmp_path / "out"
    assert main(["analyze", str(study), "--out", str(out)]) == 1  # not the input's fault
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ct-triage")]
    assert len(err) == 1, err  # one line says why (the log above it has the retries)
    assert "Triton pool unavailable" in err[0]
    assert "127.0.0.1:9" in err[0]
    assert not out.exists()


def test_triton_runtime_needs_a_url(
    study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CT_TRIAGE_RUNTIME", "triton")
    assert main(["analyze", str(study), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "triton_url" in err


def test_thin_slices_run_the_network_every_other_slice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1 mm slices: the network runs every 2nd slice by default (CT_TRIAGE_INFERENCE_Z_STEP_MM
    = 2), and the result stays within 0.2 percentage point of running every slice (measured:
    0.10 pp on the left lung with model 0.4.0, the reports being rounded to 0.01)."""
    ph = generate(spec_from_seed(13, n_slices=70, severity="moderate", slice_spacing_mm=1.0))
    study = tmp_path / "thin"
    write_phantom_series(ph, study)
    stepped = _analyze(study, tmp_path / "stepped", monkeypatch)
    every = _analyze(study, tmp_path / "every", monkeypatch, inference_z_step_mm="0")
    assert stepped["model"]["network_slice_step"] == 2
    assert every["model"]["network_slice_step"] == 1
    for side in ("right", "left", "total"):
        a, b = stepped["percent_involvement"][side], every["percent_involvement"][side]
        assert abs(a - b) < 0.2, (side, a, b)
    assert stepped["triage"] == every["triage"]


def test_every_log_line_of_an_analysis_carries_its_job_id(
    study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Also the lines of the image writers, which run in their own thread."""
    assert main(["analyze", str(study), "--out", str(tmp_path / "out")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "[job=" in line]
    assert any("overlay series built" in line for line in lines)
    assert not [line for line in lines if "[job=-]" in line]
