"""``ct-triage worker``: job workers and delivery in a process of their own, until SIGTERM.

Several worker processes (or machines) share one PostgreSQL job store with ``serve``
(``--store postgresql://...``); the settings come from ``CT_TRIAGE_*`` as for every verb.
"""

from __future__ import annotations

import argparse
import signal
import threading

from ct_triage.server.bridge import Bridge
from ct_triage.server.cli.common import Subparsers
from ct_triage.server.jobs.factory import create_job_store
from ct_triage.server.jobs.worker import run_workers
from ct_triage.server.settings import Settings
from ct_triage.server.wiring import load_model, options_from

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run workers and delivery until SIGTERM / SIGINT."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    model = load_model(settings)
    store = create_job_store(args.store or settings.resolved_job_store_url())
    try:
        with Bridge(
            settings, model, options_from(settings), delivery_lease_s=args.delivery_lease_s
        ) as bridge:
            try:
                run_workers(
                    store,
                    bridge,
                    stop,
                    n_workers=args.workers or max(1, settings.workers),
                    lease_s=args.lease_s,
                )
            except KeyboardInterrupt:
                stop.set()
    finally:
        store.close()
    return 0


def add_parser(sub: Subparsers) -> None:
    """Add ``worker`` to the CLI."""
    p = sub.add_parser("worker", help="run job workers and delivery until SIGTERM")
    p.add_argument("--store", help="job store URL (sqlite:///PATH or postgresql://...)")
    p.add_argument("--workers", type=int, default=None, help="number of worker threads")
    p.add_argument("--lease-s", type=float, default=120.0, help="job lease in seconds")
    p.add_argument(
        "--delivery-lease-s",
        type=float,
        default=None,
        help="how long a delivery in progress is hidden from other senders (default 600)",
    )
    p.set_defaults(func=run)
