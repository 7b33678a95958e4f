"""TritonPredictor's own checks, the gateway statuses it retries, and the repository generator.

The predictor against a **real** Triton Inference Server (HTTP and gRPC: results, dynamic
batching, model not loaded, wrong shape, slow and killed server, identifier search) is in
``tests/integration/test_triton_server.py``. Here only what the real server cannot show: an
HTTP 503 answered by a gateway in front of the pool is retried, a 400 is not
(``tests/fake_triton.py``, HTTP only).
"""

from __future__ import annotations

import importlib
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from fake_triton import MODEL, FakeModel, fake_model, http_server

from ct_triage.models.errors import InferenceError, ModelError, RuntimeUnavailable
from ct_triage.models.manifest import WEIGHTS_DIR, Manifest, load_manifest, sha256_of
from ct_triage.models.runtime.onnx import OnnxPredictor
from ct_triage.models.runtime.triton import TritonPredictor, is_available
from ct_triage.models.runtime.triton_repo import TritonModelSpec, write_model_repository

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest(WEIGHTS_DIR)


@pytest.fixture(scope="module")
def reference(manifest: Manifest) -> OnnxPredictor:
    return OnnxPredictor(WEIGHTS_DIR / manifest.file, provider="cpu", threads=2)


@pytest.fixture
def fake() -> FakeModel:
    return fake_model(WEIGHTS_DIR)


@pytest.fixture
def http_url(fake: FakeModel) -> Iterator[str]:
    if not is_available("http"):
        pytest.skip("tritonclient[http] is not installed (the 'triton' extra)")
    with http_server(fake) as url:
        yield url


def _predictor(protocol: str, url: str, manifest: Manifest, **kw: Any) -> TritonPredictor:
    assert protocol in ("http", "grpc")
    return TritonPredictor(
        url,
        MODEL,
        protocol="http" if protocol == "http" else "grpc",
        manifest=manifest,
        timeout_s=5,
        **kw,
    )


def _batch(manifest: Manifest, n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    spec = manifest.input
    return np.random.default_rng(seed).random(
        (n, spec.channels, spec.height, spec.width), np.float32
    )


# -- tests -----------------------------------------------------------------------------------


def test_gateway_503_is_retried_with_backoff(
    http_url: str, manifest: Manifest, reference: OnnxPredictor, fake: FakeModel
) -> None:
    pred = _predictor("http", http_url, manifest, retries=2, retry_backoff_s=0.01)
    x = _batch(manifest, 2, seed=1)
    fake.fail_next = 2
    assert float(np.abs(pred.predict(x) - reference.predict(x)).max()) < 1e-5
    assert fake.fail_next == 0
    fake.fail_next = 3
    with pytest.raises(InferenceError, match=f"triton:.*{MODEL}.*after 3 attempts") as info:
        pred.predict(x)
    assert "\n" not in str(info.value)


def test_site_id_is_an_opaque_label(http_url: str, manifest: Manifest) -> None:
    with pytest.raises(ValueError, match="site id"):
        _predictor("http", http_url, manifest, site_id="Doe^John 1.2.840")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_server_down(protocol: str, manifest: Manifest) -> None:
    if not is_available(protocol):
        pytest.skip(f"tritonclient[{protocol}] is not installed (the 'triton' extra)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"127.0.0.1:{port}"
    with pytest.raises(RuntimeUnavailable, match=re.escape(url)) as info:
        _predictor(protocol, url, manifest)
    assert "\n" not in str(info.value)


def test_non_transient_error_is_not_retried(
    manifest: Manifest, fake: FakeModel, http_url: str
) -> None:
    pred = _predictor("http", http_url, manifest)
    fake.fail_next, fake.fail_status = 1, 400
    with pytest.raises(InferenceError, match="fake: try again"):
        pred.predict(_batch(manifest, 1))
    assert fake.fail_next == 0
    assert fake.infer_calls == []


def test_bad_url_is_refused(manifest: Manifest) -> None:
    if not is_available("http"):
        pytest.skip("tritonclient[http] is not installed (the 'triton' extra)")
    with pytest.raises(RuntimeUnavailable, match="host:port"):
        _predictor("http", "http://host:8000/v2", manifest)


# -- model repository generator ----------------------------------------------------------------


def _parse(text: str) -> dict[str, Any]:
    """The config as a dict, via Triton's own ModelConfig proto when tritonclient is here."""
    try:
        json_format: Any = importlib.import_module("google.protobuf.json_format")
        text_format: Any = importlib.import_module("google.protobuf.text_format")
        model_config_pb2: Any = importlib.import_module("tritonclient.grpc.model_config_pb2")
    except ImportError:
        pytest.skip("tritonclient[grpc] is not installed: cannot parse config.pbtxt as a proto")
    message = text_format.Parse(text, model_config_pb2.ModelConfig())
    parsed: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return parsed


def test_generated_repository(tmp_path: Path, manifest: Manifest) -> None:
    folder = write_model_repository(WEIGHTS_DIR, tmp_path / "repo")
    assert folder == tmp_path / "repo" / MODEL
    assert sha256_of(folder / "1" / "model.onnx") == manifest.sha256
    text = (folder / "config.pbtxt").read_text(encoding="utf-8")
    assert manifest.sha256 in text
    cfg = _parse(text)
    assert cfg["name"] == MODEL
    assert cfg["platform"] == "onnxruntime_onnx"
    assert cfg["max_batch_size"] == 32
    assert cfg["input"] == [
        {"name": "image", "data_type": "TYPE_FP32", "dims": ["1", "224", "224"]}
    ]
    assert cfg["output"] == [
        {"name": "probabilities", "data_type": "TYPE_FP32", "dims": ["3", "224", "224"]}
    ]
    assert cfg["dynamic_batching"] == {
        "preferred_batch_size": [8, 16, 32],
        "max_queue_delay_microseconds": "2000",
    }
    assert cfg["instance_group"] == [{"count": 1, "kind": "KIND_GPU"}]
    (trt,) = cfg["optimization"]["execution_accelerators"]["gpu_execution_accelerator"]
    assert trt["name"] == "tensorrt"
    assert trt["parameters"]["precision_mode"] == "FP16"
    assert trt["parameters"]["trt_engine_cache_enable"] == "1"


def test_generated_cpu_variant(tmp_path: Path) -> None:
    spec = TritonModelSpec(
        name="cpu_model", instance_kind="cpu", instance_count=2, tensorrt=False, cpu_threads=4
    )
    folder = write_model_repository(WEIGHTS_DIR, tmp_path, spec, copy_model=False)
    assert not (folder / "1").exists()
    cfg = _parse((folder / "config.pbtxt").read_text(encoding="utf-8"))
    assert cfg["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    assert "optimization" not in cfg
    assert cfg["parameters"]["intra_op_thread_count"] == {"string_value": "4"}


def test_generator_refuses_tampered_model(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "manifest.json").write_bytes((WEIGHTS_DIR / "manifest.json").read_bytes())
    data = bytearray((WEIGHTS_DIR / "lesion_seg.onnx").read_bytes())
    data[-10] ^= 0xFF
    (model_dir / "lesion_seg.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match its manifest"):
        write_model_repository(model_dir, tmp_path / "repo")


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="TensorRT"):
        TritonModelSpec(instance_kind="cpu", tensorrt=True)
    with pytest.raises(ValueError, match="preferred"):
        TritonModelSpec(max_batch_size=8, preferred_batch_sizes=(16,))


@pytest.mark.parametrize(
    "path",
    [
        f"triton/{MODEL}/config.pbtxt",
        f"triton/{MODEL}_cpu/config.pbtxt",
        f"triton-cpu/{MODEL}/config.pbtxt",
        f"triton-cpu/{MODEL}/1/model.py",
    ],
)
def test_committed_repositories_are_current(tmp_path: Path, path: str) -> None:
    """``deploy/triton`` (GPU) and ``deploy/triton-cpu`` (Python backend) hold exactly what the
    one command writes today (no drift)."""
    from ct_triage.models.runtime.triton_repo import main

    assert main([str(tmp_path / "triton"), "--config-only"]) == 0
    committed = REPO_ROOT / "deploy" / path
    assert committed.read_text(encoding="utf-8") == (tmp_path / path).read_text(encoding="utf-8"), (
        "regenerate: python -m ct_triage.models.runtime.triton_repo deploy/triton --config-only"
    )


def test_generated_python_backend_repository(tmp_path: Path, manifest: Manifest) -> None:
    spec = TritonModelSpec(
        instance_kind="cpu", tensorrt=False, backend="python", cpu_threads=2, instance_count=1
    )
    folder = write_model_repository(WEIGHTS_DIR, tmp_path, spec)
    assert sha256_of(folder / "1" / "model.onnx") == manifest.sha256
    assert "class TritonPythonModel" in (folder / "1" / "model.py").read_text(encoding="utf-8")
    cfg = _parse((folder / "config.pbtxt").read_text(encoding="utf-8"))
    assert cfg["backend"] == "python"
    assert "platform" not in cfg
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [8, 16, 32]
    assert cfg["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}]
    with pytest.raises(ValueError, match="CPU"):
        TritonModelSpec(tensorrt=False, backend="python")


def test_site_settings_reach_the_runtime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pydantic import ValidationError

    from ct_triage.server.settings import Settings

    monkeypatch.setenv("CT_TRIAGE_RUNTIME", "triton")
    monkeypatch.setenv("CT_TRIAGE_TRITON_URL", "pool:8001")
    monkeypatch.setenv("CT_TRIAGE_SITE_ID", "hospital-a")
    monkeypatch.setenv("CT_TRIAGE_TRITON_FALLBACK", "local")
    monkeypatch.setenv("CT_TRIAGE_TRITON_RETRIES", "5")
    cfg = Settings(data_dir=tmp_path).runtime_config()
    assert cfg.triton_site_id == "hospital-a"
    assert (cfg.triton_fallback, cfg.triton_retries) == ("local", 5)
    monkeypatch.setenv("CT_TRIAGE_SITE_ID", "DOE^JOHN 19700101")  # not an opaque label
    with pytest.raises(ValidationError, match="site_id"):
        Settings(data_dir=tmp_path)
