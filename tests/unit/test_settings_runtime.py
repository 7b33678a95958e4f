"""The runtime settings (``CT_TRIAGE_RUNTIME``, ``..._PROVIDER``, ...) map onto RuntimeConfig."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ct_triage.server.settings import Settings


def test_defaults_run_onnxruntime_on_the_cpu(tmp_path: Path) -> None:
    cfg = Settings(data_dir=tmp_path).runtime_config()
    assert (cfg.kind, cfg.provider, cfg.strict, cfg.fp16) == ("onnxruntime", "cpu", False, False)
    assert cfg.trt_cache_dir is None


def test_tensorrt_gets_an_engine_cache_under_the_data_dir(tmp_path: Path) -> None:
    cfg = Settings(data_dir=tmp_path, provider="tensorrt", fp16=True).runtime_config()
    assert cfg.trt_cache_dir == tmp_path / "tensorrt-cache"
    assert cfg.fp16
    assert cfg.io_binding
    own = Settings(data_dir=tmp_path, provider="tensorrt", trt_cache_dir=tmp_path / "x")
    assert own.runtime_config().trt_cache_dir == tmp_path / "x"


def test_environment_selects_triton(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CT_TRIAGE_RUNTIME", "triton")
    monkeypatch.setenv("CT_TRIAGE_TRITON_URL", "grpc://triton:8001")
    monkeypatch.setenv("CT_TRIAGE_TRITON_PROTOCOL", "grpc")
    monkeypatch.setenv("CT_TRIAGE_INFERENCE_THREADS", "3")
    cfg = Settings(data_dir=tmp_path).runtime_config()
    assert (cfg.kind, cfg.triton_url, cfg.triton_protocol) == (
        "triton",
        "grpc://triton:8001",
        "grpc",
    )
    assert cfg.threads == 3


def test_triton_without_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="triton_url"):
        Settings(data_dir=tmp_path, runtime="triton")
    with pytest.raises(ValidationError, match="go together"):
        Settings(data_dir=tmp_path, runtime="triton", triton_url="t:1", triton_ssl_key=tmp_path)
