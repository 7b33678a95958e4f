"""Start-up as operators (and containers) need it: a data folder that can be written, a PACS
that may not be up yet, extra CA certificates, and the ``ct-triage health`` probe.

- :func:`check_data_dir` turns an unwritable data folder (a bind mount owned by another
  user) into one line saying which ``chown`` fixes it.
- :class:`ServiceHealth` holds why the service is degraded; ``/healthz`` reports it.
- :class:`PacsWatch` runs the start-up PACS check; when the PACS does not answer it marks the
  service degraded and retries in the background until it does (unless start-up is strict).
- :func:`install_extra_ca` adds a hospital CA to the bundle used for DICOMweb and Triton.
- :func:`probe` is ``ct-triage health``: asks ``/healthz`` on the configured port.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import tempfile
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

from ct_triage.models.errors import TriageError
from ct_triage.server.settings import Settings

__all__ = [
    "PacsWatch",
    "ServiceHealth",
    "check_data_dir",
    "health_url",
    "install_extra_ca",
    "probe",
]

logger = logging.getLogger(__name__)


class StartupError(TriageError):
    """The process cannot start as configured (one line says what to change)."""


def check_data_dir(data_dir: Path) -> None:
    """Make sure ``data_dir`` exists and this process can write to it.

    Raises
    ------
    StartupError
        One line naming the folder, its owner, this process's uid/gid and the ``chown``
        that fixes it (the usual cause: a bind-mounted host folder owned by another user).
    """
    folder = Path(data_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe_file = folder / f".write-test-{uuid.uuid4().hex}"
        probe_file.write_bytes(b"")
        probe_file.unlink()
    except OSError as exc:
        uid, gid = os.getuid(), os.getgid()
        existing = (
            folder if folder.exists() else next((p for p in folder.parents if p.exists()), folder)
        )
        try:
            st = existing.stat()
            owner = f"owned by uid {st.st_uid}:{st.st_gid}"
        except OSError:
            owner = "owner unknown"
        raise StartupError(
            f"cannot write to the data folder {folder} ({existing} {owner}; this process "
            f"runs as uid {uid}:{gid}: {exc.strerror or exc}); give it to this user, e.g. on "
            f"the host: chown -R {uid}:{gid} <the folder mounted at {folder}>"
        ) from exc


class ServiceHealth:
    """Why the service is degraded, if it is (thread-safe).

    Problems are short texts without host names or patient data (``/healthz`` answers
    anyone); the details go to the log.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._problems: dict[str, str] = {}

    def set_problem(self, name: str, reason: str) -> None:
        with self._lock:
            self._problems[name] = reason

    def clear(self, name: str) -> None:
        with self._lock:
            self._problems.pop(name, None)

    def problems(self) -> dict[str, str]:
        """``{check: reason}`` of every current problem."""
        with self._lock:
            return dict(self._problems)


class PacsWatch:
    """The start-up PACS check, tolerant of a PACS that comes up later.

    Parameters
    ----------
    check
        Raises (with a readable message) when the PACS does not answer.
    health
        Marked degraded while the PACS does not answer.
    retry_s
        Seconds between retries.
    strict
        Re-raise the first failure instead (the process refuses to start).
    """

    def __init__(
        self,
        check: Callable[[], None],
        health: ServiceHealth,
        *,
        retry_s: float,
        strict: bool,
    ) -> None:
        self.check = check
        self.health = health
        self.retry_s = retry_s
        self.strict = strict
        self._thread: threading.Thread | None = None

    def start(self, stop: threading.Event) -> None:
        """Check once now; when that fails, degrade and retry until ``stop`` or success."""
        try:
            self.check()
            return
        except TriageError as exc:
            if self.strict:
                raise
            first = exc
        reason = f"PACS not answering (C-ECHO/QIDO-RS); retrying every {self.retry_s:g} s"
        self.health.set_problem("pacs", reason)
        logger.warning("degraded: %s; starting anyway: %s", reason, first)
        self._thread = threading.Thread(
            target=self._retry, args=(stop,), name="pacs-watch", daemon=True
        )
        self._thread.start()

    def _retry(self, stop: threading.Event) -> None:
        while not stop.wait(self.retry_s):
            try:
                self.check()
            except Exception as exc:
                logger.info("PACS still not answering: %s", exc)
                continue
            self.health.clear("pacs")
            logger.info("PACS answers now: no longer degraded")
            return

    def join(self, timeout_s: float = 5.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)


def install_extra_ca(extra: Path, *, workdir: Path | None = None) -> Path:
    """Trust ``extra`` (a PEM file, or a folder of ``*.pem``/``*.crt``) in this process.

    Writes the default bundle (certifi's, as requests uses) followed by the extra
    certificates to a file and points ``REQUESTS_CA_BUNDLE`` (DICOMweb), ``SSL_CERT_FILE``
    (Python's ``ssl``) and ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`` (Triton over gRPC) at it.

    Returns
    -------
    Path
        The combined bundle.
    """
    # Imported here: certifi is not a dependency of ct-triage-server (it comes with httpx or
    # tritonclient), and `ct-triage health` imports this module.
    import certifi

    extra = Path(extra)
    if extra.is_dir():
        files = sorted(p for p in extra.iterdir() if p.suffix in (".pem", ".crt"))
    else:
        files = [extra]
    try:
        pems = [p.read_text() for p in files]
    except OSError as exc:
        raise StartupError(f"cannot read CT_TRIAGE_EXTRA_CA_CERTS {extra}: {exc}") from exc
    if not files or not any("BEGIN CERTIFICATE" in t for t in pems):
        raise StartupError(f"CT_TRIAGE_EXTRA_CA_CERTS {extra}: no PEM certificate found")
    fd, name = tempfile.mkstemp(prefix="ct-triage-ca-", suffix=".pem", dir=workdir)
    with os.fdopen(fd, "w") as out:
        out.write(Path(certifi.where()).read_text())
        for text in pems:
            out.write("\n" + text.strip() + "\n")
    for var in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"):
        os.environ[var] = name
    logger.info("trusting %d extra CA file(s) from %s", len(files), extra)
    return Path(name)


def health_url(settings: Settings) -> str:
    """The ``/healthz`` URL of this configuration, as seen from the same host."""
    if settings.http_port is None:
        raise StartupError("the HTTP API is off (CT_TRIAGE_HTTP_PORT is empty): nothing to ask")
    scheme = "https" if settings.http_tls_cert is not None else "http"
    host = settings.http_host
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{settings.http_port}/healthz"


def probe(settings: Settings, *, timeout_s: float = 5.0) -> tuple[bool, str]:
    """``ct-triage health``: ``(healthy, one line)`` from ``/healthz`` of the local server.

    Healthy means the server answers and reports no problem; degraded (e.g. the PACS not
    answering yet) is unhealthy, with the reasons in the line.
    """
    url = health_url(settings)
    context = None
    if url.startswith("https:"):
        # A probe of our own process on this host: its certificate names the public host
        # name, not 127.0.0.1, so it is not verified here.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as resp:
            body = json.loads(resp.read().decode() or "{}")
    except urllib.error.HTTPError as exc:
        return False, f"unhealthy: {url} answered HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"unhealthy: {url} does not answer ({reason})"
    status = str(body.get("status", "?"))
    if status == "ok":
        return True, f"ok: {url}"
    reasons = "; ".join(str(r) for r in body.get("reasons", [])) or "no reason given"
    return False, f"{status}: {reasons} ({url})"
