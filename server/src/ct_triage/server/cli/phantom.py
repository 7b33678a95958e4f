"""``ct-triage phantom OUT``: write a synthetic chest CT series with its exact truth."""

from __future__ import annotations

import argparse
from pathlib import Path

from ct_triage.dicom_bridge.synthetic import write_phantom_series
from ct_triage.models.phantom import generate, save_truth, spec_from_seed
from ct_triage.server.cli.common import Subparsers
from ct_triage.server.settings import Settings

__all__ = ["add_parser", "phantom", "run"]


def phantom(
    out: Path, *, seed: int, n_slices: int | None = None, severity: str | None = None
) -> None:
    """Write a synthetic chest CT (``OUT/dicom``) and its exact truth (``OUT/truth.npz``)."""
    spec = spec_from_seed(seed, n_slices=n_slices, severity=severity)
    ph = generate(spec)
    out.mkdir(parents=True, exist_ok=True)
    write_phantom_series(ph, out / "dicom")
    save_truth(ph, out / "truth.npz")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Write the phantom and say where."""
    phantom(Path(args.out), seed=args.seed, n_slices=args.slices, severity=args.severity)
    print(f"Synthetic chest CT written to {Path(args.out) / 'dicom'} (truth: truth.npz)")
    return 0


def add_parser(sub: Subparsers) -> None:
    """Add ``phantom`` to the CLI."""
    ph = sub.add_parser("phantom", help="write a synthetic chest CT series with exact truth")
    ph.add_argument("out", help="output folder (DICOM under OUT/dicom, truth in OUT/truth.npz)")
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--slices", type=int, default=None, help="number of slices (60-400)")
    ph.add_argument("--severity", choices=["none", "mild", "moderate", "severe"], default=None)
    ph.set_defaults(func=run)
