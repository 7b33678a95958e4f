"""One typed settings object per process (STYLE.md item 6).

Values come from keyword arguments, then ``CT_TRIAGE_*`` environment variables, then an
optional ``.env``-style file named by ``CT_TRIAGE_SETTINGS_FILE`` (looked up when a
:class:`Settings` is built, not at import). Nothing is built at import time: the CLI (or
``create_app``) builds one :class:`Settings` and passes it down.

The inference runtime is the compute type itself, :class:`RuntimeConfig`, in the field
``inference`` (its defaults are the only ones): ``CT_TRIAGE_INFERENCE__DEVICE_ID=1`` sets a
nested field, and the flat names deployments already use (``CT_TRIAGE_PROVIDER``,
``CT_TRIAGE_RUNTIME``, ``CT_TRIAGE_INFERENCE_BATCH``, ...; :data:`FLAT_RUNTIME_FIELDS`) keep
working, as environment variables, in the settings file and as keyword arguments.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ct_triage.dicom_bridge.retract import parse_retract_target
from ct_triage.models.quantify import TriageThresholds
from ct_triage.models.runtime.factory import RuntimeConfig
from ct_triage.server.viewer import check_viewer_template

#: The flat settings names (``CT_TRIAGE_<NAME>``, keyword ``<name>``) of the inference runtime
#: that deployments use, and the :class:`RuntimeConfig` field each one sets.
FLAT_RUNTIME_FIELDS: Mapping[str, str] = {
    "model_dir": "model_dir",
    "runtime": "kind",
    "provider": "provider",
    "provider_strict": "strict",
    "inference_threads": "threads",
    "inference_batch": "max_batch",
    "inference_z_step_mm": "z_step_mm",
    "fp16": "fp16",
    "trt_cache_dir": "trt_cache_dir",
    "io_binding": "io_binding",
    "triton_url": "triton_url",
    "triton_protocol": "triton_protocol",
    "triton_model_name": "triton_model_name",
    "triton_model_version": "triton_model_version",
    "triton_timeout_s": "triton_timeout_s",
    "triton_ssl": "triton_ssl",
    "triton_ssl_ca": "triton_ssl_ca",
    "triton_ssl_cert": "triton_ssl_cert",
    "triton_ssl_key": "triton_ssl_key",
    "site_id": "triton_site_id",
    "triton_retries": "triton_retries",
    "triton_retry_backoff_s": "triton_retry_backoff_s",
    "triton_fallback": "triton_fallback",
    "triton_retry_after_s": "triton_retry_after_s",
}

_ENV_PREFIX = "CT_TRIAGE_"


def env_name(loc: Sequence[str | int]) -> str:
    """The environment variable of a settings field, by its validation error location.

    A runtime field with a flat name gives that name (``("inference", "provider")`` ->
    ``CT_TRIAGE_PROVIDER``), another runtime field ``CT_TRIAGE_INFERENCE__<FIELD>``, a
    check of the whole object ``CT_TRIAGE_SETTINGS``.
    """
    parts = [str(p) for p in loc]
    if len(parts) == 2 and parts[0] == "inference":
        flat = {field: name for name, field in FLAT_RUNTIME_FIELDS.items()}
        name = flat.get(parts[1], f"inference__{parts[1]}")
        return _ENV_PREFIX + name.upper()
    return _ENV_PREFIX + ("_".join(parts).upper() or "SETTINGS")


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
        env_prefix=_ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    #: The model and how the network runs (ONNX Runtime provider and options, Triton, batch,
    #: z step); see :class:`RuntimeConfig` for each field and its default. ``data_dir`` gives
    #: the TensorRT engine cache when none is set (:meth:`runtime_config`).
    inference: RuntimeConfig = Field(default_factory=RuntimeConfig)

    #: Keep large freed arrays in the heap for reuse (glibc; see ``ct_triage.server.tuning``).
    malloc_tuning: bool = True
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
    #: count arrived), it is complete after this many seconds without a new instance. A
    #: later instance still supersedes the result (README, "Late instances supersede").
    completion_settle_s: float = Field(default=0.5, ge=0)
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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, the environment, then ``CT_TRIAGE_SETTINGS_FILE`` (read now)."""
        return (
            init_settings,
            _FlatRuntimeEnv(settings_cls),
            _FlatRuntimeDotEnv(settings_cls, env_file=os.environ.get("CT_TRIAGE_SETTINGS_FILE")),
            file_secret_settings,
        )

    @model_validator(mode="before")
    @classmethod
    def _flat_runtime_keywords(cls, data: Any) -> Any:
        """Keyword arguments with a flat runtime name (``provider=...``) set ``inference``."""
        if not isinstance(data, dict) or not FLAT_RUNTIME_FIELDS.keys() & data.keys():
            return data
        data = dict(data)
        inference = data.get("inference") or {}
        if isinstance(inference, RuntimeConfig):
            inference = inference.model_dump(exclude_unset=True)
        inference = dict(inference)
        for flat, field in FLAT_RUNTIME_FIELDS.items():
            if flat in data:
                inference[field] = data.pop(flat)
        data["inference"] = inference
        return data

    @field_validator("inference")
    @classmethod
    def _model_dir_exists(cls, v: RuntimeConfig) -> RuntimeConfig:
        if v.model_dir is not None and not (v.model_dir / "manifest.json").is_file():
            raise ValueError(f"model_dir {v.model_dir} has no manifest.json")
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
        for spec in v:
            parse_retract_target(spec)
        return v

    @field_validator("viewer_url_template")
    @classmethod
    def _viewer_template(cls, v: str | None) -> str | None:
        if v is not None:
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
        return self

    def runtime_config(self) -> RuntimeConfig:
        """The inference runtime, with the TensorRT engine cache under ``data_dir`` if unset."""
        if self.inference.trt_cache_dir is None and self.inference.provider == "tensorrt":
            return self.inference.model_copy(
                update={"trt_cache_dir": self.data_dir / "tensorrt-cache"}
            )
        return self.inference

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


def _nest_flat_runtime(data: dict[str, Any], env_vars: Mapping[str, str | None]) -> dict[str, Any]:
    """Move the flat runtime variables of ``env_vars`` under ``inference`` in ``data``.

    A nested variable (``CT_TRIAGE_INFERENCE__PROVIDER``) wins over its flat name.
    """
    prefix = _ENV_PREFIX.lower()
    flat: dict[str, Any] = {}
    for name, field in FLAT_RUNTIME_FIELDS.items():
        data.pop(prefix + name, None)  # a settings file's extras arrive under the full name
        value = env_vars.get(prefix + name)
        if value is not None:
            flat[field] = value
    if flat:
        nested = data.get("inference")
        data["inference"] = {**flat, **nested} if isinstance(nested, dict) else flat
    return data


class _FlatRuntimeEnv(EnvSettingsSource):
    """The environment, with the flat runtime names (:data:`FLAT_RUNTIME_FIELDS`)."""

    def __call__(self) -> dict[str, Any]:
        return _nest_flat_runtime(super().__call__(), self.env_vars)


class _FlatRuntimeDotEnv(DotEnvSettingsSource):
    """The settings file, with the flat runtime names (:data:`FLAT_RUNTIME_FIELDS`)."""

    def __call__(self) -> dict[str, Any]:
        return _nest_flat_runtime(super().__call__(), self.env_vars)
