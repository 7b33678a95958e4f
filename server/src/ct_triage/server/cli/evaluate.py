"""``ct-triage evaluate DATA --json OUT``: score the model on a folder of ``.npz`` cases."""

from __future__ import annotations

import argparse
from pathlib import Path

from ct_triage.models.evaluation.output import format_table, write_json
from ct_triage.models.evaluation.scoring import evaluate as run_evaluation
from ct_triage.server.cli.common import Subparsers
from ct_triage.server.settings import Settings
from ct_triage.server.wiring import load_model

__all__ = ["add_parser", "evaluate", "run"]


def evaluate(data: Path, json_out: Path, settings: Settings) -> str:
    """Score the model, write the metrics JSON; returns the printed table."""
    model = load_model(settings)
    report = run_evaluation(data, model, model.identity)
    write_json(report, json_out)
    return format_table(report)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Evaluate and print the table."""
    print(evaluate(Path(args.data), Path(args.json), settings))
    return 0


def add_parser(sub: Subparsers) -> None:
    """Add ``evaluate`` to the CLI."""
    e = sub.add_parser("evaluate", help="score the model on a folder of .npz cases")
    e.add_argument("data", help="folder of .npz cases")
    e.add_argument("--json", required=True, help="where to write the metrics JSON")
    e.set_defaults(func=run)
