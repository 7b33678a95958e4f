"""Build the configured :class:`~ct_triage.models.runtime.base.Predictor` for a model directory.

:class:`RuntimeConfig` is the one validated description of the inference runtime (part of
the process settings); :func:`check_runtime` is the cheap start-up check that refuses to start
with a message naming the missing extra; :func:`create_predictor` loads the model directory's
manifest, verifies the file and returns an ONNX Runtime or Triton predictor whose input and
output agree with the manifest.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ct_triage.models.errors import ModelError, RuntimeUnavailable
from ct_triage.models.manifest import Manifest, load_manifest, verify_file
from ct_triage.models.runtime.base import Predictor

if TYPE_CHECKING:
    from ct_triage.models.runtime.triton import TritonPredictor

logger = logging.getLogger(__name__)

#: What to install for the Triton runtime (named in every related error).
TRITON_EXTRA_HINT = "pip install 'ct-triage-models[triton]'"


class RuntimeConfig(BaseModel):
    """How to run the network: ONNX Runtime in-process, or a Triton Inference Server.

    The defaults are the product's (the server's settings compose this type, see
    ``ct_triage.server.settings``): one place for each of them.

    Parameters
    ----------
    model_dir
        Folder holding ``manifest.json`` and the ONNX file; ``None``: the shipped weights.
    kind
        ``"onnxruntime"`` (in-process) or ``"triton"`` (remote server).
    provider
        ONNX Runtime execution provider: ``"cpu"``, ``"cuda"`` or ``"tensorrt"``.
    strict
        Refuse to fall back to another execution provider.
    threads
        CPU intra-op threads (``None``: ONNX Runtime decides).
    max_batch
        Largest batch of slices per network call (the segmenter's batch too).
    z_step_mm
        On series thinner than this, the 2-D network runs about every this many mm and the
        slices between get class probabilities interpolated in z (``0``: every slice). On the
        1 mm benchmark phantom 2 mm halves the network time and moves the total % of lung
        involved by 0.03 pp; series of 2 mm or thicker are not affected.
    device_id
        GPU index for CUDA / TensorRT.
    fp16
        FP16 compute with FP32 inputs/outputs. TensorRT: ``trt_fp16_enable`` on the FP32
        model. CUDA: the verified ``<stem>.fp16.onnx`` variant
        (:mod:`ct_triage.models.runtime.fp16`). CPU: ignored with a warning (no speed-up).
    trt_cache_dir
        TensorRT engine (and timing) cache directory; ``None`` rebuilds engines at each start.
    trt_max_workspace_bytes
        TensorRT builder workspace.
    cudnn_conv_algo_search
        CUDA provider's cuDNN convolution algorithm search.
    io_binding
        Explicit GPU IO binding (ignored on CPU).
    triton_url
        ``host:port``, ``http://host:port``, ``https://host:port`` or ``grpc://host:port``.
    triton_protocol
        ``"http"`` or ``"grpc"``.
    triton_model_name, triton_model_version
        The model in the Triton repository (``""``: the server's version policy).
    triton_timeout_s
        Network timeout of each Triton call.
    triton_ssl, triton_ssl_ca, triton_ssl_cert, triton_ssl_key
        TLS to the server (CA bundle, client certificate and key for mutual TLS).
    triton_site_id
        This site's opaque id, sent with each request (metrics and quotas of a shared pool).
    triton_retries, triton_retry_backoff_s
        Retries after a transient failure, and the first delay (doubling each retry).
    triton_fallback
        ``"local"``: while the pool is down, run the network on this site's CPU (ONNX Runtime,
        ``threads``); ``"none"``: the study fails and its job is retried with backoff.
    triton_retry_after_s
        With the fallback, how long after a pool failure studies go straight to the fallback.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_dir: Path | None = None
    kind: Literal["onnxruntime", "triton"] = "onnxruntime"
    provider: Literal["cpu", "cuda", "tensorrt"] = "cpu"
    strict: bool = False
    threads: int | None = Field(default=None, ge=1, le=256)
    max_batch: int = Field(default=16, ge=1, le=512)
    z_step_mm: float = Field(default=2.0, ge=0.0, le=10.0)
    device_id: int = Field(default=0, ge=0)
    fp16: bool = False
    trt_cache_dir: Path | None = None
    trt_max_workspace_bytes: int = Field(default=2 << 30, ge=1 << 20)
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = "EXHAUSTIVE"
    io_binding: bool = True
    triton_url: str | None = None
    triton_protocol: Literal["http", "grpc"] = "http"
    triton_model_name: str = Field(default="ct_triage_lesion", min_length=1)
    triton_model_version: str = ""
    triton_timeout_s: float = Field(default=30.0, gt=0)
    triton_ssl: bool = False
    triton_ssl_ca: Path | None = None
    triton_ssl_cert: Path | None = None
    triton_ssl_key: Path | None = None
    triton_site_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    triton_retries: int = Field(default=3, ge=0, le=20)
    triton_retry_backoff_s: float = Field(default=0.5, ge=0)
    triton_fallback: Literal["none", "local"] = "none"
    triton_retry_after_s: float = Field(default=15.0, ge=0)

    @model_validator(mode="after")
    def _triton_needs_url(self) -> RuntimeConfig:
        if self.kind == "triton" and not self.triton_url:
            raise ValueError("kind='triton' needs triton_url (host:port)")
        if (self.triton_ssl_cert is None) != (self.triton_ssl_key is None):
            raise ValueError("triton_ssl_cert and triton_ssl_key go together (mutual TLS)")
        return self


def check_runtime(config: RuntimeConfig) -> None:
    """Start-up check: can the configured runtime run here at all?

    Checks that the packages are installed (without importing them) and, for ONNX Runtime
    GPU providers, that onnxruntime lists them. A listed GPU provider may still fail to load
    its libraries; :func:`create_predictor` then falls back (or, ``strict``, refuses).
    Without ``strict``, a GPU provider that is not listed only logs a WARNING here.

    Raises
    ------
    RuntimeUnavailable
        With a message naming the missing extra.
    """
    if config.kind == "triton":
        from ct_triage.models.runtime import triton

        reason = triton.unavailable_reason(config.triton_protocol)
        if reason is not None:
            raise RuntimeUnavailable(reason)
        return
    from ct_triage.models.runtime import onnx

    if importlib.util.find_spec("onnxruntime") is None:
        raise RuntimeUnavailable("onnxruntime is not installed: pip install ct-triage-models")
    reason = onnx.unavailable_reason(config.provider)
    if reason is None:
        return
    if config.strict:
        raise RuntimeUnavailable(reason)
    logger.warning("%s; the %s request will fall back to the CPU", reason, config.provider)


def create_predictor(config: RuntimeConfig, model_dir: Path) -> Predictor:
    """The predictor for the model in ``model_dir`` (``manifest.json`` + ONNX file).

    The FP32 file is verified against the manifest's SHA-256 in both modes (for Triton it is
    the file the repository was generated from; the server's copy is checked by shape).

    Raises
    ------
    ModelError
        Manifest or model file invalid, or the model's input/output disagree with the
        manifest.
    RuntimeUnavailable
        The runtime cannot run here or cannot be reached.
    """
    check_runtime(config)
    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    path = verify_file(manifest, model_dir)
    if config.kind == "triton":
        fallback = None
        if config.triton_fallback == "local":
            local = config.model_copy(update={"kind": "onnxruntime", "provider": "cpu"})
            fallback = _create_onnx(local, manifest, model_dir, path)
        return _create_triton(config, manifest, fallback)
    return _create_onnx(config, manifest, model_dir, path)


def _create_triton(
    config: RuntimeConfig, manifest: Manifest, fallback: Predictor | None
) -> Predictor:
    """The pool connection: reconnecting, with the local fallback when configured."""
    from ct_triage.models.runtime.triton_pool import PoolPredictor

    url = config.triton_url
    assert url is not None  # enforced by the validator
    return PoolPredictor(
        lambda: _connect_triton(config, manifest),
        url=url,
        fallback=fallback,
        retry_after_s=config.triton_retry_after_s,
        connect_retries=config.triton_retries,
        connect_backoff_s=config.triton_retry_backoff_s,
    )


def _connect_triton(config: RuntimeConfig, manifest: Manifest) -> TritonPredictor:
    from ct_triage.models.runtime.triton import TritonPredictor

    assert config.triton_url is not None
    return TritonPredictor(
        config.triton_url,
        config.triton_model_name,
        protocol=config.triton_protocol,
        model_version=config.triton_model_version,
        timeout_s=config.triton_timeout_s,
        ssl=config.triton_ssl,
        ssl_ca=config.triton_ssl_ca,
        ssl_cert=config.triton_ssl_cert,
        ssl_key=config.triton_ssl_key,
        manifest=manifest,
        max_batch=config.max_batch,
        site_id=config.triton_site_id,
        retries=config.triton_retries,
        retry_backoff_s=config.triton_retry_backoff_s,
    )


def _create_onnx(
    config: RuntimeConfig, manifest: Manifest, model_dir: Path, path: Path
) -> Predictor:
    from ct_triage.models.runtime.onnx import CudaOptions, OnnxPredictor, TensorrtOptions

    spec = manifest.input
    if config.fp16 and config.provider == "cuda":
        from ct_triage.models.runtime.fp16 import verify_fp16_variant

        path = verify_fp16_variant(manifest, model_dir)
    elif config.fp16 and config.provider == "cpu":
        logger.warning("fp16 requested on the CPU provider: running the FP32 model")
    dims = f"{spec.channels}x{spec.height}x{spec.width}"
    opt_batch = min(16, config.max_batch)
    predictor = OnnxPredictor(
        path,
        provider=config.provider,
        threads=config.threads,
        strict=config.strict,
        max_batch=config.max_batch,
        cuda=CudaOptions(
            device_id=config.device_id, cudnn_conv_algo_search=config.cudnn_conv_algo_search
        ),
        tensorrt=TensorrtOptions(
            device_id=config.device_id,
            fp16=config.fp16,
            engine_cache_dir=config.trt_cache_dir,
            max_workspace_bytes=config.trt_max_workspace_bytes,
            profile_shapes=(
                f"{spec.input_name}:1x{dims}",
                f"{spec.input_name}:{opt_batch}x{dims}",
                f"{spec.input_name}:{config.max_batch}x{dims}",
            ),
        ),
        io_binding=config.io_binding,
    )
    check_onnx_shapes(predictor, manifest)
    return predictor


def check_onnx_shapes(predictor: object, manifest: Manifest) -> None:
    """Check an :class:`OnnxPredictor`'s declared input/output against the manifest.

    Raises
    ------
    ModelError
        The input is not ``(N, C, H, W)`` or the output not ``(N, K, H, W)`` of the manifest.
    """
    from ct_triage.models.runtime.onnx import OnnxPredictor

    if not isinstance(predictor, OnnxPredictor):
        return
    spec = manifest.input
    expected_in = (spec.channels, spec.height, spec.width)
    expected_out = (manifest.num_classes, spec.height, spec.width)
    declared_in = predictor.input_shape
    declared_out = predictor.output_shape
    if len(declared_in) != 4 or tuple(declared_in[1:]) != expected_in:
        raise ModelError(
            f"model {predictor.model_path} takes input {declared_in}, "
            f"but its manifest says (N, *{expected_in})"
        )
    if len(declared_out) != 4 or tuple(declared_out[1:]) != expected_out:
        raise ModelError(
            f"model {predictor.model_path} produces {declared_out}, "
            f"but its manifest says (N, *{expected_out})"
        )
