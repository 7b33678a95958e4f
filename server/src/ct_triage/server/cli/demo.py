"""``ct-triage demo``: analyse the embedded sample study (no PACS, no GPU needed)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from ct_triage.models.metrics import percent_involved
from ct_triage.server.cli.analyze import analyze, summary_text
from ct_triage.server.cli.common import Subparsers
from ct_triage.server.cli.phantom import phantom
from ct_triage.server.pipeline import AnalysisResult
from ct_triage.server.settings import Settings

__all__ = ["add_parser", "demo", "run"]

logger = logging.getLogger(__name__)


def demo(out: Path, settings: Settings, *, seed: int) -> AnalysisResult:
    """Generate the embedded sample study (once) and analyse it."""
    study = out / "study"
    if not (study / "dicom").is_dir():
        logger.info("writing the sample study (synthetic chest CT, seed %d) to %s", seed, study)
        phantom(study, seed=seed, severity="moderate")
    result = analyze(study / "dicom", out / "result", settings)
    truth = study / "truth.npz"
    if truth.is_file():
        with np.load(truth) as t:
            pct = percent_involved(t["lesion_mask"], t["lung_mask"])
        got = result.report["percent_involvement"]["total"]
        if pct is not None:
            print(
                f"Sample study (synthetic, exact truth): lung involved {pct:.1f} % in the truth, "
                f"{got:.1f} % measured ({got - pct:+.1f} percentage points)"
            )
    return result


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the demo and print the summary."""
    print(summary_text(demo(Path(args.out), settings, seed=args.seed)))
    return 0


def add_parser(sub: Subparsers) -> None:
    """Add ``demo`` to the CLI."""
    d = sub.add_parser("demo", help="analyse the embedded sample study (no PACS, no GPU needed)")
    d.add_argument("--out", default="demo-out", help="folder for the sample study and results")
    d.add_argument("--seed", type=int, default=7, help="seed of the synthetic sample study")
    d.set_defaults(func=run)
