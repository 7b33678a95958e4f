"""Triton Inference Server implementation of the :class:`~ct_triage.models.runtime.base.Predictor`.

The network runs on a Triton server (KServe v2 protocol, HTTP/REST or gRPC, via
``tritonclient``); this process only sends the preprocessed pixel tensor and reads back the
class probabilities. **Nothing else goes over the wire**: no DICOM header, no patient or study
identifier, no UID, no request id derived from them. That is what makes the design's
multi-site mode safe: several hospitals' bridges share one GPU pool, and only anonymous
``(N, C, H, W)`` float32 windowed-HU tensors leave each site (over TLS: ``ssl=True``).

Install with the ``triton`` extra (``pip install 'ct-triage-models[triton]'``); imports are
lazy, and :func:`unavailable_reason` says what is missing.
"""

from __future__ import annotations

import http.client
import importlib
import importlib.util
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from ct_triage.models.errors import InferenceError, ModelError, RuntimeUnavailable
from ct_triage.models.manifest import Manifest

logger = logging.getLogger(__name__)

#: What to install for this runtime.
TRITON_EXTRA_HINT = "pip install 'ct-triage-models[triton]'"

#: Status codes worth a retry (server overloaded, restarting, slow, or a proxy hiccup).
_TRANSIENT = frozenset(
    {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "502", "503", "504"}
)

#: The request parameter that carries the site's opaque id (see :mod:`.triton_pymodel`).
SITE_PARAMETER = "ct_triage_site"
#: The same id as an HTTP header / gRPC metadata key, for a gateway in front of the pool.
SITE_HEADER = "x-ct-triage-site"
#: What a site id may contain: an opaque label, never derived from a patient or study.
SITE_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"

T = TypeVar("T")


def unavailable_reason(protocol: str = "http") -> str | None:
    """Why the Triton runtime cannot run here (naming the extra), or ``None``.

    Looks for the packages without importing them.
    """
    if protocol not in ("http", "grpc"):
        return f"unknown Triton protocol {protocol!r}: choose http or grpc"
    needed = ["tritonclient", f"tritonclient.{protocol}"]
    needed.append("geventhttpclient" if protocol == "http" else "grpc")
    for module in needed:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return (
                f"Triton runtime ({protocol}) needs the 'triton' extra: {TRITON_EXTRA_HINT} "
                f"({module} is not installed)"
            )
    return None


def is_available(protocol: str = "http") -> bool:
    """Whether tritonclient for ``protocol`` (``"http"`` or ``"grpc"``) is installed."""
    return unavailable_reason(protocol) is None


def _one_line(exc: BaseException) -> str:
    """The exception's text on one line (tritonclient and gRPC messages span several)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _split_url(url: str, protocol: str, ssl: bool) -> tuple[str, str, bool]:
    """``(host:port, scheme, ssl)`` from a URL with or without a scheme."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    scheme = scheme.lower()
    if scheme == "https":
        ssl = True
    elif scheme not in ("", "http", "grpc", "grpcs"):
        raise RuntimeUnavailable(f"Triton URL {url!r}: unsupported scheme {scheme!r}")
    if scheme == "grpcs":
        ssl = True
    host = rest.rstrip("/")
    if not host or "/" in host:
        raise RuntimeUnavailable(f"Triton URL {url!r} must be host:port (no path)")
    shown = ("https" if ssl else "http") if protocol == "http" else ("grpcs" if ssl else "grpc")
    return host, shown, ssl


class TritonPredictor:
    """Runs the network on a Triton Inference Server.

    On construction the server must be live and ready, the model ready, and its metadata
    must match the manifest: one FP32 input ``(-1 | N, C, H, W)`` and one FP32 output
    ``(-1 | N, K, H, W)`` with the manifest's names, channels, size and class count.

    Only the preprocessed pixel tensor is sent (binary, FP32): no DICOM header and no
    identifier (see the module docstring).

    Parameters
    ----------
    url
        ``host:port`` (``http://``, ``https://``, ``grpc://`` prefixes accepted).
    model_name
        The model in the server's repository (e.g. ``ct_triage_lesion``).
    protocol
        ``"http"`` (KServe v2 REST with the binary-data extension) or ``"grpc"``.
    model_version
        ``""``: the server's version policy picks.
    timeout_s
        Connection and network timeout of each call.
    ssl, ssl_ca, ssl_cert, ssl_key
        TLS, CA bundle, and client certificate/key for mutual TLS.
    manifest
        The model's manifest to validate the server's model against; ``None`` skips the
        shape check (the model must still have FP32 IO of rank 4).
    max_batch
        Largest batch per request; the server's ``max_batch_size`` lowers it.
    site_id
        This site's opaque id, sent with every inference request as the request parameter
        ``ct_triage_site`` and the header ``x-ct-triage-site`` (metrics and quotas of a shared
        pool). Never derived from a patient or study; ``None`` sends nothing.
    retries
        Retries of a chunk after a transient failure (connection refused or reset, timeout,
        gRPC ``UNAVAILABLE``/``DEADLINE_EXCEEDED``, HTTP 502/503/504).
    retry_backoff_s
        The first retry's delay; each further retry doubles it.

    Raises
    ------
    RuntimeUnavailable
        tritonclient missing, the server unreachable (the URL is named), not live or not
        ready, or the model not ready.
    ModelError
        The served model's inputs/outputs disagree with the manifest.
    """

    def __init__(
        self,
        url: str,
        model_name: str,
        *,
        protocol: Literal["http", "grpc"] = "http",
        model_version: str = "",
        timeout_s: float = 30.0,
        ssl: bool = False,
        ssl_ca: Path | None = None,
        ssl_cert: Path | None = None,
        ssl_key: Path | None = None,
        manifest: Manifest | None = None,
        max_batch: int = 32,
        site_id: str | None = None,
        retries: int = 3,
        retry_backoff_s: float = 0.5,
    ) -> None:
        reason = unavailable_reason(protocol)
        if reason is not None:
            raise RuntimeUnavailable(reason)
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if retries < 0 or retry_backoff_s < 0:
            raise ValueError("retries and retry_backoff_s must be >= 0")
        if site_id is not None and not re.match(SITE_ID_PATTERN, site_id):
            raise ValueError(f"site id must match {SITE_ID_PATTERN} (an opaque label)")
        self._site_id = site_id
        self._retries = retries
        self._backoff_s = float(retry_backoff_s)
        self._host, scheme, self._ssl = _split_url(url, protocol, ssl)
        self._protocol = protocol
        self._model = model_name
        self._version = model_version
        self._timeout_s = float(timeout_s)
        self._ssl_ca, self._ssl_cert, self._ssl_key = ssl_ca, ssl_cert, ssl_key
        self._url = f"{scheme}://{self._host}"
        where = f"{model_name}/{model_version}" if model_version else model_name
        self._provider = f"triton:{self._url}/{where}"
        self._utils: Any = importlib.import_module("tritonclient.utils")
        self._module: Any = importlib.import_module(f"tritonclient.{protocol}")
        # tritonclient.http runs on gevent: a client belongs to the thread that made it.
        self._local = threading.local()
        self._grpc_client: Any = None
        self._max_batch = max_batch
        self._check_server()
        self._input_name, self._output_name = self._check_model(manifest)
        logger.info("Triton model ready: %s", self._provider)

    # -- connection ------------------------------------------------------------------------

    def _client(self) -> Any:
        if self._protocol == "grpc":
            if self._grpc_client is None:  # the gRPC client is thread-safe: one is enough
                self._grpc_client = self._new_client()
            return self._grpc_client
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._new_client()
            self._local.client = client
        return client

    def _new_client(self) -> Any:
        try:
            if self._protocol == "http":
                ssl_options: dict[str, str] = {}
                if self._ssl_ca is not None:
                    ssl_options["ca_certs"] = str(self._ssl_ca)
                if self._ssl_cert is not None and self._ssl_key is not None:
                    ssl_options["certfile"] = str(self._ssl_cert)
                    ssl_options["keyfile"] = str(self._ssl_key)
                return self._module.InferenceServerClient(
                    url=self._host,
                    connection_timeout=self._timeout_s,
                    network_timeout=self._timeout_s,
                    ssl=self._ssl,
                    ssl_options=ssl_options or None,
                )
            return self._module.InferenceServerClient(
                url=self._host,
                ssl=self._ssl,
                root_certificates=str(self._ssl_ca) if self._ssl_ca else None,
                private_key=str(self._ssl_key) if self._ssl_key else None,
                certificate_chain=str(self._ssl_cert) if self._ssl_cert else None,
            )
        except Exception as exc:
            raise RuntimeUnavailable(
                f"cannot create a Triton {self._protocol} client for {self._url}: {exc}"
            ) from exc

    def _kw(self) -> dict[str, Any]:
        """Per-call timeout keyword (gRPC only; HTTP timeouts are set on the client)."""
        return {"client_timeout": self._timeout_s} if self._protocol == "grpc" else {}

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run a control-plane call; any failure means the server is not usable."""
        try:
            return fn()
        except Exception as exc:
            raise RuntimeUnavailable(
                f"Triton server at {self._url} is unreachable or failed ({what}): {_one_line(exc)}"
            ) from exc

    def _check_server(self) -> None:
        client = self._client()
        if not self._call("health/live", lambda: client.is_server_live(**self._kw())):
            raise RuntimeUnavailable(f"Triton server at {self._url} is not live")
        if not self._call("health/ready", lambda: client.is_server_ready(**self._kw())):
            raise RuntimeUnavailable(f"Triton server at {self._url} is not ready")
        ready = self._call(
            "model ready",
            lambda: client.is_model_ready(self._model, self._version, **self._kw()),
        )
        if not ready:
            raise RuntimeUnavailable(
                f"model {self._model!r} (version {self._version or 'default'}) is not ready "
                f"on the Triton server at {self._url}: is it in the model repository?"
            )

    def _check_model(self, manifest: Manifest | None) -> tuple[str, str]:
        client = self._client()
        meta: dict[str, Any] = self._call(
            "model metadata",
            lambda: (
                client.get_model_metadata(self._model, self._version, as_json=True, **self._kw())
                if self._protocol == "grpc"
                else client.get_model_metadata(self._model, self._version)
            ),
        )
        try:
            config: dict[str, Any] = (
                client.get_model_config(self._model, self._version, as_json=True, **self._kw())
                if self._protocol == "grpc"
                else client.get_model_config(self._model, self._version)
            )
        except Exception as exc:  # the config endpoint is optional for validation
            logger.debug("Triton model config unavailable (%s); using max_batch", exc)
            config = {}
        config = config.get("config", config)
        server_max = int(config.get("max_batch_size", 0) or 0)
        if server_max > 0:
            self._max_batch = min(self._max_batch, server_max)
        inputs, outputs = meta.get("inputs", []), meta.get("outputs", [])
        where = f"Triton model {self._model!r} at {self._url}"
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(
                f"{where} has {len(inputs)} inputs and {len(outputs)} outputs; expected 1 and 1"
            )
        (inp,), (out,) = inputs, outputs
        for tensor, role in ((inp, "input"), (out, "output")):
            if tensor.get("datatype") != "FP32":
                raise ModelError(
                    f"{where}: {role} {tensor.get('name')!r} is {tensor.get('datatype')}, "
                    "expected FP32 (FP16 runs inside the model; its IO stays FP32)"
                )
        in_shape = tuple(int(d) for d in inp.get("shape", []))
        out_shape = tuple(int(d) for d in out.get("shape", []))
        if manifest is not None:
            spec = manifest.input
            want_in = (spec.channels, spec.height, spec.width)
            want_out = (manifest.num_classes, spec.height, spec.width)
            if (inp.get("name"), out.get("name")) != (spec.input_name, spec.output_name):
                raise ModelError(
                    f"{where} has input {inp.get('name')!r} and output {out.get('name')!r}; "
                    f"the manifest says {spec.input_name!r} and {spec.output_name!r}"
                )
            if len(in_shape) != 4 or in_shape[1:] != want_in:
                raise ModelError(
                    f"{where} takes input {in_shape}, but the manifest says (N, *{want_in})"
                )
            if len(out_shape) != 4 or out_shape[1:] != want_out:
                raise ModelError(
                    f"{where} produces {out_shape}, but the manifest says (N, *{want_out})"
                )
        elif len(in_shape) != 4 or len(out_shape) != 4:
            raise ModelError(f"{where}: expected rank-4 IO, got {in_shape} -> {out_shape}")
        return str(inp["name"]), str(out["name"])

    # -- Predictor ---------------------------------------------------------------------------

    @property
    def provider(self) -> str:
        """E.g. ``triton:http://host:8000/ct_triage_lesion``."""
        return self._provider

    @property
    def max_batch(self) -> int:
        """Largest batch per request (the server's ``max_batch_size`` included)."""
        return self._max_batch

    def predict(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Send ``(N, C, H, W)`` float32 pixels, get ``(N, K, H, W)`` float32 probabilities.

        The batch is split into chunks of :attr:`max_batch`. A transient failure
        (gRPC ``UNAVAILABLE``, HTTP 502/503/504, a dropped or refused connection, a timeout)
        is retried ``retries`` times with exponential backoff, on a fresh connection; a server
        restarted meanwhile answers the retry.

        Raises
        ------
        InferenceError
            Wrong input rank, a server or network failure, or a malformed/non-finite output.
        """
        if batch.ndim != 4:
            raise InferenceError(f"expected a (N, C, H, W) batch, got shape {batch.shape}")
        if batch.shape[0] == 0:
            raise InferenceError("empty batch")
        x = np.ascontiguousarray(batch, dtype=np.float32)
        parts = [
            self._infer_with_retry(x[start : start + self._max_batch])
            for start in range(0, x.shape[0], self._max_batch)
        ]
        result = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        if result.shape[0] != x.shape[0] or result.shape[2:] != x.shape[2:]:
            raise InferenceError(f"{self._provider} returned {result.shape} for {x.shape}")
        if not np.isfinite(result).all():
            raise InferenceError(f"{self._provider} produced non-finite outputs")
        return result

    def _infer_with_retry(self, chunk: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        attempt = 0
        while True:
            try:
                return self._infer(chunk)
            except InferenceError:
                raise
            except Exception as exc:
                if not self._is_transient(exc) or attempt >= self._retries:
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    raise InferenceError(
                        f"{self._provider} failed on a batch of shape {chunk.shape}{tries}: "
                        f"{_one_line(exc)}"
                    ) from exc
                delay = self._backoff_s * (2**attempt)
                attempt += 1
                logger.warning(
                    "transient Triton failure (%s); retry %d of %d in %.1f s",
                    _one_line(exc),
                    attempt,
                    self._retries,
                    delay,
                )
                self._local.client = None  # a fresh connection for the retry
                self._grpc_client = None
                time.sleep(delay)

    def _is_transient(self, exc: Exception) -> bool:
        if isinstance(exc, self._utils.InferenceServerException):
            return str(exc.status()) in _TRANSIENT
        # refused, reset, timed out, or an HTTP exchange cut short (geventhttpclient)
        return isinstance(exc, OSError | EOFError | http.client.HTTPException)

    def _infer(self, chunk: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        module = self._module
        inp = module.InferInput(self._input_name, list(chunk.shape), "FP32")
        if self._protocol == "http":
            inp.set_data_from_numpy(chunk, binary_data=True)
            out = module.InferRequestedOutput(self._output_name, binary_data=True)
        else:
            inp.set_data_from_numpy(chunk)
            out = module.InferRequestedOutput(self._output_name)
        site: dict[str, Any] = {}
        if self._site_id is not None:
            site = {
                "parameters": {SITE_PARAMETER: self._site_id},
                "headers": {SITE_HEADER: self._site_id},
            }
        result = self._client().infer(
            self._model, [inp], model_version=self._version, outputs=[out], **site, **self._kw()
        )
        array = result.as_numpy(self._output_name)
        if array is None:
            raise InferenceError(f"{self._provider} returned no {self._output_name!r} output")
        return np.asarray(array, dtype=np.float32)
