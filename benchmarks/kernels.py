"""Kernel micro-benchmark: each NumPy/SciPy reference against its fast version, same inputs.

Usage (from the repository root)::

    python -m benchmarks.kernels                 # 300-slice phantom, median of 3
    python -m benchmarks.kernels --slices 64 --repeats 1 --out benchmarks/results/k.json

Both sides run under the allocator tuning that ``ct-triage`` applies at start-up
(``ct_triage.server.tuning``; ``--no-malloc-tuning`` to compare without). Inputs come from the
benchmark phantom (seed 7, moderate, 512 x 512, 1 mm slices): its HU
volume and its exact lung / lesion labels. For every kernel the table gives the reference
time, the fast time, the ratio, and how the outputs compare (the same checks as
``tests/unit/test_kernels.py``, on real-sized data).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from ct_triage.kernels import accelerated as acc
from ct_triage.kernels import components
from ct_triage.kernels.preprocess import (
    Box,
    uncrop_argmax,
    uncrop_argmax_reference,
    window_crop_resize,
    window_crop_resize_reference,
)


def _time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _probs(labels: npt.NDArray[np.uint8], size: int) -> npt.NDArray[np.float32]:
    """Network-like class probabilities on a ``size``-square grid from a label stack."""
    zoom = (1.0, size / labels.shape[1], size / labels.shape[2])
    small = ndi.zoom(labels, zoom, order=0)
    logits = np.full((labels.shape[0], 3, size, size), -2.0, dtype=np.float32)
    logits[:, 0] = 2.0
    for k in (1, 2):
        logits[:, k][small == k] = 4.0
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    result: npt.NDArray[np.float32] = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return result


def _compare_labels(a: Any, b: Any) -> str:
    return "identical" if a[1] == b[1] and np.array_equal(a[0], b[0]) else "DIFFER"


def _compare_nearest(a: Any, b: Any) -> str:
    (da, la), (db, lb) = a, b
    same_inf = bool(np.array_equal(np.isinf(da), np.isinf(db)))
    finite = np.isfinite(da) & np.isfinite(db)
    diff = float(np.abs(da[finite] - db[finite]).max()) if finite.any() else 0.0
    return (
        f"max |d| diff {diff:.1e} mm, beyond-margin sets {'equal' if same_inf else 'DIFFER'},"
        f" labels differ at {int((la != lb).sum())} (left/right ties)"
    )


def run(n_slices: int, repeats: int) -> list[dict[str, Any]]:
    """Time every kernel pair; return one row per kernel."""
    from ct_triage.models.phantom import generate, spec_from_seed

    ph = generate(spec_from_seed(7, n_slices=n_slices, severity="moderate", slice_spacing_mm=1.0))
    hu, lungs, lesions = ph.volume.hu, ph.lung_labels, ph.lesion_class
    spacing = ph.volume.spacing
    rows: list[dict[str, Any]] = []

    def add(name: str, ref: Callable[[], Any], fast: Callable[[], Any], compare: Any) -> None:
        t_ref, out_ref = _time(ref, repeats)
        t_fast, out_fast = _time(fast, repeats)
        rows.append(
            {
                "kernel": name,
                "reference_s": t_ref,
                "fast_s": t_fast,
                "ratio": t_ref / t_fast if t_fast > 0 else float("inf"),
                "equality": compare(out_ref, out_fast),
            }
        )
        ratio = rows[-1]["ratio"]
        print(f"{name:<44} {t_ref:8.3f} s {t_fast:8.3f} s {ratio:6.1f}x  {rows[-1]['equality']}")

    box = Box(y0=70.0, x0=60.0, height=380.0, width=390.0)
    with_lung = np.flatnonzero(lungs.any(axis=(1, 2)))
    stack = hu[with_lung[0] : with_lung[-1] + 1]
    add(
        f"window + crop-resize, {stack.shape[0]} slices -> 224^2",
        lambda: window_crop_resize_reference(stack, box, 224, -1024.0, 150.0),
        lambda: window_crop_resize(stack, box, 224, -1024.0, 150.0),
        lambda a, b: f"max abs diff {float(np.abs(a - b).max()):.1e}",
    )
    mid = lesions.shape[0] // 2
    probs = _probs(lesions[mid - 8 : mid + 8], 224)
    add(
        "uncrop + arg-max, 16 x 3 x 224^2",
        lambda: uncrop_argmax_reference(probs, box, (512, 512))[0],
        lambda: uncrop_argmax(probs, box, (512, 512))[0],
        lambda a, b: f"classes equal at {100.0 * float(np.mean(a == b)):.4f} % of pixels",
    )
    lung_mask = lungs > 0
    for what, mask in (("lungs", lung_mask), ("lesions", lesions > 0)):
        add(
            f"3-D 26-connected label ({what})",
            lambda m=mask: components.label(m, components.FULL_CONNECTIVITY),
            lambda m=mask: acc.label_fast(m, 26),
            _compare_labels,
        )
    air = hu < -380
    add(
        "in-plane label (air, 8-connected per slice)",
        lambda: components.label(air, components.INPLANE_CONNECTIVITY),
        lambda: acc.label_inplane_fast(air),
        _compare_labels,
    )
    body = hu > -380
    add(
        "in-plane hole filling (body)",
        lambda: components.fill_holes_inplane(body),
        lambda: acc.fill_holes_inplane_fast(body),
        lambda a, b: "identical" if np.array_equal(a, b) else "DIFFER",
    )
    near = ndi.binary_dilation(lesions > 0, iterations=3) & ~lung_mask
    add(
        f"nearest lung within 25 mm ({int(near.sum())} voxels)",
        lambda: components.nearest_label_within(lungs, spacing, near, 25.0),
        lambda: acc.nearest_label_within_fast(lungs, spacing, near, 25.0),
        _compare_nearest,
    )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.kernels``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__)
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="leave glibc's allocator as it is (the pipeline tunes it at start-up)",
    )
    args = p.parse_args(argv)
    if not args.no_malloc_tuning:
        from ct_triage.server.tuning import tune_allocator

        tune_allocator()  # as ct-triage does: both sides of every pair run under it
    print(f"{'kernel':<44} {'reference':>10} {'fast':>10} {'ratio':>7}  equality")
    rows = run(args.slices, args.repeats)
    if args.out:
        args.out.write_text(json.dumps({"slices": args.slices, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
