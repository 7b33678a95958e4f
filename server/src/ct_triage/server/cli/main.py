"""``ct-triage``: the parser of the command line and the boundary where errors are reported.

Each verb is a module of this package (``add_parser`` + ``run``); this one parses the
arguments, builds the one :class:`~ct_triage.server.settings.Settings`, configures logging
and runs the verb. Exit codes: 0 success; 2 input declined or invalid (reason on stderr); 1
any other failure. Every deliberate failure (:class:`~ct_triage.models.errors.TriageError`,
e.g. an output folder that cannot be written or a full disk) is one line on stderr,
``ct-triage: error: ...``; only an unexpected internal error logs a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import uuid
from collections.abc import Sequence

from pydantic import ValidationError

from ct_triage.models.errors import TriageError
from ct_triage.server.cli import health
from ct_triage.server.cli.common import Subparsers
from ct_triage.server.logconfig import configure_logging, job_context
from ct_triage.server.settings import Settings, env_name
from ct_triage.server.startup import install_extra_ca
from ct_triage.server.tuning import tune_allocator

__all__ = ["build_parser", "main"]

logger = logging.getLogger("ct_triage.server.cli")


def _add_analysis_verbs(sub: Subparsers) -> None:
    """Add the verbs that run the analysis stack (models, bridge, API), in help order."""
    # Imported here, not at the top: `ct-triage health` is the container's health check
    # (every 30 s) and must not pay for importing the models, the bridge and the API.
    from ct_triage.server.cli import (
        analyze,
        batch,
        demo,
        evaluate,
        phantom,
        pull,
        serve,
        token,
        worker,
    )

    for verb in (demo, phantom, analyze, evaluate, serve):
        verb.add_parser(sub)
    health.add_parser(sub)
    for verb in (pull, batch, worker, token):
        verb.add_parser(sub)


def build_parser(*, health_only: bool = False) -> argparse.ArgumentParser:
    """The ``ct-triage`` parser; ``health_only``: just the ``health`` verb (fast start)."""
    p = argparse.ArgumentParser(
        prog="ct-triage",
        description="Chest CT triage: lung and pneumonia-lesion quantification. "
        "AI triage aid, NOT for primary diagnosis.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    if health_only:
        health.add_parser(sub)
    else:
        _add_analysis_verbs(sub)
    return p


def _verb(argv: Sequence[str]) -> str | None:
    """The verb of ``argv``: its first word that is not an option (``-v`` takes no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ct-triage`` with ``argv`` (default: the process arguments); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(health_only=_verb(argv) == "health").parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(f"{env_name(err['loc'])}: {err['msg']}" for err in exc.errors())
        print(f"ct-triage: configuration error: {problems}", file=sys.stderr)
        return 1
    # `serve` prints nothing else: its log (JSON in the images) goes to stdout, where
    # container runtimes and log shippers expect it.
    configure_logging(
        level=logging.DEBUG if args.verbose else logging.INFO,
        fmt=settings.log_format,
        stream=sys.stdout if args.command == "serve" else None,
    )
    if settings.malloc_tuning:
        tune_allocator()
    job = uuid.uuid4().hex[:12]
    with job_context(job):
        try:
            if settings.extra_ca_certs is not None and args.command != "health":
                install_extra_ca(settings.extra_ca_certs)
            rc: int = args.func(args, settings)
        except TriageError as exc:
            # Logged once, here, at the boundary.
            logger.debug("command failed", exc_info=True)
            kind = "declined" if exc.exit_code == 2 else "error"
            print(f"ct-triage: {kind}: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("ct-triage: interrupted", file=sys.stderr)
            return 130
        except Exception:
            logger.exception("unexpected failure")
            print("ct-triage: internal error (see the log above)", file=sys.stderr)
            return 1
    return rc
