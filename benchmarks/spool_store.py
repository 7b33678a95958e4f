"""The receive path's cost per instance: ``Spool.store`` of a 300-slice series, two ways.

Usage (from the repository root)::

    python -m benchmarks.spool_store --repeats 5 --out benchmarks/results/spool-store.json

Every instance the Storage SCP acknowledges is first made durable by ``Spool.store``: the
file (temporary file, ``fsync``, rename, ``fsync`` of the folder) and then its row in the
SQLite index. The sender waits for each acknowledgement before it sends the next instance, so
this cost is paid once per slice, in series.

* ``all_sync``: the baseline, every index commit waits for the disk (``synchronous=FULL``),
  as before the change;
* ``default``: today's code, where the row of a *new* instance commits without the WAL fsync
  (its file is already durable; ``recover`` re-records a file whose row a power cut lost).

Both store the same bytes into a fresh spool in the same run, alternating, on the same disk.
The result is the median milliseconds per instance of each and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.run import _say, phantom_study
from ct_triage.dicom_bridge.spool import Spool
from ct_triage.dicom_bridge.spool.index import SpoolIndex


@contextmanager
def _all_sync() -> Iterator[None]:
    """Every index commit synchronous (the baseline)."""
    original = SpoolIndex.record

    def record(self: SpoolIndex, *args: Any, **kwargs: Any) -> tuple[int, bool]:
        kwargs["sync"] = True
        return original(self, *args, **kwargs)

    SpoolIndex.record = record  # type: ignore[method-assign]
    try:
        yield
    finally:
        SpoolIndex.record = original  # type: ignore[method-assign]


def _store_all(raws: Sequence[bytes], root: Path) -> float:
    """Seconds to store every instance of ``raws`` into a new spool at ``root``."""
    with Spool(root, quiet_period_s=60.0) as spool:
        start = time.perf_counter()
        for raw in raws:
            spool.store(raw, calling_ae="BENCH")
        return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.spool_store", description=__doc__)
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    study = phantom_study(args.slices)
    raws = [f.read_bytes() for f in sorted(study.rglob("*.dcm"))]
    _say(f"{len(raws)} instances, {sum(map(len, raws)) / 1e6:.0f} MB")
    per_instance_ms: dict[str, list[float]] = {"all_sync": [], "default": []}
    with tempfile.TemporaryDirectory(prefix="ct-triage-spool-bench-") as tmp:
        for i in range(args.repeats):
            for name in ("all_sync", "default"):
                root = Path(tmp) / f"{name}-{i}"
                if name == "all_sync":
                    with _all_sync():
                        seconds = _store_all(raws, root)
                else:
                    seconds = _store_all(raws, root)
                per_instance_ms[name].append(1000.0 * seconds / len(raws))
                _say(f"{name}: {per_instance_ms[name][-1]:.2f} ms per instance")
    medians = {k: float(np.median(v)) for k, v in per_instance_ms.items()}
    result = {
        "what": "Spool.store of every instance of a series into a fresh spool (file fsync + "
        "folder fsync + index commit), ms per instance",
        "instances": len(raws),
        "repeats": args.repeats,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_1min": os.getloadavg()[0],
        },
        "ms_per_instance": per_instance_ms,
        "median_ms_per_instance": medians,
        "ratio_all_sync_over_default": medians["all_sync"] / medians["default"],
        "series_seconds_saved": (medians["all_sync"] - medians["default"]) * len(raws) / 1000.0,
    }
    _say(
        f"median {medians['all_sync']:.2f} ms (all commits synchronous) vs "
        f"{medians['default']:.2f} ms (default): {result['ratio_all_sync_over_default']:.2f}x, "
        f"{result['series_seconds_saved']:.2f} s saved per {len(raws)}-slice series"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
