"""Run the application with uvicorn in a thread, over HTTPS when a certificate is given."""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI

from ct_triage.models.errors import TriageError
from ct_triage.server.api.config import ApiConfig
from ct_triage.server.settings import Settings

__all__ = ["HttpServer", "uvicorn_config"]


def uvicorn_config(
    app: FastAPI, settings: Settings, *, host: str | None = None, port: int | None = None
) -> uvicorn.Config:
    """The uvicorn configuration of the API.

    Parameters
    ----------
    app
        From :func:`~ct_triage.server.api.app.create_app`.
    settings
        ``http_host``/``http_port``, ``http_tls_cert`` and ``http_tls_key`` (PEM; both
        enable HTTPS).
    host, port
        Override the settings (``port=0``: a free port chosen by the OS).

    Raises
    ------
    TriageError
        No port: the settings disable the HTTP API (``http_port`` unset) and none is given.

    Returns
    -------
    uvicorn.Config
        Logging is left to the CLI (``log_config=None``); no ``Server`` header.
    """
    cfg = ApiConfig.from_settings(settings)
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise TriageError("http_tls_cert and http_tls_key must be given together")
    ssl: dict[str, Any] = {}
    if cfg.tls_cert is not None and cfg.tls_key is not None:
        ssl = {"ssl_certfile": str(cfg.tls_cert), "ssl_keyfile": str(cfg.tls_key)}
    if port is None:
        port = settings.http_port
    if port is None:
        raise TriageError("the HTTP API is disabled (http_port is not set)")
    return uvicorn.Config(
        app,
        host=host if host is not None else settings.http_host,
        port=port,
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="on",
        **ssl,
    )


class HttpServer:
    """A uvicorn server in a background thread (used by ``serve`` and by the tests).

    Parameters
    ----------
    config
        From :func:`uvicorn_config`.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        self.config = config
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="http-api", daemon=True)

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        sockets = self.server.servers[0].sockets
        return int(sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """``http(s)://host:port``."""
        scheme = "https" if self.config.ssl_certfile else "http"
        host = self.config.host if self.config.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"{scheme}://{host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> HttpServer:
        """Start serving; return once the socket is bound and the lifespan has run."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive():
                raise TriageError("the HTTP server failed to start (see the log)")
            if time.monotonic() > deadline:
                self.stop()
                raise TriageError(f"the HTTP server did not start within {timeout_s:g} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask uvicorn to finish and wait for the thread."""
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
