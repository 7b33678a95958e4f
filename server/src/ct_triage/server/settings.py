"""One typed settings object per process (STYLE.md item 6).

Values come from keyword arguments, then ``CT_TRIAGE_*`` environment variables, then an
optional ``.env``-style file named by ``CT_TRIAGE_SETTINGS_FILE``. Nothing is built at import
time: the CLI (or ``create_app``) builds one :class:`Settings` and passes it down.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ct_triage.models.quantify import TriageThresholds
from ct_triage.models.runtime.factory import RuntimeConfig

Provider = Literal["cpu", "cuda", "tensorrt"]


def parse_dimse_node(text: str) -> tuple[str, str, int]:
    """Parse ``"AET@host:port"`` into ``(aet, host, port)`` with a clear error."""
    aet, sep, hostport = text.partition("@")
    host, sep2, port = hostport.rpartition(":")
    if not sep or not sep2 or not aet or not host or not port.isdigit():
        raise ValueError(f"DICOM node {text!r} must look like AET@host:port")
    if len(aet) > 16:
        raise ValueError(f"AE title {aet!r} is longer than 16 characters")
    if not 0 < int(port) < 65536:
        raise ValueError(f"DICOM node {text!r}: port out of range")
    return aet, host, int(port)


class Settings(BaseSettings):
    """Configuration of chest-ct-triage (environment prefix ``CT_TRIAGE_``)."""

    model_config = SettingsConfigDict(
        env_prefix="CT_TRIAGE_",
        env_file=os.environ.get("CT_TRIAGE_SETTINGS_FILE"),
        extra="forbid",
        frozen=True,
    )

    #: Folder holding ``manifest.json`` and the ONNX file; ``None`` = the shipped model.
    model_dir: Path | None = None
    #: Inference execution provider requested (the one actually used is reported).
    provider: Provider = "cpu"
    #: Threads for CPU inference; ``None`` lets ONNX Runtime decide.
    inference_threads: int | None = Field(default=None, ge=1, le=256)
    #: Where the network runs: ONNX Runtime in this process, or a Triton Inference Server.
    runtime: Literal["onnxruntime", "triton"] = "onnxruntime"
    #: Refuse to start when the requested provider cannot run (no CPU fallback).
    provider_strict: bool = False
    #: FP16 compute on the GPU (TensorRT: FP16 kernels; CUDA: the verified FP16 model file).
    fp16: bool = False
    #: TensorRT engine cache; ``None`` = ``<data_dir>/tensorrt-cache``.
    trt_cache_dir: Path | None = None
    #: Bind inputs and outputs to GPU memory explicitly (CUDA / TensorRT; ignored on CPU).
    io_binding: bool = True
    #: Largest batch of slices per network call.
    inference_batch: int = Field(default=16, ge=1, le=512)
    #: On thinner series the 2-D network runs about every this many mm and the slices between
    #: get class probabilities interpolated in z (0: every slice). On the 1 mm benchmark
    #: phantom 2 mm halves the network time and moves the total % of lung involved by
    #: 0.03 pp; series of 2 mm or thicker are not affected.
    inference_z_step_mm: float = Field(default=2.0, ge=0.0, le=10.0)
    #: Keep large freed arrays in the heap for reuse (glibc; see ``ct_triage.server.tuning``).
    malloc_tuning: bool = True
    #: Triton: ``host:port`` (or ``http://``, ``https://``, ``grpc://`` URL), protocol, model.
    triton_url: str | None = None
    triton_protocol: Literal["http", "grpc"] = "http"
    triton_model_name: str = Field(default="ct_triage_lesion", min_length=1)
    triton_model_version: str = ""
    triton_timeout_s: float = Field(default=30.0, gt=0)
    #: Triton over TLS: CA bundle, and client certificate + key for mutual TLS.
    triton_ssl: bool = False
    triton_ssl_ca: Path | None = None
    triton_ssl_cert: Path | None = None
    triton_ssl_key: Path | None = None
    #: This site's opaque id for a shared Triton pool (metrics, quotas): sent with every
    #: request; never derived from a patient, study or AE title. ``None`` sends none.
    site_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    #: Triton: retries after a transient failure, first delay (doubling); while the pool is
    #: down, "local" runs the network on this site's CPU, "none" retries the study's job later;
    #: after a pool failure, studies go to the fallback for this long before the pool is tried.
    triton_retries: int = Field(default=3, ge=0, le=20)
    triton_retry_backoff_s: float = Field(default=0.5, ge=0)
    triton_fallback: Literal["none", "local"] = "none"
    triton_retry_after_s: float = Field(default=15.0, ge=0)

    #: Series selection.
    min_slices: int = Field(default=40, ge=1)
    max_slice_thickness_mm: float = Field(default=5.0, gt=0)
    #: Decline every DERIVED/SECONDARY series (default: an axial one without a reformat marker
    #: is analysed when no ORIGINAL/PRIMARY series ranks higher, with a note).
    require_original_primary: bool = False

    #: Triage thresholds (total percent of lung involved).
    triage_mild_min_percent: float = 0.5
    triage_mild_min_lesion_ml: float = 10.0
    triage_moderate_min_percent: float = 25.0
    triage_severe_min_percent: float = 50.0

    #: Overlay series: "key" slices only, or "all" source slices.
    overlay_slices: Literal["key", "all"] = "key"

    # -- DICOM bridge --------------------------------------------------------------------
    #: Working folder: spool, results, outbox, state databases.
    data_dir: Path = Path("ct-triage-data")
    #: Our AE title and DIMSE listener (Storage SCP): ``None`` disables the listener,
    #: ``0`` lets the OS pick a free port.
    ae_title: str = Field(default="CT_TRIAGE", min_length=1, max_length=16)
    dicom_host: str = "0.0.0.0"
    dicom_port: int | None = Field(default=11112, ge=0, le=65535)
    #: Calling AE titles allowed to send to us; empty = any.
    allowed_calling_aets: list[str] = Field(default_factory=list)
    #: A series is complete after this many seconds without a new instance (the fallback
    #: when the sender gives no sign; see "DICOM bridge" in the README and
    #: ``ct_triage.dicom_bridge.spool``).
    quiet_period_s: float = Field(default=5.0, gt=0)
    #: Once the sender released the association that carried a series (or its expected
    #: count arrived), it is complete after this many seconds without a new instance.
    completion_settle_s: float = Field(default=1.0, ge=0)
    #: A series whose sender aborted the association is held this long for a re-send, then
    #: analysed as it is.
    aborted_series_wait_s: float = Field(default=300.0, ge=0)
    #: Where superseded results (a late instance re-ran the series) are deleted from the
    #: PACS once the new result is delivered: "orthanc:http://host:8042" (Orthanc REST API)
    #: and/or "dicomweb:https://host/dicom-web" (DICOMweb DELETE, e.g. Google Cloud
    #: Healthcare, Azure DICOM service); credentials are the ``pacs_dicomweb_*`` ones.
    retract_superseded: list[str] = Field(default_factory=list)
    #: Received instances of analysed (or failed) series are deleted this many days after
    #: their last arrival, checked hourly; results are kept. ``0`` keeps everything.
    spool_retention_days: float = Field(default=7.0, ge=0)
    #: DICOM TLS (PS3.15 B.1): certificate + key enable TLS on the listener and client.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    #: The PACS we query/retrieve from: "AET@host:port" (DIMSE) and/or a DICOMweb URL.
    pacs: str | None = None
    pacs_dicomweb_url: str | None = None
    pacs_dicomweb_user: str | None = None
    pacs_dicomweb_password: str | None = Field(default=None, repr=False)
    pacs_dicomweb_token: str | None = Field(default=None, repr=False)
    #: How pulled studies are retrieved: C-MOVE to us, C-GET, or WADO-RS.
    retrieve_method: Literal["c-move", "c-get", "wado"] = "c-get"
    #: Where results go: "dimse:AET@host:port" and/or "stow:https://host/dicom-web".
    destinations: list[str] = Field(default_factory=list)
    delivery_max_attempts: int = Field(default=5, ge=1)
    delivery_backoff_s: float = Field(default=2.0, gt=0)
    #: Delivery timeouts, per step and per destination (each destination is sent to by a
    #: thread of its own, so a silent one delays only itself): TCP connect; association
    #: negotiation (A-ASSOCIATE-AC/RJ, A-RELEASE-RP); each C-STORE response, and each STOW-RS
    #: request.
    delivery_connect_timeout_s: float = Field(default=10.0, gt=0)
    delivery_association_timeout_s: float = Field(default=30.0, gt=0)
    delivery_store_timeout_s: float = Field(default=120.0, gt=0)
    #: ``serve`` checks at start-up that the configured PACS answers C-ECHO/QIDO-RS. When it
    #: does not, ``serve`` starts degraded (``/healthz`` and ``ct-triage health`` say why) and
    #: retries every ``startup_retry_s``; with ``strict_startup`` it refuses to start instead.
    pacs_check_at_startup: bool = True
    #: ``serve`` runs the network once at start-up, so the first study does not pay ONNX
    #: Runtime's first-call set-up.
    startup_warmup: bool = True
    strict_startup: bool = False
    startup_retry_s: float = Field(default=10.0, gt=0)
    #: Extra CA certificate(s) to trust for DICOMweb and Triton over TLS (a PEM file or a
    #: folder of them), added to the default bundle, e.g. a hospital CA.
    extra_ca_certs: Path | None = None
    #: Pull mode: poll the PACS for new CT studies every N seconds (0 = off).
    poll_interval_s: float = Field(default=0.0, ge=0)
    #: Pull mode: how many days back the first poll looks.
    poll_lookback_days: int = Field(default=1, ge=0)

    # -- server --------------------------------------------------------------------------
    #: Job store: ``sqlite:///path`` or ``postgresql://user:pass@host/db``; ``None`` means
    #: ``sqlite:///<data_dir>/jobs.db``.
    job_store_url: str | None = Field(default=None, repr=False)
    #: In-process analysis workers.
    workers: int = Field(default=1, ge=0, le=64)
    #: HTTP API and worklist page.
    http_host: str = "0.0.0.0"
    http_port: int | None = Field(default=8000, ge=0, le=65535)  # None = no HTTP API
    #: HTTPS: certificate and key (PEM) for the HTTP server.
    http_tls_cert: Path | None = None
    http_tls_key: Path | None = None
    #: Uploads: largest body, and the zip limits (zip-bomb and zip-slip safe extraction).
    upload_max_bytes: int = Field(default=2 * 1024**3, gt=0)
    upload_zip_max_entries: int = Field(default=50_000, ge=1)
    upload_zip_max_total_bytes: int = Field(default=8 * 1024**3, gt=0)
    upload_zip_max_ratio: float = Field(default=100.0, gt=1)

    #: Log format for the CLI: "text" or "json".
    log_format: Literal["text", "json"] = "text"
    #: Link from the worklist into the site's viewer: an http(s) URL (or a path on this
    #: server) with ``{study}`` (StudyInstanceUID) and/or ``{accession}``, e.g. OHIF's
    #: ``http://pacs/ohif/viewer?StudyInstanceUIDs={study}``. ``None``: no link.
    viewer_url_template: str | None = None

    @field_validator("model_dir")
    @classmethod
    def _model_dir_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not (v / "manifest.json").is_file():
            raise ValueError(f"model_dir {v} has no manifest.json")
        return v

    @field_validator("pacs")
    @classmethod
    def _pacs_format(cls, v: str | None) -> str | None:
        if v is not None:
            parse_dimse_node(v)
        return v

    @field_validator("destinations")
    @classmethod
    def _destinations_format(cls, v: list[str]) -> list[str]:
        for d in v:
            kind, _, target = d.partition(":")
            if kind == "dimse":
                parse_dimse_node(target)
            elif kind == "stow":
                if not target.startswith(("http://", "https://")):
                    raise ValueError(f"destination {d!r}: stow needs an http(s) URL")
            else:
                raise ValueError(
                    f"destination {d!r} must start with 'dimse:' (AET@host:port) or 'stow:' (URL)"
                )
        return v

    @field_validator("retract_superseded")
    @classmethod
    def _retract_format(cls, v: list[str]) -> list[str]:
        from ct_triage.dicom_bridge.retract import parse_retract_target

        for spec in v:
            parse_retract_target(spec)
        return v

    @field_validator("viewer_url_template")
    @classmethod
    def _viewer_template(cls, v: str | None) -> str | None:
        if v is not None:
            from ct_triage.server.viewer import check_viewer_template

            check_viewer_template(v)
        return v

    @model_validator(mode="after")
    def _thresholds_valid(self) -> Settings:
        self.thresholds()  # raises ValueError with a clear message
        if (self.http_tls_cert is None) != (self.http_tls_key is None):
            raise ValueError("http_tls_cert and http_tls_key must be given together")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.pacs_dicomweb_token and self.pacs_dicomweb_user:
            raise ValueError("give either a DICOMweb user/password or a token, not both")
        self.runtime_config()  # raises ValueError, e.g. runtime=triton without triton_url
        return self

    def runtime_config(self) -> RuntimeConfig:
        """The inference runtime as the compute type (validated there)."""
        trt_cache = self.trt_cache_dir
        if trt_cache is None and self.provider == "tensorrt":
            trt_cache = self.data_dir / "tensorrt-cache"
        return RuntimeConfig(
            kind=self.runtime,
            provider=self.provider,
            strict=self.provider_strict,
            threads=self.inference_threads,
            max_batch=max(self.inference_batch, 1),
            fp16=self.fp16,
            trt_cache_dir=trt_cache,
            io_binding=self.io_binding,
            triton_url=self.triton_url,
            triton_protocol=self.triton_protocol,
            triton_model_name=self.triton_model_name,
            triton_model_version=self.triton_model_version,
            triton_timeout_s=self.triton_timeout_s,
            triton_ssl=self.triton_ssl,
            triton_ssl_ca=self.triton_ssl_ca,
            triton_ssl_cert=self.triton_ssl_cert,
            triton_ssl_key=self.triton_ssl_key,
            triton_site_id=self.site_id,
            triton_retries=self.triton_retries,
            triton_retry_backoff_s=self.triton_retry_backoff_s,
            triton_fallback=self.triton_fallback,
            triton_retry_after_s=self.triton_retry_after_s,
        )

    def resolved_job_store_url(self) -> str:
        """The job store URL, defaulting to SQLite under ``data_dir``."""
        return self.job_store_url or f"sqlite:///{(self.data_dir / 'jobs.db').resolve()}"

    def thresholds(self) -> TriageThresholds:
        """The triage thresholds as the compute type."""
        return TriageThresholds(
            mild_min_percent=self.triage_mild_min_percent,
            mild_min_lesion_ml=self.triage_mild_min_lesion_ml,
            moderate_min_percent=self.triage_moderate_min_percent,
            severe_min_percent=self.triage_severe_min_percent,
        )
