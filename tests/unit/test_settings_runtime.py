"""The runtime settings (``CT_TRIAGE_RUNTIME``, ``..._PROVIDER``, ...) map onto RuntimeConfig."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from ct_triage.models.runtime.factory import RuntimeConfig
from ct_triage.server.settings import FLAT_RUNTIME_FIELDS, Settings, env_name


def test_defaults_run_onnxruntime_on_the_cpu(tmp_path: Path) -> None:
    cfg = Settings(data_dir=tmp_path).runtime_config()
    assert (cfg.kind, cfg.provider, cfg.strict, cfg.fp16) == ("onnxruntime", "cpu", False, False)
    assert cfg.trt_cache_dir is None


def test_tensorrt_gets_an_engine_cache_under_the_data_dir(tmp_path: Path) -> None:
    cfg = Settings(
        data_dir=tmp_path, inference=RuntimeConfig(provider="tensorrt", fp16=True)
    ).runtime_config()
    assert cfg.trt_cache_dir == tmp_path / "tensorrt-cache"
    assert cfg.fp16
    assert cfg.io_binding
    own = Settings(
        data_dir=tmp_path,
        inference=RuntimeConfig(provider="tensorrt", trt_cache_dir=tmp_path / "x"),
    )
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
    # The flat keyword names (as deployments' variables), which typed code does not use.
    no_url: dict[str, Any] = {"runtime": "triton"}
    with pytest.raises(ValidationError, match="triton_url"):
        Settings(data_dir=tmp_path, **no_url)
    half_tls: dict[str, Any] = {
        "runtime": "triton",
        "triton_url": "t:1",
        "triton_ssl_key": tmp_path,
    }
    with pytest.raises(ValidationError, match="go together"):
        Settings(data_dir=tmp_path, **half_tls)


def test_settings_compose_the_runtime_defaults(tmp_path: Path) -> None:
    """One default per runtime field: the settings hold RuntimeConfig's own."""
    assert Settings(data_dir=tmp_path).inference == RuntimeConfig()
    cfg = Settings(data_dir=tmp_path).runtime_config()
    assert (cfg.max_batch, cfg.io_binding, cfg.z_step_mm) == (16, True, 2.0)


@pytest.mark.parametrize(("flat", "field"), sorted(FLAT_RUNTIME_FIELDS.items()))
def test_every_flat_runtime_variable_sets_its_field(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flat: str, field: str
) -> None:
    """Each ``CT_TRIAGE_<flat>`` deployments use still reaches the runtime field."""
    values: dict[str, tuple[str, object]] = {
        "kind": ("triton", "triton"),
        "provider": ("cuda", "cuda"),
        "strict": ("true", True),
        "threads": ("3", 3),
        "max_batch": ("8", 8),
        "z_step_mm": ("0", 0.0),
        "fp16": ("1", True),
        "trt_cache_dir": (str(tmp_path / "trt"), tmp_path / "trt"),
        "io_binding": ("false", False),
        "triton_url": ("grpc://t:8001", "grpc://t:8001"),
        "triton_protocol": ("grpc", "grpc"),
        "triton_model_name": ("other", "other"),
        "triton_model_version": ("2", "2"),
        "triton_timeout_s": ("4.5", 4.5),
        "triton_ssl": ("true", True),
        "triton_ssl_ca": (str(tmp_path / "ca.pem"), tmp_path / "ca.pem"),
        "triton_site_id": ("hospital-a", "hospital-a"),
        "triton_retries": ("7", 7),
        "triton_retry_backoff_s": ("1.5", 1.5),
        "triton_fallback": ("local", "local"),
        "triton_retry_after_s": ("9", 9.0),
    }
    if field == "model_dir":
        model = tmp_path / "model"
        model.mkdir()
        (model / "manifest.json").write_text("{}")
        values["model_dir"] = (str(model), model)
    elif field in ("triton_ssl_cert", "triton_ssl_key"):  # the pair goes together
        monkeypatch.setenv("CT_TRIAGE_TRITON_SSL_CERT", str(tmp_path / "c.pem"))
        monkeypatch.setenv("CT_TRIAGE_TRITON_SSL_KEY", str(tmp_path / "k.pem"))
        values[field] = (str(tmp_path / f"{field[-4]}.pem"), tmp_path / f"{field[-4]}.pem")
    if field == "kind":
        monkeypatch.setenv("CT_TRIAGE_TRITON_URL", "t:8000")
    text, expected = values[field]
    monkeypatch.setenv(f"CT_TRIAGE_{flat.upper()}", text)
    assert getattr(Settings(data_dir=tmp_path).inference, field) == expected
    assert getattr(RuntimeConfig(), field) != expected  # the variable changed something


def test_nested_variables_set_what_had_no_flat_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CT_TRIAGE_INFERENCE__DEVICE_ID", "1")
    monkeypatch.setenv("CT_TRIAGE_INFERENCE__CUDNN_CONV_ALGO_SEARCH", "HEURISTIC")
    monkeypatch.setenv("CT_TRIAGE_INFERENCE__PROVIDER", "cuda")
    monkeypatch.setenv("CT_TRIAGE_PROVIDER", "tensorrt")  # the nested name wins
    cfg = Settings(data_dir=tmp_path).runtime_config()
    assert (cfg.device_id, cfg.cudnn_conv_algo_search, cfg.provider) == (1, "HEURISTIC", "cuda")


def test_keywords_win_over_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CT_TRIAGE_INFERENCE_BATCH", "8")
    monkeypatch.setenv("CT_TRIAGE_INFERENCE__THREADS", "2")
    flat: dict[str, Any] = {"inference_batch": 4, "inference_threads": 3}
    cfg = Settings(data_dir=tmp_path, **flat).runtime_config()
    assert (cfg.max_batch, cfg.threads) == (4, 3)
    too_big: dict[str, Any] = {"inference_batch": 513}
    with pytest.raises(ValidationError, match="less than or equal to 512"):
        Settings(data_dir=tmp_path, **too_big)
    with pytest.raises(ValidationError, match=r"no manifest\.json"):
        Settings(data_dir=tmp_path, inference=RuntimeConfig(model_dir=tmp_path))


def test_settings_file_is_read_when_settings_are_built(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``CT_TRIAGE_SETTINGS_FILE`` is looked up per Settings(), not at import; flat names work."""
    env_file = tmp_path / "site.env"
    env_file.write_text(
        "CT_TRIAGE_PROVIDER=cuda\nCT_TRIAGE_INFERENCE__DEVICE_ID=2\nCT_TRIAGE_WORKERS=3\n"
    )
    monkeypatch.setenv("CT_TRIAGE_INFERENCE_THREADS", "5")
    monkeypatch.setenv("CT_TRIAGE_SETTINGS_FILE", str(env_file))
    settings = Settings(data_dir=tmp_path)
    cfg = settings.runtime_config()
    assert (cfg.provider, cfg.device_id, cfg.threads, settings.workers) == ("cuda", 2, 5, 3)
    monkeypatch.setenv("CT_TRIAGE_PROVIDER", "tensorrt")  # the environment wins over the file
    assert Settings(data_dir=tmp_path).runtime_config().provider == "tensorrt"
    env_file.write_text("CT_TRIAGE_NO_SUCH_SETTING=1\n")
    with pytest.raises(ValidationError, match="no_such_setting"):
        Settings(data_dir=tmp_path)


def test_errors_name_the_variable_a_deployment_sets() -> None:
    assert env_name(("inference", "provider")) == "CT_TRIAGE_PROVIDER"
    assert env_name(("inference", "max_batch")) == "CT_TRIAGE_INFERENCE_BATCH"
    assert env_name(("inference", "device_id")) == "CT_TRIAGE_INFERENCE__DEVICE_ID"
    assert env_name(("http_port",)) == "CT_TRIAGE_HTTP_PORT"
    assert env_name(()) == "CT_TRIAGE_SETTINGS"
