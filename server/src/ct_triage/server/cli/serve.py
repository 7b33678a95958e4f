"""``ct-triage serve``: HTTP API, DICOM listener, job workers, delivery and poller."""

from __future__ import annotations

import argparse
import hashlib
import logging
import signal
import socket
import threading
import time
from dataclasses import asdict

from ct_triage.dicom_bridge.spool import ReadySeries
from ct_triage.models.errors import TriageError
from ct_triage.server.api import HttpServer, create_app, uvicorn_config
from ct_triage.server.api.config import ApiConfig
from ct_triage.server.bridge import Bridge, ConfigurationError
from ct_triage.server.cli.common import Subparsers
from ct_triage.server.jobs.factory import create_job_store
from ct_triage.server.jobs.model import JobKind
from ct_triage.server.jobs.worker import run_workers
from ct_triage.server.settings import Settings
from ct_triage.server.startup import PacsWatch, ServiceHealth, check_data_dir
from ct_triage.server.wiring import load_model, options_from, warm_up

__all__ = ["add_parser", "check_port_free", "push_job_key", "run", "serve"]

logger = logging.getLogger(__name__)


def check_port_free(host: str, port: int, what: str, setting: str) -> None:
    """Refuse to start with a clear message when a listening port is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigurationError(
                f"cannot listen for {what} on {host}:{port}: {exc.strerror or exc} "
                f"(port in use? set {setting})"
            ) from exc


def push_job_key(study_uid: str, claimed: list[ReadySeries], model_version: str) -> str:
    """Job key of pushed series: the same series generations give the same key."""
    parts = sorted(f"{r.series_uid}.g{r.generation}" for r in claimed)
    digest = hashlib.sha256("|".join([study_uid, *parts]).encode()).hexdigest()[:24]
    return f"push:{digest}:{model_version}"


def serve(settings: Settings, stop: threading.Event | None = None) -> None:
    """HTTP API, DICOM listener, job workers, delivery and poller.

    Pushed series that complete in the spool become PUSH jobs; API submissions and batches
    are PULL/UPLOAD jobs; the workers run them all through the one pipeline.
    """
    check_data_dir(settings.data_dir)  # one line naming the chown, not a traceback later
    # Tokens must be created with this same folder (`ct-triage token create`): say which.
    logger.info(
        "data folder %s (API tokens in %s)",
        settings.data_dir.resolve(),
        ApiConfig.from_settings(settings).tokens_db.resolve(),
    )
    model = load_model(settings)  # fail at start-up, not on the first study
    if settings.startup_warmup:
        logger.info("model warmed up in %.2f s", warm_up(model))
    if settings.http_port:
        check_port_free(
            settings.http_host, settings.http_port, "the HTTP API", "CT_TRIAGE_HTTP_PORT"
        )
    stop = stop or threading.Event()
    version = f"{model.identity.version}-{model.identity.sha256[:12]}"
    store = create_job_store(settings.resolved_job_store_url())
    health = ServiceHealth()
    try:
        with Bridge(settings, model, options_from(settings)) as bridge:
            watch = PacsWatch(
                bridge.check_pacs,
                health,
                retry_s=settings.startup_retry_s,
                strict=settings.strict_startup,
            )
            if settings.pacs_check_at_startup:
                # A PACS that is not up yet: start degraded and retry (strict: refuse).
                watch.start(stop)
            http = None
            if settings.http_port is not None:
                app = create_app(settings, store=store, model=model.identity, service_health=health)
                http = HttpServer(uvicorn_config(app, settings)).start()
                logger.info("HTTP API on %s", http.url)

            job_submitted = threading.Event()  # wakes an idle worker at once

            def intake() -> None:
                next_poll = 0.0
                while not stop.is_set():
                    try:
                        for study_uid, claimed in bridge.claim_due():
                            payload = {
                                "study_uid": study_uid,
                                "series": [{**asdict(r), "folder": str(r.folder)} for r in claimed],
                            }
                            store.submit(
                                key=push_job_key(study_uid, claimed, version),
                                kind=JobKind.PUSH,
                                payload=payload,
                                study_uid=study_uid,
                            )
                            job_submitted.set()
                        if settings.poll_interval_s and time.monotonic() >= next_poll:
                            next_poll = time.monotonic() + settings.poll_interval_s
                            bridge.poll_once()
                        bridge.purge_spool_if_due()
                    except TriageError as exc:
                        logger.error("intake step failed: %s", exc)
                    except Exception:
                        logger.exception("intake step failed unexpectedly")
                    stop.wait(0.2)  # a cheap read of the spool index

            intake_thread = threading.Thread(target=intake, name="intake", daemon=True)
            intake_thread.start()
            logger.info(
                "serving: model %s, provider %s",
                model.identity.algorithm_label,
                model.identity.provider,
            )
            try:
                run_workers(
                    store, bridge, stop, n_workers=max(settings.workers, 1), wake=job_submitted
                )
            finally:
                stop.set()
                intake_thread.join(timeout=10)
                watch.join()
                if http is not None:
                    http.stop()
        logger.info("stopped: running jobs finished, listener closed")
    finally:
        store.close()


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Serve until SIGTERM or Ctrl-C."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serve(settings, stop)
    except KeyboardInterrupt:
        stop.set()
    return 0


def add_parser(sub: Subparsers) -> None:
    """Add ``serve`` to the CLI."""
    sv = sub.add_parser(
        "serve", help="run the DICOM listener, workers, delivery and poller (CT_TRIAGE_* settings)"
    )
    sv.set_defaults(func=run)
