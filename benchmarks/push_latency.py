"""Time to result from the PACS's point of view: last image pushed -> SEG and SR in the PACS.

Usage (from the repository root, with the dev install; Debian ``orthanc``, ``dcmtk``)::

    python -m benchmarks.push_latency --repeats 5 --out benchmarks/results/push-latency.json

What runs, all real parts:

* **Orthanc** (``tests/orthanc.py``) with the routing a site would configure (README, "DICOM
  bridge"): a Lua ``OnStableSeries`` callback that C-STOREs each stable CT series to the
  triage node, ``StableAge`` 1 s (its smallest value; Orthanc's default is 60 s).
* **Two ``ct-triage serve`` processes** (HTTP API, DICOM listener, job worker, delivery),
  each with its own data folder, delivering SEG, SR and overlay back to Orthanc by C-STORE:
  ``new`` with today's defaults and ``old`` with the settings before this change (quiet
  period 10 s, no completion on association release, no start-up warm-up). Orthanc's Lua
  target is switched between them (``/tools/execute-script``), so their runs alternate under
  the same machine load.
* **storescu** (DCMTK) pushes a 300-slice synthetic chest CT (``benchmarks.run``'s phantom,
  new Study/Series/SOP Instance UIDs for every run) to Orthanc, as a modality would.

The clock starts when ``storescu`` returns (the last image acknowledged by Orthanc and the
association released) and stops when Orthanc's REST API lists the SEG and the SR series in
the study (polled every 0.1 s). From each run's ``report.json`` and spool index the time is
split into: PACS routing + transfer to us (the last instance in our spool), completion wait,
analysis, and delivery.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.run import REPO, _say, phantom_study

sys.path.insert(0, str(REPO / "tests"))
from orthanc import OrthancServer, free_port, orthanc_available

#: Orthanc routing scripts (README, "DICOM bridge"). Only CT is routed: our own results
#: (SEG, SR, OT) coming back are never sent to us again. ``target`` is switched per run.
LUA_ROUTING = {
    # Each series once it is stable (StableAge): one association per series.
    "stable": """
target = 'triage'
function OnStableSeries(seriesId, tags, metadata)
   if tags['Modality'] == 'CT' then
      -- a job of Orthanc's (one association for the whole series), not the Lua thread
      RestApiPost('/modalities/' .. target .. '/store',
                  '{"Resources": ["' .. seriesId .. '"], "Synchronous": false}')
   end
end
""",
    # Each instance as it arrives: Orthanc batches them on one association that it closes
    # DicomAssociationCloseDelay seconds after the last one.
    "instance": """
target = 'triage'
function OnStoredInstance(instanceId, tags, metadata, origin)
   if tags['Modality'] == 'CT' then
      SendToModality(instanceId, target)
   end
end
""",
}

#: The two configurations compared (environment of ``ct-triage serve``).
CONFIGS: dict[str, dict[str, str]] = {
    "new": {},  # today's defaults
    "old": {
        "CT_TRIAGE_QUIET_PERIOD_S": "10",
        "CT_TRIAGE_COMPLETION_SETTLE_S": "10",  # >= the quiet period: release not used
        "CT_TRIAGE_STARTUP_WARMUP": "false",
    },
}


def _renumber(src: Path, dst: Path, tag: int) -> list[Path]:
    """Copy a series with new Study/Series/SOP Instance UIDs (one study per run)."""
    import pydicom
    from pydicom.uid import generate_uid

    dst.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out = []
    for i, f in enumerate(sorted(src.glob("*.dcm"))):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = frame
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.AccessionNumber = f"BENCH{tag:04d}"
        path = dst / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


class Serve:
    """One ``ct-triage serve`` subprocess."""

    def __init__(self, name: str, work: Path, orthanc: OrthancServer, env: dict[str, str]):
        self.name = name
        self.data = work / f"data-{name}"
        self.port = free_port()
        self.aet = f"TRIAGE_{name.upper()}"
        self.log = work / f"serve-{name}.log"
        self.env = dict(
            os.environ,
            CT_TRIAGE_DATA_DIR=str(self.data),
            CT_TRIAGE_AE_TITLE=self.aet,
            CT_TRIAGE_DICOM_HOST="127.0.0.1",
            CT_TRIAGE_DICOM_PORT=str(self.port),
            CT_TRIAGE_HTTP_HOST="127.0.0.1",
            CT_TRIAGE_HTTP_PORT=str(free_port()),
            CT_TRIAGE_DESTINATIONS=json.dumps(
                [f"dimse:{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"]
            ),
            TCP_NODELAY="1",
            **env,
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        t0 = time.perf_counter()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ct_triage.server.cli", "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        while "serving: model" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve {self.name} exited; see {self.log}")
            time.sleep(0.1)
        return time.perf_counter() - t0

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def spool_times(self, series_uid: str) -> tuple[float, float] | None:
        """(first, last) arrival of a series in this server's spool, wall-clock."""
        db = sqlite3.connect(f"file:{self.data / 'spool' / 'spool.db'}?mode=ro", uri=True)
        try:
            row = db.execute(
                "SELECT first_received, last_received FROM series WHERE series_uid = ?",
                (series_uid,),
            ).fetchone()
        finally:
            db.close()
        return None if row is None else (float(row[0]), float(row[1]))

    def report(self, study_uid: str) -> dict[str, Any] | None:
        for path in (self.data / "results").rglob("report.json"):
            report: dict[str, Any] = json.loads(path.read_text())
            if report.get("study_instance_uid") == study_uid:
                return report
        return None


def _lookup(orthanc: OrthancServer, uid: str) -> str | None:
    r = httpx.post(f"{orthanc.url}/tools/lookup", content=uid, auth=orthanc.auth, timeout=10)
    r.raise_for_status()
    found = [m["ID"] for m in r.json() if m["Type"] == "Study"]
    return found[0] if found else None


def one_run(
    orthanc: OrthancServer, serve: Serve, files: list[Path], timeout_s: float
) -> dict[str, Any]:
    """Push ``files`` with storescu; time last image sent -> SEG and SR in Orthanc."""
    import pydicom

    head = pydicom.dcmread(files[0], stop_before_pixels=True)
    study_uid, series_uid = str(head.StudyInstanceUID), str(head.SeriesInstanceUID)
    httpx.post(
        f"{orthanc.url}/tools/execute-script",
        content=f"target = '{serve.name}'",
        auth=orthanc.auth,
        timeout=10,
    ).raise_for_status()
    load_before = os.getloadavg()[0]
    t_push = time.time()
    subprocess.run(
        ["storescu", "-aec", orthanc.aet, "127.0.0.1", str(orthanc.dicom_port), *map(str, files)],
        check=True,
        env=dict(os.environ, TCP_NODELAY="1"),
        capture_output=True,
    )
    t_sent = time.time()
    seen: dict[str, float] = {}
    deadline = t_sent + timeout_s
    study_id = None
    while time.time() < deadline and not {"SEG", "SR"} <= seen.keys():
        study_id = study_id or _lookup(orthanc, study_uid)
        if study_id is not None:
            series = orthanc.get(f"/studies/{study_id}/series")
            now = time.time()
            for s in series:
                seen.setdefault(s["MainDicomTags"].get("Modality", ""), now)
        time.sleep(0.1)
    if not {"SEG", "SR"} <= seen.keys():
        raise RuntimeError(f"{serve.name}: no SEG+SR in Orthanc within {timeout_s} s")
    t_done = max(seen["SEG"], seen["SR"])
    spool = serve.spool_times(series_uid)
    report = None
    for _ in range(50):
        report = serve.report(study_uid)
        if report is not None:
            break
        time.sleep(0.1)
    analysis = float(report["timings_s"]["total"]) if report else float("nan")
    run: dict[str, Any] = {
        "config": serve.name,
        "push_s": t_sent - t_push,
        "last_sent_to_seg_sr_s": t_done - t_sent,
        "last_sent_to_seg_s": seen["SEG"] - t_sent,
        "last_sent_to_sr_s": seen["SR"] - t_sent,
        "analysis_s": analysis,
        # everything but our analysis: routing, transfer, completion, hand-off, delivery
        "not_analysis_s": t_done - t_sent - analysis,
        "load_1min": load_before,
    }
    if spool is not None:
        run["routing_and_transfer_s"] = spool[1] - t_sent
        run["transfer_s"] = spool[1] - spool[0]
        run["completion_and_delivery_s"] = t_done - spool[1] - analysis
    _say(
        f"{serve.name}: {run['last_sent_to_seg_sr_s']:.2f} s "
        f"(routing+transfer {run.get('routing_and_transfer_s', float('nan')):.2f} s, "
        f"analysis {analysis:.2f} s, load {load_before:.2f})"
    )
    if study_id is not None:  # keep Orthanc small between runs
        time.sleep(1.0)  # let the overlay finish arriving
        httpx.delete(f"{orthanc.url}/studies/{study_id}", auth=orthanc.auth, timeout=60)
    return run


def _summary(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in runs[0]:
        if key == "config":
            continue
        values = np.asarray([r[key] for r in runs if key in r], dtype=np.float64)
        out[key] = {
            "median": float(np.median(values)),
            "min": float(values.min()),
            "max": float(values.max()),
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.push_latency", description=__doc__)
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--repeats", type=int, default=5, help="runs per configuration")
    p.add_argument("--routing", choices=sorted(LUA_ROUTING), default="stable")
    p.add_argument("--stable-age", type=int, default=1, help="Orthanc StableAge (s)")
    p.add_argument(
        "--close-delay",
        type=int,
        default=1,
        help="Orthanc DicomAssociationCloseDelay (s), instance routing",
    )
    p.add_argument("--timeout-s", type=float, default=180.0)
    p.add_argument("--configs", default="new,old", help="which of new,old to run")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--work", type=Path, default=None, help="keep the work files (logs) here")
    args = p.parse_args(argv)
    reason = orthanc_available()
    if reason or shutil.which("storescu") is None:
        print(f"skipped: {reason or 'storescu (dcmtk) not installed'}", file=sys.stderr)
        return 0
    names = [n for n in args.configs.split(",") if n]
    source = phantom_study(args.slices)
    with tempfile.TemporaryDirectory(prefix="ct-triage-push-") as tmp:
        work = args.work or Path(tmp)
        if args.work:
            shutil.rmtree(work, ignore_errors=True)
        _say(f"writing {args.repeats * len(names)} renumbered copies of the study ...")
        copies = [
            _renumber(source, work / f"study{i}", i) for i in range(args.repeats * len(names))
        ]
        script = work / "route.lua"
        script.write_text(LUA_ROUTING[args.routing])
        serves: dict[str, Serve] = {}
        modalities: dict[str, tuple[str, str, int]] = {}
        orthanc = OrthancServer(work / "orthanc")
        for name in names:
            serves[name] = Serve(name, work, orthanc, CONFIGS[name])
            modalities[name] = (serves[name].aet, "127.0.0.1", serves[name].port)
        orthanc.modalities = modalities
        orthanc.extra_config = {
            "StableAge": args.stable_age,
            "DicomAssociationCloseDelay": args.close_delay,
            "LuaScripts": [str(script)],
            "ExecuteLuaEnabled": True,
        }
        orthanc.start()
        startup: dict[str, float] = {}
        runs: list[dict[str, Any]] = []
        try:
            for name, serve in serves.items():
                startup[name] = serve.start()
                _say(f"serve {name} up in {startup[name]:.1f} s")
            for i in range(args.repeats):
                for j, name in enumerate(names):
                    run = one_run(orthanc, serves[name], copies[i * len(names) + j], args.timeout_s)
                    run["repeat"] = i
                    runs.append(run)
        finally:
            for serve in serves.values():
                serve.stop()
            orthanc.stop()
    by_config = {n: _summary([r for r in runs if r["config"] == n]) for n in names}
    result: dict[str, Any] = {
        "what": "storescu push of a study to Orthanc, last image sent -> SEG and SR listed "
        "by Orthanc (Lua OnStableSeries routing to ct-triage serve, delivery by C-STORE)",
        "slices": args.slices,
        "repeats": args.repeats,
        "orthanc_routing": args.routing,
        "orthanc_lua": LUA_ROUTING[args.routing],
        "orthanc_stable_age_s": args.stable_age,
        "orthanc_association_close_delay_s": args.close_delay,
        "configs": {n: CONFIGS[n] or "defaults" for n in names},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "serve_startup_s": startup,
        "runs": runs,
        "summary": by_config,
    }
    if {"new", "old"} <= set(names):
        new = by_config["new"]["last_sent_to_seg_sr_s"]["median"]
        old = by_config["old"]["last_sent_to_seg_sr_s"]["median"]
        result["old_over_new"] = old / new
        print(
            f"last image sent -> SEG+SR in Orthanc, median of {args.repeats}: "
            f"new {new:.2f} s, old settings {old:.2f} s ({old / new:.2f}x)"
        )
    for n in names:
        s = by_config[n]
        print(
            f"{n}: median {s['last_sent_to_seg_sr_s']['median']:.2f} s "
            f"(min {s['last_sent_to_seg_sr_s']['min']:.2f}, max "
            f"{s['last_sent_to_seg_sr_s']['max']:.2f}); analysis median "
            f"{s['analysis_s']['median']:.2f} s, all but analysis median "
            f"{s['not_analysis_s']['median']:.2f} s"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        _say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
