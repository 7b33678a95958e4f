"""Benchmark harness: our pipeline vs a MONAI-Deploy-style baseline, in one run.

Usage (from the repository root)::

    python -m benchmarks.run --slices 300 --repeats 3 --out benchmarks/results/$(hostname).json
    python -m benchmarks.run --quick                       # CI smoke: 64 slices, 1 repeat
    python -m benchmarks.run --slices 300 --batch 6        # I/O overlapped with compute
    python -m benchmarks.run --slices 300 --batch 6 --batch-procs 2   # + 2 worker processes
    python -m benchmarks.run --slices 300 --orthanc        # series complete -> SEG+SR in Orthanc

One synthetic chest CT (``ct_triage.models.phantom``, written as DICOM by
``ct_triage.dicom_bridge.synthetic``) is generated once and cached under the temp folder.
Each side runs in its own subprocess so that its peak RSS (``ru_maxrss``) is its own.
Results: medians and p95 per stage, the baseline/ours ratio end to end, peak RSS, the
execution provider, a JSON file and a bar chart (PNG) next to it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import queue
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("benchmarks")

REPO = Path(__file__).resolve().parent.parent
SEED = 7
SEVERITY = "moderate"
OUR_STAGES = (
    "discover",
    "select",
    "load",
    "lungs",
    "inference",
    "postprocess",
    "quantify",
    "write_seg",
    "write_sr",
    "write_overlay",
    "write_preview",
    "total",
)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def phantom_study(n_slices: int, cache: Path | None = None) -> Path:
    """The cached synthetic study (``.../dicom``) with ``n_slices`` 512 x 512 slices (1 mm)."""
    root = (cache or Path(tempfile.gettempdir()) / "ct-triage-bench") / f"seed{SEED}-{n_slices}"
    dicom = root / "dicom"
    if (root / "done").exists():
        return dicom
    from ct_triage.dicom_bridge.synthetic import write_phantom_series
    from ct_triage.models.phantom import generate, percent_involvement, spec_from_seed

    _say(f"generating the {n_slices}-slice phantom under {root} (once) ...")
    spec = spec_from_seed(SEED, n_slices=n_slices, severity=SEVERITY, slice_spacing_mm=1.0)
    ph = generate(spec)
    shutil.rmtree(root, ignore_errors=True)
    write_phantom_series(ph, dicom)
    (root / "truth.json").write_text(json.dumps(percent_involvement(ph)))
    (root / "done").write_text("ok\n")
    return dicom


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    return float(kb) / 1024.0


def _stats(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "median": float(np.median(arr)),
        "p95": float(np.percentile(arr, 95)),
        "min": float(arr.min()),
        "n": float(arr.size),
    }


def _per_stage(runs: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = [k for k in runs[0] if all(k in r for r in runs)]
    return {k: _stats([r[k] for r in runs]) for k in keys}


# ---------------------------------------------------------------------------------------------
# Workers (each in its own subprocess)
# ---------------------------------------------------------------------------------------------


def _load_ours() -> tuple[Any, Any]:
    from ct_triage.server.settings import Settings
    from ct_triage.server.wiring import load_model, options_from

    settings = Settings()
    if settings.malloc_tuning:  # as the ct-triage command does at start-up
        from ct_triage.server.tuning import tune_allocator

        tune_allocator()
    if "CUDAExecutionProvider" in _ort_providers() and settings.inference.provider == "cpu":
        cuda = settings.inference.model_copy(update={"provider": "cuda"})
        settings = settings.model_copy(update={"inference": cuda})
    return load_model(settings), options_from(settings)


def _ort_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def worker_ours(series: Path, work: Path, repeats: int) -> dict[str, Any]:
    """``analyze_study`` ``repeats`` times; per-stage timings from its StageTimer."""
    from ct_triage.server.pipeline import analyze_study

    model, options = _load_ours()
    runs, reports = [], []
    for r in range(repeats):
        out = work / f"ours_{r}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        result = analyze_study(series, out, model, options)
        wall = time.perf_counter() - t0
        timings = dict(result.report["timings_s"])
        timings["end_to_end"] = wall
        runs.append(timings)
        reports.append(result.report)
        _say(f"ours run {r + 1}/{repeats}: {wall:.2f} s")
    rep = reports[-1]
    return {
        "runs": runs,
        "provider": model.identity.provider,
        "percent_involvement": rep["percent_involvement"],
        "lesion_volume_ml": rep["lesion_volume_ml"],
        "lung_volume_ml": rep["lung_volume_ml"],
    }


def worker_baseline(series: Path, work: Path, repeats: int) -> dict[str, Any]:
    """The MONAI-Deploy-style baseline ``repeats`` times (see :mod:`benchmarks.baseline_monai`)."""
    from benchmarks.baseline_monai import run_baseline
    from ct_triage.models.manifest import WEIGHTS_DIR, load_manifest

    manifest = load_manifest(WEIGHTS_DIR)
    lo, hi = (float(v) for v in manifest.input.hu_window)
    paths = sorted(series.rglob("*.dcm"))
    res = run_baseline(paths, work, repeats, WEIGHTS_DIR / manifest.file, (lo, hi), _say)
    for r in res["runs"]:
        r["end_to_end"] = r["total"]
    return res


def worker_orthanc(series: Path, work: Path, repeats: int) -> dict[str, Any]:
    """Series complete -> analysis -> SEG and SR C-STOREd into a real Orthanc (timed)."""
    sys.path.insert(0, str(REPO / "tests"))
    from orthanc import OrthancServer, orthanc_available

    from ct_triage.dicom_bridge.destinations import CStoreDestination
    from ct_triage.dicom_bridge.dimse import PacsNode
    from ct_triage.server.pipeline import analyze_study

    reason = orthanc_available()
    if reason:
        return {"skipped": reason}
    model, options = _load_ours()
    server = OrthancServer(work / "orthanc")
    server.start()
    try:
        dest = CStoreDestination(
            PacsNode(ae_title=server.aet, host="127.0.0.1", port=server.dicom_port)
        )
        runs = []
        for r in range(repeats):
            out = work / f"orthanc_{r}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            analyze_study(series, out, model, options)
            t1 = time.perf_counter()
            sent = dest.send([out / "seg.dcm", out / "sr.dcm"])
            t2 = time.perf_counter()
            if not sent.ok:
                raise RuntimeError(f"C-STORE failed: {sent}")
            runs.append({"analysis": t1 - t0, "c_store": t2 - t1, "end_to_end": t2 - t0})
            _say(f"orthanc run {r + 1}/{repeats}: {t2 - t0:.2f} s")
        stored = len(server.series_by_modality("SEG")), len(server.series_by_modality("SR"))
    finally:
        server.stop()
    return {"runs": runs, "provider": model.identity.provider, "stored_seg_sr_series": stored}


def worker_batch(series: Path, work: Path, n: int) -> dict[str, Any]:
    """``n`` studies sequentially, then ``n`` with the next study loaded by a prefetch thread."""
    from ct_triage.dicom_bridge.load import load_series
    from ct_triage.server.pipeline import analyze_series, choose_series
    from ct_triage.server.timing import StageTimer

    model, options = _load_ours()

    def load(i: int) -> tuple[Any, Any, StageTimer]:
        timer = StageTimer()
        with tempfile.TemporaryDirectory(prefix="bench-in-") as tmp:
            choice = choose_series(series, options, Path(tmp), timer)
            with timer.stage("load"):
                loaded = load_series(choice.paths)
        return loaded, choice, timer

    def analyse(i: int, item: tuple[Any, Any, StageTimer], tag: str) -> None:
        out = work / f"batch_{tag}_{i}"
        shutil.rmtree(out, ignore_errors=True)
        loaded, choice, timer = item
        analyze_series(loaded, choice, out, model, options, timer=timer)
        shutil.rmtree(out, ignore_errors=True)

    t0 = time.perf_counter()
    for i in range(n):
        analyse(i, load(i), "seq")
    seq = time.perf_counter() - t0
    _say(f"batch sequential: {n} studies in {seq:.1f} s")

    q: queue.Queue[tuple[Any, Any, StageTimer] | BaseException] = queue.Queue(maxsize=1)

    def prefetch() -> None:
        for i in range(n):
            try:
                q.put(load(i))
            except BaseException as exc:  # handed to the consumer, raised there
                q.put(exc)
                return

    t0 = time.perf_counter()
    th = threading.Thread(target=prefetch, name="prefetch", daemon=True)
    th.start()
    for i in range(n):
        item = q.get()
        if isinstance(item, BaseException):
            raise item
        analyse(i, item, "ovl")
    th.join()
    ovl = time.perf_counter() - t0
    _say(f"batch overlapped: {n} studies in {ovl:.1f} s")
    return {
        "n": n,
        "sequential_s": seq,
        "overlapped_s": ovl,
        "studies_per_min_sequential": 60.0 * n / seq,
        "studies_per_min_overlapped": 60.0 * n / ovl,
        "projected_120_min_sequential": 120 * seq / n / 60.0,
        "projected_120_min_overlapped": 120 * ovl / n / 60.0,
        "provider": model.identity.provider,
    }


def worker_batch_part(series: Path, work: Path, n: int) -> dict[str, Any]:
    """One of several worker processes sharing a batch: ``n`` studies back to back.

    The compute of extra ``ct-triage worker`` processes taking batch jobs (each with its own
    data folder and model session, ``CT_TRIAGE_INFERENCE_THREADS`` set by the parent); the
    job store is not part of it. The wall-clock window is reported so the parent can take
    the union.
    """
    from ct_triage.server.pipeline import analyze_study

    model, options = _load_ours()
    tag = f"part{os.getpid()}"
    t_start = time.time()
    for i in range(n):
        out = work / f"batch_{tag}_{i}"
        shutil.rmtree(out, ignore_errors=True)
        analyze_study(series, out, model, options)
        shutil.rmtree(out, ignore_errors=True)
    return {"n": n, "t_start": t_start, "t_end": time.time()}


WORKERS = {
    "ours": worker_ours,
    "baseline": worker_baseline,
    "orthanc": worker_orthanc,
    "batch": worker_batch,
    "batch_part": worker_batch_part,
}


def batch_processes(series: Path, work: Path, n: int, procs: int) -> dict[str, Any]:
    """``n`` studies shared by ``procs`` worker processes (CPU threads split between them)."""
    cpus = len(os.sched_getaffinity(0))
    threads = max(1, cpus // procs)
    shares = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    env = dict(os.environ, CT_TRIAGE_INFERENCE_THREADS=str(threads))
    running = []
    for i, share in enumerate(shares):
        out = work / f"batch_part_{i}.json"
        cmd = [sys.executable, "-m", "benchmarks.run", "--worker", "batch_part"]
        cmd += ["--series", str(series), "--work", str(work), "--count", str(share)]
        cmd += ["--worker-out", str(out)]
        running.append((subprocess.Popen(cmd, cwd=REPO, env=env), out))
    parts = []
    for proc, out in running:
        if proc.wait() != 0:
            raise RuntimeError(f"batch worker process failed with exit code {proc.returncode}")
        parts.append(json.loads(out.read_text()))
    wall = max(p["t_end"] for p in parts) - min(p["t_start"] for p in parts)
    _say(f"batch in {procs} processes: {n} studies in {wall:.1f} s")
    return {
        "n": n,
        "processes": procs,
        "inference_threads_each": threads,
        "wall_s": wall,
        "studies_per_min": 60.0 * n / wall,
        "projected_120_min": 120 * wall / n / 60.0,
        "peak_rss_mb_each": [p["peak_rss_mb"] for p in parts],
    }


def _spawn(kind: str, series: Path, work: Path, count: int) -> dict[str, Any]:
    """Run one worker in a fresh interpreter; its result includes its own peak RSS."""
    out = work / f"{kind}.json"
    cmd = [sys.executable, "-m", "benchmarks.run", "--worker", kind, "--series", str(series)]
    cmd += ["--work", str(work), "--count", str(count), "--worker-out", str(out)]
    subprocess.run(cmd, cwd=REPO, check=True)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


#: Stages of ``analyze_series`` that run in its writer thread, beside write_seg + write_sr.
_WRITER_THREAD_STAGES = ("quantify", "write_overlay", "write_preview")


def _chart(results: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    sides = [("ours", "ours (ct-triage)"), ("baseline", "MONAI Deploy style")]
    span = max(results[k]["stages"]["end_to_end"]["median"] for k, _ in sides)

    def label(x: float, y: float, width: float, text: str) -> None:
        # wide bars get their stage name across, narrow ones along the bar's height
        wide = width > 0.06 * span
        ax.text(
            x + width / 2,
            y,
            text,
            ha="center",
            va="center",
            fontsize=7 if wide else 5.5,
            rotation=0 if wide else 90,
        )

    for row, (key, _name) in enumerate(sides):
        stages = results[key]["stages"]
        end_to_end = stages["end_to_end"]["median"]
        left, thread_left = 0.0, None
        for stage, st in stages.items():
            if stage in {"total", "end_to_end"} or stage in _WRITER_THREAD_STAGES:
                continue
            if stage == "write_seg":
                thread_left = left
            width = st["median"]
            ax.barh(row, width, left=left, height=0.5, edgecolor="white")
            if width > 0.01 * span:
                label(left, row, width, stage)
            left += width
        threaded = [s for s in _WRITER_THREAD_STAGES if s in stages]
        if thread_left is not None and threaded:
            # the writer thread runs beside SEG + SR: a second, thinner lane under them
            for stage in threaded:
                width = stages[stage]["median"]
                ax.barh(row - 0.4, width, left=thread_left, height=0.25, edgecolor="white")
                thread_left += width
            names = " → ".join(s.replace("write_", "") for s in threaded)
            ax.text(thread_left, row - 0.4, f" {names} (writer thread)", va="center", fontsize=6)
        ax.text(
            max(left, thread_left or 0.0),
            row,
            f" {end_to_end:.1f} s end to end",
            va="center",
            fontsize=9,
        )
    ax.set_yticks(range(len(sides)), [n for _, n in sides])
    ax.set_xlabel("seconds (median per stage; the thin lane runs in a thread beside SEG + SR)")
    ax.set_title(f"{results['slices']}-slice chest CT, {results['host']['cpus']} CPU(s)")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def _print_table(results: dict[str, Any]) -> None:
    for key in ("ours", "baseline"):
        if key not in results:
            continue
        res = results[key]
        print(f"\n{key}  (provider {res['provider']}, peak RSS {res['peak_rss_mb']:.0f} MB)")
        for stage, st in res["stages"].items():
            print(f"  {stage:<14} median {st['median']:8.3f} s   p95 {st['p95']:8.3f} s")
    if "ratio_baseline_over_ours" in results:
        ratio = results["ratio_baseline_over_ours"]
        print(f"\nbaseline / ours end to end (median): {ratio:.2f}x")
    if "orthanc" in results:
        o = results["orthanc"]
        if "stages" in o:
            st = o["stages"]
            print(
                "series complete -> SEG+SR stored in Orthanc: median "
                f"{st['end_to_end']['median']:.2f} s (analysis {st['analysis']['median']:.2f} s"
                f" + C-STORE {st['c_store']['median']:.2f} s), first run in a fresh process "
                f"{o['first_run_end_to_end_s']:.2f} s"
            )
        else:
            print(f"orthanc: {json.dumps(o)}")
    if "batch" in results:
        b = results["batch"]
        print(
            f"batch of {b['n']}: sequential {b['studies_per_min_sequential']:.2f} studies/min, "
            f"overlapped {b['studies_per_min_overlapped']:.2f} studies/min; 120 studies: "
            f"{b['projected_120_min_sequential']:.1f} / {b['projected_120_min_overlapped']:.1f} min"
        )
    if "batch_processes" in results:
        b = results["batch_processes"]
        print(
            f"batch of {b['n']} in {b['processes']} processes ({b['inference_threads_each']} "
            f"inference thread(s) each): {b['studies_per_min']:.2f} studies/min; 120 studies: "
            f"{b['projected_120_min']:.1f} min"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.run``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=0, help="also run N studies, overlapped I/O")
    p.add_argument(
        "--batch-procs",
        type=int,
        default=0,
        help="also run the batch in K worker processes (threads split between them)",
    )
    p.add_argument("--orthanc", action="store_true", help="also time delivery to Orthanc")
    p.add_argument("--quick", action="store_true", help="CI smoke: 64 slices, 1 repeat")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--cache", type=Path, default=None, help="phantom cache folder")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--series", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    if args.worker:
        res = WORKERS[args.worker](args.series, args.work, args.count)
        res["peak_rss_mb"] = _peak_rss_mb()
        args.worker_out.write_text(json.dumps(res))
        return 0

    if args.quick:
        args.slices, args.repeats = 64, 1
    series = phantom_study(args.slices, args.cache)
    host = platform.node() or "host"
    out = args.out or REPO / "benchmarks" / "results" / f"{host}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "slices": args.slices,
        "repeats": args.repeats,
        "host": {
            "name": host,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "ort_providers": _ort_providers(),
        },
        "truth_percent_involvement": json.loads((series.parent / "truth.json").read_text()),
    }
    with tempfile.TemporaryDirectory(prefix="ct-triage-bench-") as tmp:
        work = Path(tmp)
        kinds = ["ours"] + ([] if args.skip_baseline else ["baseline"])
        for kind in kinds:
            res = _spawn(kind, series, work, args.repeats)
            res["stages"] = _per_stage(res.pop("runs"))
            results[kind] = res
        if args.orthanc:
            res = _spawn("orthanc", series, work, args.repeats)
            if "runs" in res:
                runs = res.pop("runs")
                res["first_run_end_to_end_s"] = runs[0]["end_to_end"]  # cold process
                res["stages"] = _per_stage(runs)
            results["orthanc"] = res
        if args.batch:
            results["batch"] = _spawn("batch", series, work, args.batch)
            if args.batch_procs > 1:
                results["batch_processes"] = batch_processes(
                    series, work, args.batch, args.batch_procs
                )
    if "baseline" in results:
        results["ratio_baseline_over_ours"] = (
            results["baseline"]["stages"]["end_to_end"]["median"]
            / results["ours"]["stages"]["end_to_end"]["median"]
        )
        _chart(results, out.with_suffix(".png"))
    _print_table(results)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}" + (f" and {out.with_suffix('.png')}" if "baseline" in results else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
