"""``ct-triage health``: ask the local server's ``/healthz`` (the container health check).

Kept light: it imports no analysis code, so the check that runs every 30 s starts fast.
"""

from __future__ import annotations

import argparse

from ct_triage.server.cli.common import Subparsers
from ct_triage.server.settings import Settings
from ct_triage.server.startup import probe

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 0 healthy, 1 degraded or not answering."""
    healthy, line = probe(settings, timeout_s=args.timeout)
    print(line)
    return 0 if healthy else 1


def add_parser(sub: Subparsers) -> None:
    """Add ``health`` to the CLI."""
    he = sub.add_parser(
        "health",
        help="ask the local server's /healthz on the configured port: exit 0 healthy, "
        "1 degraded or not answering (the container health check)",
    )
    he.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    he.set_defaults(func=run)
