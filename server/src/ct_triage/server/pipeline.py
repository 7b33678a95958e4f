"""The one function that runs a study through every step (DESIGN.md, "The flow").

Every entry calls :func:`analyze_study`: the CLI (``ct-triage analyze``, ``demo``), the
server's workers (pushed, pulled and uploaded studies) and ``ct-triage pull``; none adds a
step of its own. Each step lives in the module that owns it:

``inputs → select → load → lungs → lesions (runtime) → postprocess → quantify → writers``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import tempfile
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, overload

from pydicom import Dataset, dcmread

from ct_triage.dicom_bridge import inputs, select
from ct_triage.dicom_bridge.load import LoadedSeries, load_series
from ct_triage.dicom_bridge.part10 import save_dataset
from ct_triage.dicom_bridge.writers.overlay import (
    OverlayRequest,
    write_overlay_series,
    write_preview_png,
)
from ct_triage.dicom_bridge.writers.planar import largest_cross_sections
from ct_triage.dicom_bridge.writers.seg import SegRequest, write_seg
from ct_triage.dicom_bridge.writers.sr import (
    NotAnalysedSrRequest,
    SrRequest,
    round_measurement,
    write_not_analysed_sr,
    write_outlines_sr,
    write_sr,
)
from ct_triage.dicom_bridge.writers.summary import declined_page, result_page, write_summary
from ct_triage.models.analysis import LesionModel, segment
from ct_triage.models.durable import durable_path, fsync_dir
from ct_triage.models.errors import InvalidInput
from ct_triage.models.identity import DISCLAIMER, PRODUCT_NAME, PRODUCT_VERSION, ModelIdentity
from ct_triage.models.lesions import z_step_for
from ct_triage.models.quality import assess_quality
from ct_triage.models.quantify import Quantification, TriageThresholds, quantify
from ct_triage.models.rounding import round_tree
from ct_triage.models.segmentation import Segmentation
from ct_triage.server.outputs import REPORT_NAME, atomic_output_dir, check_output_dir
from ct_triage.server.timing import StageTimer

logger = logging.getLogger(__name__)

#: Version of the ``report.json`` layout; bump on any incompatible change.
SCHEMA_VERSION = "1.0"


def result_files(out_dir: Path) -> list[Path]:
    """The DICOM objects of a result folder, in delivery order: SEG, SR, summary, outline SR
    (when the study has lesions), overlay."""
    files = [out_dir / "seg.dcm", out_dir / "sr.dcm"]
    files += [out_dir / n for n in ("summary.dcm", "sr-outlines.dcm") if (out_dir / n).is_file()]
    return [*files, *sorted((out_dir / "overlay").glob("*.dcm"))]


#: File names of the "not analysed" objects of a declined study (see :func:`write_not_analysed`).
NOT_ANALYSED_FILES = ("not-analysed-sr.dcm", "not-analysed-summary.dcm")


def write_not_analysed(
    study_folder: Path, reason: str, identity: ModelIdentity, out_dir: Path
) -> list[Path]:
    """Write the SR and summary page saying "not analysed: REASON" for a declined study.

    One header per folder of ``study_folder`` (the spool keeps each series in a folder) is the
    evidence; the objects go into the study they came with, so the PACS shows the radiologist
    that the study was seen and why it was skipped. Idempotent: objects written before are returned
    as they are (same SOP Instance UIDs, so a retry never adds a second copy). Returns
    ``[]`` when no DICOM header can be read there.
    """
    files = [out_dir / name for name in NOT_ANALYSED_FILES]
    if all(f.is_file() for f in files):
        return files
    evidence: dict[str, Dataset] = {}
    read: set[Path] = set()  # folders with a header read (the spool keeps a series a folder)
    for path in sorted(p for p in study_folder.rglob("*") if p.is_file()):
        if path.parent in read:
            continue
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM: nothing to reference
            continue
        if "SOPInstanceUID" in ds and "StudyInstanceUID" in ds and "SeriesInstanceUID" in ds:
            evidence.setdefault(str(ds.SeriesInstanceUID), ds)
            read.add(path.parent)
    if not evidence:
        return []
    headers = tuple(evidence.values())
    headers = tuple(h for h in headers if h.StudyInstanceUID == headers[0].StudyInstanceUID)
    sr = write_not_analysed_sr(
        NotAnalysedSrRequest(evidence=headers, reason=reason, model=identity)
    )
    page = write_summary(declined_page(header=headers[0], reason=reason, model=identity))
    out_dir.mkdir(parents=True, exist_ok=True)
    for obj, path in ((sr, files[0]), (page, files[1])):
        with durable_path(path) as tmp:
            save_dataset(obj, tmp)
    fsync_dir(out_dir.parent)  # the folder's own entry
    return files


@dataclass(frozen=True, slots=True)
class AnalysisOptions:
    """What a caller may vary per analysis (built from the process settings)."""

    rules: select.SelectionRules
    thresholds: TriageThresholds
    overlay_slices: str = "key"


@dataclass(frozen=True, slots=True)
class AnalysisResult:
    """Where the results are and what they say.

    ``selection`` holds one verdict per series of the study, the analysed series first (the
    same as ``report["series_selection"]``).
    """

    out_dir: Path
    report: dict[str, Any]
    selection: tuple[select.SeriesVerdict, ...] = ()

    @property
    def series_instance_uid(self) -> str:
        """The SeriesInstanceUID of the analysed series."""
        return str(self.report["series_instance_uid"])


@dataclass(frozen=True, slots=True)
class NotSelected:
    """The study's best series is not one of the ``eligible_series``: nothing was analysed.

    The push path analyses a study when some of its series complete; the best series may be
    one analysed before, at its current generation (see :func:`analyze_study`).
    """

    series_instance_uid: str
    selection: tuple[select.SeriesVerdict, ...]

    @property
    def reason(self) -> str:
        """``"not selected: SERIES is preferred"``, SERIES the label of the best series."""
        taken = next((v for v in self.selection if v.taken), None)
        return f"not selected: {taken.label if taken else self.series_instance_uid} is preferred"


def build_report(
    *,
    supersedes: dict[str, Any] | None = None,
    series: LoadedSeries,
    choice: select.SeriesChoice,
    model: ModelIdentity,
    quant: Quantification,
    seg: Dataset,
    sr: Dataset,
    overlay: list[Dataset],
    summary: Dataset | None = None,
    outlines: Dataset | None = None,
    timings: dict[str, float],
    network_slice_step: int = 1,
) -> dict[str, Any]:
    """Assemble ``report.json`` (see DESIGN.md, "Contracts")."""
    # Every float rounded the way the SR does, so report.json and the SR agree exactly.
    q = round_tree(quant.to_dict(), round_measurement)
    verdicts = [
        {
            "series": v.label,
            "series_instance_uid": v.series_instance_uid,
            "images": v.n_instances,
            "taken": v.taken,
            "reason": v.reason,
        }
        for v in choice.reasons
    ]
    return {
        "schema_version": SCHEMA_VERSION,
        "disclaimer": DISCLAIMER,
        "product": {"name": PRODUCT_NAME, "version": PRODUCT_VERSION},
        "study_instance_uid": series.study_instance_uid,
        "series_instance_uid": series.series_instance_uid,
        "frame_of_reference_uid": series.frame_of_reference_uid,
        "series_number": series.series_number,
        "series_description": series.series_description,
        "series_selection": verdicts,
        "volume": {
            "shape_zyx": list(series.volume.shape),
            "spacing_mm_zyx": [round(s, 4) for s in series.volume.spacing],
        },
        "model": {
            "name": model.name,
            "version": model.version,
            "sha256": model.sha256,
            "execution_provider": model.provider,
            # the network ran on every n-th lung slice, the others interpolated in z
            "network_slice_step": network_slice_step,
        },
        "lung_volume_ml": q["lung_volume_ml"],
        "lesion_volume_ml": q["lesion_volume_ml"],
        "percent_involvement": q["percent_involvement"],
        "zones": q["zones"],
        "severity_score": q["severity_score"],
        "severity_regions": q["severity_regions"],
        "triage": q["triage"],
        "quality": q["quality"],
        "timings_s": timings,
        "outputs": {
            "seg": _object_ref("seg.dcm", seg),
            "sr": _object_ref("sr.dcm", sr),
            "overlay": {
                "folder": "overlay",
                "series_instance_uid": str(overlay[0].SeriesInstanceUID) if overlay else None,
                "sop_instance_uids": [str(ds.SOPInstanceUID) for ds in overlay],
            },
            "summary": _object_ref("summary.dcm", summary) if summary is not None else None,
            "outlines_sr": (
                _object_ref("sr-outlines.dcm", outlines) if outlines is not None else None
            ),
            "preview": "preview.png",
        },
        "supersedes": supersedes,
    }


def _object_ref(file: str, ds: Dataset) -> dict[str, str]:
    """One written object in ``report.json``: its file and its SOP Instance and Series UIDs."""
    return {
        "file": file,
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "series_instance_uid": str(ds.SeriesInstanceUID),
    }


def superseded_entry(previous_result: str) -> dict[str, Any]:
    """The ``supersedes`` entry of a report whose result replaces the one in the folder
    ``previous_result``: that folder and its SEG, SR and overlay UIDs, read from its
    ``report.json`` (only the folder when the report is gone)."""
    report = Path(previous_result) / REPORT_NAME
    if not report.is_file():
        return {"result": previous_result}
    outs = json.loads(report.read_text()).get("outputs", {})
    return {
        "result": previous_result,
        "seg_sop_instance_uid": outs.get("seg", {}).get("sop_instance_uid"),
        "sr_sop_instance_uid": outs.get("sr", {}).get("sop_instance_uid"),
        "overlay_series_instance_uid": outs.get("overlay", {}).get("series_instance_uid"),
    }


def _previous_sr(supersedes: dict[str, Any] | None) -> tuple[Dataset, ...]:
    """The SR of the superseded result, to be referenced as a predecessor document."""
    if not supersedes or not supersedes.get("result"):
        return ()
    path = Path(str(supersedes["result"])) / "sr.dcm"
    if not path.is_file():
        return ()
    return (dcmread(path, stop_before_pixels=True),)


def _reject_unreadable(found: inputs.DiscoveredInput) -> None:
    """A study with unreadable DICOM files is not analysed: a lost slice could go unseen."""
    if found.unreadable:
        first = found.unreadable[0]
        more = f" (and {len(found.unreadable) - 1} more)" if len(found.unreadable) > 1 else ""
        raise InvalidInput(
            f"{len(found.unreadable)} DICOM file(s) could not be read, e.g. "
            f"{first.path.name}: {first.reason}{more}; resend the study"
        )


def choose_series(
    input_path: Path, options: AnalysisOptions, work_dir: Path, timer: StageTimer
) -> select.SeriesChoice:
    """Discover the DICOM files of one study and choose the series to analyse.

    Raises
    ------
    StudyDeclined
        No usable chest CT series (the reason names each series and why).
    InvalidInput
        Unreadable input, or DICOM files that cannot be read.
    """
    with timer.stage("discover"):
        found = inputs.discover(input_path, work_dir=work_dir)
        _reject_unreadable(found)
    with timer.stage("select"):
        choice = select.select_series(found.headers, options.rules)
    for verdict in choice.reasons:
        logger.info("selection: %s", verdict)
    return choice


@overload
def analyze_study(
    input_path: Path,
    out_dir: Path,
    lesion_model: LesionModel,
    options: AnalysisOptions,
    *,
    model: ModelIdentity | None = None,
) -> AnalysisResult: ...


@overload
def analyze_study(
    input_path: Path,
    out_dir: Path | Callable[[str], Path],
    lesion_model: LesionModel,
    options: AnalysisOptions,
    *,
    model: ModelIdentity | None = None,
    eligible_series: Collection[str],
    supersedes: Mapping[str, dict[str, Any]] | None = None,
) -> AnalysisResult | NotSelected: ...


def analyze_study(
    input_path: Path,
    out_dir: Path | Callable[[str], Path],
    lesion_model: LesionModel,
    options: AnalysisOptions,
    *,
    model: ModelIdentity | None = None,
    eligible_series: Collection[str] | None = None,
    supersedes: Mapping[str, dict[str, Any]] | None = None,
) -> AnalysisResult | NotSelected:
    """Analyse one study: DICOM folder or zip in; SEG, SR, overlay, preview and report out.

    Every entry runs a study through this function: ``ct-triage analyze`` and ``demo``, API
    uploads, pulled studies and pushed series (:class:`ct_triage.server.bridge.Bridge`).
    The steps: discover, select, load, compute, quantify, write.

    Parameters
    ----------
    input_path
        Folder of DICOM files (any depth), a zip of them, or a single file.
    out_dir
        Result folder. It receives complete results or is left as it was. The push path
        passes a function of the chosen SeriesInstanceUID instead (its folders are named
        after the series).
    lesion_model
        The lesion segmenter (see :func:`ct_triage.models.lesions.load_lesion_segmenter`).
    options
        Selection rules, triage thresholds, overlay mode.
    model
        Identity written into the outputs; defaults to ``lesion_model.identity``.
    eligible_series
        The push path: the series that may be analysed (those that completed). The series
        are chosen among all of the study's; when the best is not one of these,
        :class:`NotSelected` is returned and nothing is written.
    supersedes
        The push path: by SeriesInstanceUID, the earlier result of that series that its new
        result replaces (a late instance re-ran the series), as :func:`superseded_entry`
        gives it; recorded in ``report.json`` and the SR (see :func:`analyze_series`).

    Returns
    -------
    AnalysisResult
        The result folder, its report and the selection verdicts.
    NotSelected
        Only with ``eligible_series``: the best series is not one of them.

    Raises
    ------
    StudyDeclined
        The input is not a usable chest CT (reason in the message); nothing is written.
    TriageError
        Any other failure; nothing is written.
    """
    if isinstance(out_dir, Path):
        check_output_dir(out_dir)  # fail before any work, not after it
    timer = StageTimer()
    with tempfile.TemporaryDirectory(prefix="ct-triage-in-") as work:
        choice = choose_series(input_path, options, Path(work), timer)
        chosen = choice.series.series_instance_uid
        if eligible_series is not None and chosen not in eligible_series:
            return NotSelected(chosen, choice.reasons)
        with timer.stage("load"):
            series = load_series(choice.paths)
    return analyze_series(
        series,
        choice,
        out_dir if isinstance(out_dir, Path) else out_dir(chosen),
        lesion_model,
        options,
        model=model,
        timer=timer,
        supersedes=(supersedes or {}).get(chosen),
    )


def analyze_series(
    series: LoadedSeries,
    choice: select.SeriesChoice,
    out_dir: Path,
    lesion_model: LesionModel,
    options: AnalysisOptions,
    *,
    model: ModelIdentity | None = None,
    timer: StageTimer | None = None,
    supersedes: dict[str, Any] | None = None,
) -> AnalysisResult:
    """Analyse a loaded series and write its results (complete or none) into ``out_dir``.

    ``supersedes`` names the objects of an earlier result of the same series that this one
    replaces (a late instance re-ran the series); it is recorded in ``report.json``.
    """
    identity: ModelIdentity = model if model is not None else lesion_model.identity  # type: ignore[attr-defined]
    timer = timer if timer is not None else StageTimer()
    check_output_dir(out_dir)
    logger.info(
        "loaded series %s: %d slices, spacing %s mm",
        series.series_instance_uid,
        series.volume.shape[0],
        tuple(round(s, 3) for s in series.volume.spacing),
    )
    _runtimes_used(lesion_model)  # start this study's record (a shared pool may fall back)
    segmentation: Segmentation = segment(series.volume, lesion_model, stage=timer.stage)
    used = _runtimes_used(lesion_model)
    if used:  # the runtimes that served this study, e.g. the pool or the local fallback
        identity = replace(identity, provider=" + ".join(used))
    source = series.datasets
    with (
        atomic_output_dir(out_dir) as staging,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="result-writers") as pool,
    ):
        # Two lines of work after the segmentation, one per core: the quantification, the
        # SR's lesion outlines, then the overlay series, the preview and the summary page
        # (NumPy, zlib: they release the GIL) in a thread, beside the SEG writer (pure-Python
        # DICOM encoding). The SR needs the SEG, the quantification and the outlines; the
        # preview and the summary the quantification. Each task runs in a copy of the
        # caller's context (the job id of the log lines).
        measured = pool.submit(
            contextvars.copy_context().run, _quantify, series, segmentation, options, timer
        )
        # the SR's lesion outlines, found while the SEG is encoded (before the images)
        sections = pool.submit(contextvars.copy_context().run, largest_cross_sections, segmentation)
        images = pool.submit(
            contextvars.copy_context().run,
            _write_images,
            staging,
            series,
            segmentation,
            measured,
            identity,
            options,
            timer,
        )
        with timer.stage("write_seg"):
            seg = write_seg(SegRequest(source=source, segmentation=segmentation, model=identity))
            save_dataset(seg, staging / "seg.dcm")
        quant = measured.result()
        with timer.stage("write_sr"):
            previous = _previous_sr(supersedes)
            request = SrRequest(
                source=source,
                seg=seg,
                quantification=quant,
                model=identity,
                previous_versions=previous,
                sections=sections.result(),
            )
            sr = write_sr(request)
            save_dataset(sr, staging / "sr.dcm")
            outlines = write_outlines_sr(request) if request.sections else None
            if outlines is not None:
                save_dataset(outlines, staging / "sr-outlines.dcm")
        overlay, summary = images.result()
        report = build_report(
            supersedes=supersedes,
            series=series,
            choice=choice,
            model=identity,
            quant=quant,
            seg=seg,
            sr=sr,
            overlay=overlay,
            summary=summary,
            outlines=outlines,
            timings=timer.rounded(),
            network_slice_step=z_step_for(
                float(series.volume.spacing[0]), float(getattr(lesion_model, "z_step_mm", 0.0))
            ),
        )
        (staging / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    logger.info(
        "analysis done: triage %s, severity %d, %.2f s",
        quant.triage.value,
        quant.severity_score,
        report["timings_s"]["total"],
    )
    return AnalysisResult(out_dir=out_dir.resolve(), report=report, selection=choice.reasons)


def _runtimes_used(lesion_model: LesionModel) -> list[str]:
    """The runtimes that served this thread since the last call, when the predictor records
    them (:class:`ct_triage.models.runtime.triton_pool.PoolPredictor`), else ``[]``."""
    take = getattr(getattr(lesion_model, "predictor", None), "take_used", None)
    return list(take()) if callable(take) else []


def _quantify(
    series: LoadedSeries, segmentation: Segmentation, options: AnalysisOptions, timer: StageTimer
) -> Quantification:
    with timer.stage("quality"):
        quality = assess_quality(series.volume, segmentation)
    for flag in quality.flags:
        logger.warning("quality gate: %s", flag.reason)
    with timer.stage("quantify"):
        return quantify(segmentation, options.thresholds, quality)


def _write_images(
    staging: Path,
    series: LoadedSeries,
    segmentation: Segmentation,
    measured: Future[Quantification],
    identity: ModelIdentity,
    options: AnalysisOptions,
    timer: StageTimer,
) -> tuple[list[Dataset], Dataset]:
    """The burned-in overlay series, the summary page and the preview PNG of one result.

    The preview's title and the summary need the quantification (``measured``), the overlay
    does not. Returns the overlay datasets and the summary.
    """
    source = series.datasets
    with timer.stage("write_overlay"):
        overlay = write_overlay_series(
            OverlayRequest(
                source=source,
                hu=series.volume.hu,
                segmentation=segmentation,
                model=identity,
                slices="all" if options.overlay_slices == "all" else "key",
            )
        )
        (staging / "overlay").mkdir()
        for i, ds in enumerate(overlay, start=1):
            save_dataset(ds, staging / "overlay" / f"SC{i:06d}.dcm")
    quant = measured.result()
    with timer.stage("write_preview"):
        pct = quant.percent_involvement
        title = [
            f"{identity.algorithm_label} - triage {quant.triage.value.upper()}, "
            f"severity {quant.severity_score}/25",
            f"Lung involved: right {pct.right:.1f} %, left {pct.left:.1f} %, "
            f"total {pct.total:.1f} %",
        ]
        if not quant.quality.reliable:
            title.append(f"NEEDS A HUMAN - {quant.quality.summary}")
        write_preview_png(
            series.volume.hu, segmentation, staging / "preview.png", title_lines=title
        )
    with timer.stage("write_summary"):
        summary = write_summary(
            result_page(
                source=source,
                hu=series.volume.hu,
                segmentation=segmentation,
                quant=quant,
                model=identity,
            )
        )
        save_dataset(summary, staging / "summary.dcm")
    return overlay, summary
