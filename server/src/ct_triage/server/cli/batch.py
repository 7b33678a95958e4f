"""``ct-triage batch``: screen many studies: submit, analyse, follow progress, write a CSV.

The batch runs through a running server's API (``--server``, or the ``serve`` that holds this
data folder) or with workers in this process; the batch logic is :mod:`ct_triage.server.batch`.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

from ct_triage.models.errors import TriageError
from ct_triage.server.batch import (
    ServerBatch,
    batch_csv,
    follow_batch,
    follow_progress,
    spool_in_use,
    submit_batch,
    submit_batch_from_query,
)
from ct_triage.server.bridge import Bridge
from ct_triage.server.cli.common import Subparsers
from ct_triage.server.jobs.factory import create_job_store
from ct_triage.server.jobs.worker import run_workers
from ct_triage.server.settings import Settings
from ct_triage.server.wiring import load_model, options_from

__all__ = ["add_parser", "run", "run_through_server"]

logger = logging.getLogger(__name__)


def _api_body(args: argparse.Namespace, name: str) -> dict[str, Any]:
    if args.accessions or args.study_uids:
        return {
            "name": name,
            "accessions": _read_list(args.accessions) if args.accessions else [],
            "study_uids": _read_list(args.study_uids) if args.study_uids else [],
        }
    if not (args.date_from and args.date_to):
        raise TriageError("give --accessions, --study-uids or --date-from/--date-to")
    return {"name": name, "query": {"date_from": args.date_from, "date_to": args.date_to}}


def _write_csv(text: str, dest: str | None) -> None:
    if dest:
        Path(dest).write_text(text, newline="")
        print(f"CSV written to {dest}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def run_through_server(args: argparse.Namespace, url: str, token: str, name: str) -> int:
    """Submit the batch to a running server, follow it, write its CSV (the API's CSV)."""
    client = ServerBatch(url, token)
    try:
        batch_id, n = client.submit(_api_body(args, name))
        print(f"batch {batch_id}: {n} stud(ies), analysed by the server at {url}", file=sys.stderr)
        progress = follow_progress(
            lambda: client.progress(batch_id), out=sys.stderr, interval_s=args.interval_s
        )
        _write_csv(client.csv(batch_id), args.csv)
    finally:
        client.close()
    return 1 if progress.failed else 0


def _local_server_url(settings: Settings) -> str:
    scheme = "https" if settings.http_tls_cert else "http"
    host = settings.http_host if settings.http_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return f"{scheme}://{host}:{settings.http_port}"


def _read_list(path: str) -> list[str]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Submit, analyse, follow progress, write the CSV.

    With ``--server`` (or when a ``ct-triage serve`` holds this data folder's spool) the
    batch goes through that server's API and its workers; otherwise workers run in this
    process. Exit 0 when every study is done or declined, 1 when any failed.
    """
    name = args.name or f"batch {time.strftime('%Y-%m-%d %H:%M')}"
    token = args.token or os.environ.get("CT_TRIAGE_API_TOKEN")
    server = args.server
    if server is None and spool_in_use(settings.data_dir):
        if settings.http_port is None or not token:
            raise TriageError(
                f"a running `ct-triage serve` holds the data folder "
                f"{Path(settings.data_dir).resolve()}: run the batch through it with "
                "--server URL and an operator token (--token or CT_TRIAGE_API_TOKEN), or give "
                "this batch a data folder of its own (CT_TRIAGE_DATA_DIR)"
            )
        server = _local_server_url(settings)
        logger.info("a ct-triage serve holds the data folder: batch sent to it at %s", server)
    if server is not None:
        if not token:
            raise TriageError("--server needs an operator token: --token or CT_TRIAGE_API_TOKEN")
        return run_through_server(args, server, token, name)

    model = load_model(settings)
    version = model.identity.version
    store = create_job_store(getattr(args, "store", None) or settings.resolved_job_store_url())
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    stop = threading.Event()
    try:
        with Bridge(settings, model, options_from(settings)) as bridge:
            if args.accessions or args.study_uids:
                batch = submit_batch(
                    store,
                    name=name,
                    created_by=user,
                    accessions=_read_list(args.accessions) if args.accessions else (),
                    study_uids=_read_list(args.study_uids) if args.study_uids else (),
                    model_version=version,
                )
            else:
                if not (args.date_from and args.date_to):
                    raise TriageError("give --accessions, --study-uids or --date-from/--date-to")
                batch = submit_batch_from_query(
                    store,
                    bridge,
                    date_range=(
                        date.fromisoformat(args.date_from),
                        date.fromisoformat(args.date_to),
                    ),
                    name=name,
                    created_by=user,
                    model_version=version,
                )
            print(f"batch {batch.id}: {len(batch.job_ids)} stud(ies)", file=sys.stderr)
            workers = threading.Thread(
                target=run_workers,
                args=(store, bridge, stop),
                kwargs={"n_workers": args.workers or max(1, settings.workers)},
                name="batch-workers",
            )
            workers.start()
            try:
                progress = follow_batch(store, batch.id, interval_s=args.interval_s)
                # Let the delivery loop send what the last jobs queued.
                deadline = time.monotonic() + 120.0
                while bridge.outbox.pending() and time.monotonic() < deadline:
                    time.sleep(0.5)
            finally:
                stop.set()
                workers.join()
            text = batch_csv(store, batch.id, viewer_template=settings.viewer_url_template)
            _write_csv(text, args.csv)
    finally:
        store.close()
    return 1 if progress.failed else 0


def add_parser(sub: Subparsers) -> None:
    """Add ``batch`` to the CLI."""
    p = sub.add_parser("batch", help="screen many studies: submit, analyse, follow, write a CSV")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--accessions", metavar="FILE", help="file of accession numbers ('-': stdin)")
    who.add_argument("--study-uids", metavar="FILE", help="file of StudyInstanceUIDs")
    who.add_argument("--date-from", metavar="YYYY-MM-DD", help="query the PACS from this date")
    p.add_argument("--date-to", metavar="YYYY-MM-DD", help="... to this date (with --date-from)")
    p.add_argument("--csv", metavar="OUT", help="write the CSV here (default: stdout)")
    p.add_argument("--name", help="batch name")
    p.add_argument("--workers", type=int, default=None, help="worker threads (default: settings)")
    p.add_argument("--store", help="job store URL (default: SQLite in the data folder)")
    p.add_argument("--interval-s", type=float, default=2.0, help="progress refresh interval")
    p.add_argument(
        "--server",
        metavar="URL",
        help="run the batch through this running server's API (e.g. http://127.0.0.1:8000); "
        "default when a `ct-triage serve` holds this data folder: that server",
    )
    p.add_argument(
        "--token", help="operator API token for --server (default: $CT_TRIAGE_API_TOKEN)"
    )
    p.set_defaults(func=run)
