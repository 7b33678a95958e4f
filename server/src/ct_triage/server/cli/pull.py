"""``ct-triage pull``: retrieve one study from the PACS, analyse it, deliver the results."""

from __future__ import annotations

import argparse
import logging
import time

from ct_triage.server.bridge import Bridge, StudyOutcome
from ct_triage.server.cli.common import Subparsers
from ct_triage.server.settings import Settings
from ct_triage.server.wiring import load_model, options_from

__all__ = ["add_parser", "pull", "run"]

logger = logging.getLogger(__name__)


def pull(
    settings: Settings,
    *,
    study_uid: str | None,
    accession: str | None,
    wait_s: float = 300.0,
) -> list[StudyOutcome]:
    """Retrieve one study, analyse what is complete, deliver (waiting up to ``wait_s``)."""
    model = load_model(settings)
    with Bridge(settings, model, options_from(settings)) as bridge:
        bridge.pull(study_uid=study_uid, accession=accession)
        # Everything retrieved is complete: do not wait for the quiet period.
        outcomes = bridge.process_due(now=time.time() + settings.quiet_period_s + 1.0)
        deadline = time.monotonic() + wait_s
        while bridge.outbox.pending() and time.monotonic() < deadline:
            bridge.deliver()
            time.sleep(0.5)
        for d in bridge.outbox.dead_letters():
            logger.error("delivery %s dead-lettered: %s", d.id, d.last_error)
        return outcomes


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Pull and print one line per study; exit 2 if one was declined, 1 if one failed."""
    outcomes = pull(settings, study_uid=args.study, accession=args.accession)
    worst = 0
    for o in outcomes:
        print(f"study {o.study_uid}: {o.status} ({o.detail})")
        if o.status == "declined":
            worst = max(worst, 2)
        elif o.status == "failed":
            worst = 1
    if not outcomes:
        print("nothing to analyse (no complete CT series retrieved)")
    return worst


def add_parser(sub: Subparsers) -> None:
    """Add ``pull`` to the CLI."""
    pl = sub.add_parser("pull", help="retrieve one study from the PACS, analyse it, deliver")
    who = pl.add_mutually_exclusive_group(required=True)
    who.add_argument("--study", help="StudyInstanceUID")
    who.add_argument("--accession", help="AccessionNumber")
    pl.set_defaults(func=run)
