"""The two slowest single-threaded analysis stages, old code against new, in the same process.

Usage (from the repository root)::

    python -m benchmarks.stages --repeats 5 --out benchmarks/results/stages-cpu-2core.json

Stage ``lungs`` is :func:`ct_triage.models.lungs.segment_lungs`, stage ``postprocess`` is
:func:`ct_triage.models.postprocess.combine` (issue 18). The old code is read from git
(``--rev``, default the commit before the speed-ups): the lung package, ``postprocess.py`` and
the kernels are written under a temporary folder as the package ``_reference`` (their
``ct_triage.kernels`` / ``ct_triage.models.lungs`` / ``ct_triage.models.postprocess`` imports
rewritten to it; the rest of ``ct_triage`` is shared) and imported beside today's code.

Inputs: the 300-slice phantom of ``ct-triage phantom --slices 300 --severity moderate
--seed 3`` (cached under ``$TMPDIR/ct-triage-bench``) and the real LIDC-IDRI chests found
under ``../shared/data/dicom``, each loaded from DICOM as ``analyze`` does. The lesion classes
given to ``combine`` are the shipped lesion model's on that volume. Old and new run
alternately, ``--repeats`` times each; the result is the median wall and CPU (process) seconds
of each, their ratios (old / new) and whether the outputs are byte-identical (they must be).
The load average is recorded with the result: the machine is shared, so compare the ratios,
not the seconds; under load the CPU ratio is the steadier one (the k-d tree query of
``combine`` runs on two threads, whose CPU seconds add up).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy.typing as npt

from benchmarks.run import _say
from ct_triage.models.lungs import segment_lungs
from ct_triage.models.postprocess import combine
from ct_triage.models.volume import Volume

#: The last commit before the stage speed-ups of issue 18.
BASE_REV = "baabdfcaea9480ddf1536883bb32ca673d65cd88"
_ROOT = Path(__file__).resolve().parents[1]
_REFERENCE_SOURCES = {
    "kernels": "kernels/src/ct_triage/kernels",
    "lungs": "models/src/ct_triage/models/lungs",
    "postprocess.py": "models/src/ct_triage/models/postprocess.py",
}
_RENAMES = (
    ("ct_triage.kernels", "_reference.kernels"),
    ("ct_triage.models.lungs", "_reference.lungs"),
    ("ct_triage.models.postprocess", "_reference.postprocess"),
)
_CHESTS = ("lidc_idri_0001", "lidc_idri_0003")


def load_reference(rev: str, folder: Path) -> tuple[ModuleType, ModuleType]:
    """The ``lungs`` package and ``postprocess`` module of ``rev``, importable side by side."""
    package = folder / "_reference"
    for name, source in _REFERENCE_SOURCES.items():
        listing = subprocess.run(
            ["git", "ls-tree", "-r", "--name-only", rev, source],
            cwd=_ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        for path in (p for p in listing if p.endswith(".py")):
            text = subprocess.run(
                ["git", "show", f"{rev}:{path}"], cwd=_ROOT, check=True, capture_output=True
            ).stdout.decode()
            for old, new in _RENAMES:
                text = text.replace(old, new)
            target = package / (
                name if name.endswith(".py") else Path(name, path[len(source) + 1 :])
            )
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    (package / "__init__.py").write_text("")
    sys.path.insert(0, str(folder))
    return importlib.import_module("_reference.lungs"), importlib.import_module(
        "_reference.postprocess"
    )


def _volumes() -> list[tuple[str, Volume]]:
    from ct_triage.dicom_bridge.load import load_series
    from ct_triage.server.cli.phantom import phantom

    root = Path(tempfile.gettempdir()) / "ct-triage-bench" / "stages-seed3-300"
    if not (root / "done").exists():
        _say(f"generating the 300-slice phantom under {root} (once) ...")
        phantom(root, seed=3, n_slices=300, severity="moderate")
        (root / "done").write_text("ok\n")
    series = {"phantom-seed3-300": root / "dicom"}
    data = _ROOT.parent / "shared" / "data" / "dicom"
    series.update({c: data / c for c in _CHESTS if (data / c).is_dir()})
    return [(name, load_series(sorted(p.rglob("*.dcm"))).volume) for name, p in series.items()]


Times = list[tuple[float, float]]


def _time_pair(
    old: Callable[[], Any], new: Callable[[], Any], repeats: int
) -> tuple[Times, Times, Any, Any]:
    """``(wall, cpu)`` seconds of each call, old and new alternating (and which goes first)."""
    times: dict[str, Times] = {"old": [], "new": []}
    out: dict[str, Any] = {}
    for i in range(repeats):
        order = (("old", old), ("new", new)) if i % 2 == 0 else (("new", new), ("old", old))
        for name, fn in order:
            t0, c0 = time.perf_counter(), time.process_time()
            out[name] = fn()
            times[name].append((time.perf_counter() - t0, time.process_time() - c0))
    return times["old"], times["new"], out["old"], out["new"]


def _same(*pairs: tuple[npt.NDArray[Any], npt.NDArray[Any]]) -> bool:
    return all(
        a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes() for a, b in pairs
    )


def _entry(old: Times, new: Times, identical: bool) -> dict[str, Any]:
    """Medians of the wall and the CPU seconds (``(wall, cpu)`` per call) and their ratios."""
    entry: dict[str, Any] = {}
    for i, kind in enumerate(("wall", "cpu")):
        m_old = statistics.median(t[i] for t in old)
        m_new = statistics.median(t[i] for t in new)
        entry[kind] = {
            "old_s": round(m_old, 4),
            "new_s": round(m_new, 4),
            "ratio": round(m_old / m_new, 3),
            "old_all_s": [round(t[i], 4) for t in old],
            "new_all_s": [round(t[i], 4) for t in new],
        }
    entry["identical"] = identical
    return entry


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rev", default=BASE_REV, help="git revision of the old code")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from ct_triage.models.lesions import load_lesion_segmenter
    from ct_triage.models.runtime.factory import RuntimeConfig

    with tempfile.TemporaryDirectory() as tmp:
        ref_lungs, ref_post = load_reference(args.rev, Path(tmp))
        model = load_lesion_segmenter(RuntimeConfig())
        results: dict[str, Any] = {}
        for name, volume in _volumes():
            _say(f"{name}: {volume.shape} ...")
            lo, ln, lungs_old, lungs = _time_pair(
                partial(ref_lungs.segment_lungs, volume),
                partial(segment_lungs, volume),
                args.repeats,
            )
            lesions = model(volume, lungs)
            po, pn, seg_old, seg = _time_pair(
                partial(ref_post.combine, volume, lungs, lesions),
                partial(combine, volume, lungs, lesions),
                args.repeats,
            )
            results[name] = {
                "shape": list(volume.shape),
                "spacing_mm": [round(s, 4) for s in volume.spacing],
                "lungs": _entry(lo, ln, _same((lungs_old, lungs))),
                "postprocess": _entry(
                    po, pn, _same((seg_old.lungs, seg.lungs), (seg_old.lesions, seg.lesions))
                ),
            }
            _say(
                json.dumps({k: results[name][k]["wall"]["ratio"] for k in ("lungs", "postprocess")})
            )
    report = {
        "what": "segment_lungs and combine, old (--rev) vs new, same process, median seconds",
        "rev_old": args.rev,
        "rev_new": subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=_ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "repeats": args.repeats,
        "host": platform.node(),
        "cpus": len(os.sched_getaffinity(0)),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    identical = all(r[s]["identical"] for r in results.values() for s in ("lungs", "postprocess"))
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
