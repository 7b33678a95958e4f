"""Serve OHIF's prebuilt ``dist/`` same-origin with a ``/dicom-web`` proxy to a test Orthanc.

The npm package ``@ohif/app`` ships the built viewer (``scripts/install-ohif.sh`` unpacks it
into a cache folder). This module serves it from a small threaded HTTP server on a free
loopback port:

* ``/app-config.js`` is ours: one DICOMweb data source at ``/dicom-web`` on the same origin;
* ``/dicom-web/...`` is forwarded to Orthanc's DICOMweb root with Orthanc's basic-auth
  credentials added; absolute URLs to Orthanc in its JSON answers (bulk data URIs) are
  rewritten to this origin, so the browser never talks to Orthanc itself;
* any other path that is not a file of ``dist/`` gets ``index.html`` (OHIF is a single-page
  app with client-side routes such as ``/viewer``).
"""

from __future__ import annotations

import json
import mimetypes
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

#: The pinned OHIF version (scripts/install-ohif.sh installs the same).
OHIF_VERSION = "3.13.2"


def npm_cache() -> Path:
    """Where scripts/install-ohif.sh puts its packages."""
    env = os.environ.get("CT_TRIAGE_NPM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ct-triage" / "npm"


def ohif_dist() -> Path:
    """The unpacked ``dist/`` of ``@ohif/app`` (may not exist yet)."""
    return npm_cache() / f"ohif-app-{OHIF_VERSION}" / "package" / "dist"


def app_config() -> str:
    """OHIF's ``window.config``: one DICOMweb source at ``/dicom-web`` (same origin)."""
    source: dict[str, Any] = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": "test Orthanc",
            "name": "orthanc",
            "wadoUriRoot": "/dicom-web",
            "qidoRoot": "/dicom-web",
            "wadoRoot": "/dicom-web",
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "dicomweb",
        "dataSources": [source],
    }
    return "window.config = " + json.dumps(config, indent=2) + ";\n"


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """The browser cancels requests it no longer needs (a broken pipe is no error)."""
        return


class OhifServer:
    """OHIF ``dist/`` plus a ``/dicom-web`` proxy on ``127.0.0.1:port``.

    Parameters
    ----------
    dist
        OHIF's built ``dist/`` folder.
    dicomweb_url
        Orthanc's DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``.
    auth
        Orthanc's basic-auth user and password.
    port
        Port to listen on.
    """

    def __init__(self, dist: Path, dicomweb_url: str, auth: tuple[str, str], port: int) -> None:
        self.dist = dist.resolve()
        self.upstream = dicomweb_url.rstrip("/")
        self.upstream_origin = self.upstream.rsplit("/dicom-web", 1)[0]
        self.port = port
        self.requests: list[tuple[str, int]] = []
        self._client = httpx.Client(auth=auth, timeout=60.0)
        self._config = app_config().encode()
        self._httpd = _QuietServer(("127.0.0.1", port), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._client.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return  # quiet: the test records status codes instead

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path.startswith("/dicom-web/"):
                    self._proxy()
                elif path == "/app-config.js":
                    self._send(200, "application/javascript", server._config)
                else:
                    self._static(path)

            def _send(self, status: int, ctype: str, body: bytes) -> None:
                server.requests.append((self.path, status))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def _static(self, path: str) -> None:
                target = (server.dist / path.lstrip("/")).resolve()
                if not target.is_relative_to(server.dist) or not target.is_file():
                    target = server.dist / "index.html"  # client-side route
                ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
                if target.suffix == ".wasm":
                    ctype = "application/wasm"
                self._send(200, ctype, target.read_bytes())

            def _proxy(self) -> None:
                url = server.upstream + self.path[len("/dicom-web") :]
                headers = {"Accept": self.headers.get("Accept", "*/*")}
                try:
                    r = server._client.get(url, headers=headers)
                except httpx.HTTPError as exc:
                    self._send(502, "text/plain", str(exc).encode())
                    return
                body = r.content
                ctype = r.headers.get("Content-Type", "application/octet-stream")
                if "json" in ctype:
                    body = body.replace(server.upstream_origin.encode(), server.url.encode())
                self._send(r.status_code, ctype, body)

        return Handler
