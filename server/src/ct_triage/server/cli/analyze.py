"""``ct-triage analyze IN --out OUT``: one study in, complete results (or none) out."""

from __future__ import annotations

import argparse
from pathlib import Path

from ct_triage.models.identity import DISCLAIMER
from ct_triage.server.cli.common import Subparsers
from ct_triage.server.pipeline import AnalysisResult, analyze_study
from ct_triage.server.settings import Settings
from ct_triage.server.wiring import load_model, options_from

__all__ = ["add_parser", "analyze", "run", "summary_text"]


def analyze(input_path: Path, out: Path, settings: Settings) -> AnalysisResult:
    """Analyse the study in ``input_path`` (a folder or a zip) into ``out``."""
    return analyze_study(input_path, out, load_model(settings), options_from(settings))


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Analyse and print the summary."""
    result = analyze(Path(args.input), Path(args.out), settings)
    print(summary_text(result))
    return 0


def add_parser(sub: Subparsers) -> None:
    """Add ``analyze`` to the CLI."""
    a = sub.add_parser("analyze", help="analyse a study: folder of DICOM files or a zip")
    a.add_argument("input", help="folder (any depth) or .zip of DICOM files")
    a.add_argument("--out", required=True, help="result folder (complete results or none)")
    a.set_defaults(func=run)


def summary_text(result: AnalysisResult) -> str:
    """A short human-readable summary of one analysis."""
    r = result.report
    lv, les, pi = r["lung_volume_ml"], r["lesion_volume_ml"], r["percent_involvement"]
    t = r["timings_s"]
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in t.items() if k != "total")
    # A normal study's small measured volume is the model's false-positive level, below the
    # triage thresholds: say so rather than present "severity 1/25" as a finding.
    below = (
        " (below the triage thresholds: no lesion finding)"
        if r["triage"]["category"] == "normal"
        else ""
    )
    lines = [
        f"Series {r['series_number']} '{r['series_description']}' "
        f"({r['volume']['shape_zyx'][0]} slices)",
        f"  Lungs      : right {lv['right']:.0f} mL, left {lv['left']:.0f} mL, "
        f"total {lv['total']:.0f} mL",
        f"  Lesions    : {les['total']:.1f} mL (ground-glass {les['ggo']:.1f} mL, "
        f"consolidation {les['consolidation']:.1f} mL){below}",
        f"  Involvement: right {pi['right']:.1f} %, left {pi['left']:.1f} %, "
        f"total {pi['total']:.1f} %",
        f"  Severity   : {r['severity_score']}/25, triage {r['triage']['category'].upper()} "
        f"(priority {r['triage']['priority']})",
        *(
            [f"  Quality    : {'; '.join(f['reason'] for f in r['quality']['flags'])}"]
            if r.get("quality", {}).get("flags")
            else []
        ),
        f"  Model      : {r['model']['name']} {r['model']['version']} "
        f"on {r['model']['execution_provider']}",
        f"  Results in : {result.out_dir} (report.json, seg.dcm, sr.dcm, summary.dcm, "
        "sr-outlines.dcm when a lesion is outlined, overlay/, preview.png)",
        f"  Timings    : {stages}; total {t['total']:.2f}s",
        f"  {DISCLAIMER}",
    ]
    return "\n".join(lines)
