"""The verbs of the CLI, as plain functions (the CLI only parses and prints)."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ct_triage.models.errors import TriageError
from ct_triage.models.identity import DISCLAIMER
from ct_triage.models.metrics import percent_involved
from ct_triage.server.pipeline import AnalysisOptions, AnalysisResult, analyze_study
from ct_triage.server.settings import Settings

if TYPE_CHECKING:
    from ct_triage.dicom_bridge.spool import ReadySeries
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
            require_original_primary=settings.require_original_primary,
        ),
        thresholds=settings.thresholds(),
        overlay_slices=settings.overlay_slices,
    )


def load_model(settings: Settings) -> LesionSegmenter:
    """Load the lesion model named by the settings (validated against its manifest)."""
    from ct_triage.models.lesions import load_lesion_segmenter

    return load_lesion_segmenter(settings.runtime_config())


def warm_up(model: LesionSegmenter) -> float:
    """Run the network once on a blank batch, before the first study arrives.

    ONNX Runtime allocates its memory arena and picks its kernels on the first call; a
    server pays that at start-up instead of on the first study. Returns the seconds spent;
    a runtime that fails here (a Triton server not up yet) is logged, not fatal.
    """
    import numpy as np

    spec = model.manifest.input
    blank = np.zeros((max(1, model.batch_size), spec.channels, spec.height, spec.width), np.float32)
    t0 = time.perf_counter()
    try:
        model.predictor.predict(blank)
    except TriageError as exc:
        logger.warning("model warm-up skipped: %s", exc)
    return time.perf_counter() - t0


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
    result = analyze(study / "dicom", out / "result", settings)
    truth = study / "truth.npz"
    if truth.is_file():
        import numpy as np

        with np.load(truth) as t:
            pct = percent_involved(t["lesion_mask"], t["lung_mask"])
        got = result.report["percent_involvement"]["total"]
        if pct is not None:
            print(
                f"Sample study (synthetic, exact truth): lung involved {pct:.1f} % in the truth, "
                f"{got:.1f} % measured ({got - pct:+.1f} percentage points)"
            )
    return result


def evaluate(data: Path, json_out: Path, settings: Settings) -> str:
    """``ct-triage evaluate``: score the model; returns the printed table."""
    from ct_triage.models.evaluation.output import format_table, write_json
    from ct_triage.models.evaluation.scoring import evaluate as run_evaluation

    model = load_model(settings)
    report = run_evaluation(data, model, model.identity)
    write_json(report, json_out)
    return format_table(report)


def check_port_free(host: str, port: int, what: str, setting: str) -> None:
    """Refuse to start with a clear message when a listening port is taken."""
    import socket

    from ct_triage.server.bridge import ConfigurationError

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigurationError(
                f"cannot listen for {what} on {host}:{port}: {exc.strerror or exc} "
                f"(port in use? set {setting})"
            ) from exc


def push_job_key(study_uid: str, claimed: list[ReadySeries], model_version: str) -> str:
    """Job key of pushed series: the same series generations give the same key."""
    parts = sorted(f"{r.series_uid}.g{r.generation}" for r in claimed)
    digest = hashlib.sha256("|".join([study_uid, *parts]).encode()).hexdigest()[:24]
    return f"push:{digest}:{model_version}"


def serve(settings: Settings, stop: threading.Event | None = None) -> None:
    """``ct-triage serve``: HTTP API, DICOM listener, job workers, delivery and poller.

    Pushed series that complete in the spool become PUSH jobs; API submissions and batches
    are PULL/UPLOAD jobs; the workers run them all through the one pipeline.
    """
    from dataclasses import asdict

    from ct_triage.server.api import HttpServer, create_app, uvicorn_config
    from ct_triage.server.api.config import ApiConfig
    from ct_triage.server.bridge import Bridge
    from ct_triage.server.jobs.factory import create_job_store
    from ct_triage.server.jobs.model import JobKind
    from ct_triage.server.jobs.worker import run_workers
    from ct_triage.server.startup import PacsWatch, ServiceHealth, check_data_dir

    check_data_dir(settings.data_dir)  # one line naming the chown, not a traceback later
    # Tokens must be created with this same folder (`ct-triage token create`): say which.
    logger.info(
        "data folder %s (API tokens in %s)",
        settings.data_dir.resolve(),
        ApiConfig.from_settings(settings).tokens_db.resolve(),
    )
    model = load_model(settings)  # fail at start-up, not on the first study
    if settings.startup_warmup:
        logger.info("model warmed up in %.2f s", warm_up(model))
    if settings.http_port:
        check_port_free(
            settings.http_host, settings.http_port, "the HTTP API", "CT_TRIAGE_HTTP_PORT"
        )
    stop = stop or threading.Event()
    version = f"{model.identity.version}-{model.identity.sha256[:12]}"
    store = create_job_store(settings.resolved_job_store_url())
    health = ServiceHealth()
    try:
        with Bridge(settings, model, options_from(settings)) as bridge:
            watch = PacsWatch(
                bridge.check_pacs,
                health,
                retry_s=settings.startup_retry_s,
                strict=settings.strict_startup,
            )
            if settings.pacs_check_at_startup:
                # A PACS that is not up yet: start degraded and retry (strict: refuse).
                watch.start(stop)
            http = None
            if settings.http_port is not None:
                app = create_app(settings, store=store, model=model.identity, service_health=health)
                http = HttpServer(uvicorn_config(app, settings)).start()
                logger.info("HTTP API on %s", http.url)

            job_submitted = threading.Event()  # wakes an idle worker at once

            def intake() -> None:
                next_poll = 0.0
                while not stop.is_set():
                    try:
                        for study_uid, claimed in bridge.claim_due():
                            payload = {
                                "study_uid": study_uid,
                                "series": [{**asdict(r), "folder": str(r.folder)} for r in claimed],
                            }
                            store.submit(
                                key=push_job_key(study_uid, claimed, version),
                                kind=JobKind.PUSH,
                                payload=payload,
                                study_uid=study_uid,
                            )
                            job_submitted.set()
                        if settings.poll_interval_s and time.monotonic() >= next_poll:
                            next_poll = time.monotonic() + settings.poll_interval_s
                            bridge.poll_once()
                        bridge.purge_spool_if_due()
                    except TriageError as exc:
                        logger.error("intake step failed: %s", exc)
                    except Exception:
                        logger.exception("intake step failed unexpectedly")
                    stop.wait(0.2)  # a cheap read of the spool index

            intake_thread = threading.Thread(target=intake, name="intake", daemon=True)
            intake_thread.start()
            logger.info(
                "serving: model %s, provider %s",
                model.identity.algorithm_label,
                model.identity.provider,
            )
            try:
                run_workers(
                    store, bridge, stop, n_workers=max(settings.workers, 1), wake=job_submitted
                )
            finally:
                stop.set()
                intake_thread.join(timeout=10)
                watch.join()
                if http is not None:
                    http.stop()
        logger.info("stopped: running jobs finished, listener closed")
    finally:
        store.close()


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
        f"  Results in : {result.out_dir} (report.json, seg.dcm, sr.dcm, overlay/, preview.png)",
        f"  Timings    : {stages}; total {t['total']:.2f}s",
        f"  {DISCLAIMER}",
    ]
    return "\n".join(lines)
