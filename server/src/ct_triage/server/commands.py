"""The verbs of the CLI, as plain functions (the CLI only parses and prints)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ct_triage.models.identity import DISCLAIMER
from ct_triage.server.pipeline import AnalysisOptions, AnalysisResult, analyze_study
from ct_triage.server.settings import Settings

if TYPE_CHECKING:
    from ct_triage.models.lesions import LesionSegmenter
    from ct_triage.server.bridge import StudyOutcome

logger = logging.getLogger(__name__)


def options_from(settings: Settings) -> AnalysisOptions:
    """Per-analysis options from the process settings."""
    from ct_triage.dicom_bridge.select import SelectionRules

    return AnalysisOptions(
        rules=SelectionRules(
            min_slices=settings.min_slices,
            max_slice_thickness_mm=settings.max_slice_thickness_mm,
        ),
        thresholds=settings.thresholds(),
        overlay_slices=settings.overlay_slices,
    )


def load_model(settings: Settings) -> LesionSegmenter:
    """Load the lesion model named by the settings (validated against its manifest)."""
    from ct_triage.models.lesions import load_lesion_segmenter

    return load_lesion_segmenter(settings.model_dir, provider=settings.provider)


def phantom(
    out: Path, *, seed: int, n_slices: int | None = None, severity: str | None = None
) -> None:
    """Write a synthetic chest CT (``OUT/dicom``) and its exact truth (``OUT/truth.npz``)."""
    from ct_triage.dicom_bridge.synthetic import write_phantom_series
    from ct_triage.models.phantom import generate, save_truth, spec_from_seed

    spec = spec_from_seed(seed, n_slices=n_slices, severity=severity)
    ph = generate(spec)
    out.mkdir(parents=True, exist_ok=True)
    write_phantom_series(ph, out / "dicom")
    save_truth(ph, out / "truth.npz")


def analyze(input_path: Path, out: Path, settings: Settings) -> AnalysisResult:
    """``ct-triage analyze``: one study in, complete results (or none) out."""
    return analyze_study(input_path, out, load_model(settings), options_from(settings))


def demo(out: Path, settings: Settings, *, seed: int) -> AnalysisResult:
    """Generate the embedded sample study (once) and analyse it."""
    study = out / "study"
    if not (study / "dicom").is_dir():
        logger.info("writing the sample study (synthetic chest CT, seed %d) to %s", seed, study)
        phantom(study, seed=seed, severity="moderate")
    return analyze(study / "dicom", out / "result", settings)


def evaluate(data: Path, json_out: Path, settings: Settings) -> str:
    """``ct-triage evaluate``: score the model; returns the printed table."""
    from ct_triage.server.evaluate import evaluate as run_evaluation
    from ct_triage.server.evaluate import format_table, write_json

    model = load_model(settings)
    report = run_evaluation(data, model, model.identity)
    write_json(report, json_out)
    return format_table(report)


def serve(settings: Settings, stop: threading.Event | None = None) -> None:
    """``ct-triage serve``: the DICOM listener, the workers, delivery and the poller."""
    from ct_triage.server.bridge import Bridge

    model = load_model(settings)  # fail at start-up, not on the first study
    stop = stop or threading.Event()
    with Bridge(settings, model, options_from(settings)) as bridge:
        logger.info(
            "serving: model %s, provider %s",
            model.identity.algorithm_label,
            model.identity.provider,
        )
        bridge.run(stop)


def pull(
    settings: Settings,
    *,
    study_uid: str | None,
    accession: str | None,
    wait_s: float = 300.0,
) -> list[StudyOutcome]:
    """``ct-triage pull``: retrieve one study from the PACS, analyse it, deliver the results."""
    from ct_triage.server.bridge import Bridge

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


def summary_text(result: AnalysisResult) -> str:
    """A short human-readable summary of one analysis."""
    r = result.report
    lv, les, pi = r["lung_volume_ml"], r["lesion_volume_ml"], r["percent_involvement"]
    t = r["timings_s"]
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in t.items() if k != "total")
    lines = [
        f"Series {r['series_number']} '{r['series_description']}' "
        f"({r['volume']['shape_zyx'][0]} slices)",
        f"  Lungs      : right {lv['right']:.0f} mL, left {lv['left']:.0f} mL, "
        f"total {lv['total']:.0f} mL",
        f"  Lesions    : {les['total']:.1f} mL (ground-glass {les['ggo']:.1f} mL, "
        f"consolidation {les['consolidation']:.1f} mL)",
        f"  Involvement: right {pi['right']:.1f} %, left {pi['left']:.1f} %, "
        f"total {pi['total']:.1f} %",
        f"  Severity   : {r['severity_score']}/25, triage {r['triage']['category'].upper()} "
        f"(priority {r['triage']['priority']})",
        f"  Model      : {r['model']['name']} {r['model']['version']} "
        f"on {r['model']['execution_provider']}",
        f"  Results in : {result.out_dir} (report.json, seg.dcm, sr.dcm, overlay/, preview.png)",
        f"  Timings    : {stages}; total {t['total']:.2f}s",
        f"  {DISCLAIMER}",
    ]
    return "\n".join(lines)
