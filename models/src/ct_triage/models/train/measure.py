"""Measure an exported lesion model (ONNX) the way it ships: the numbers of its manifest.

``python -m ct_triage.models.train.measure --model DIR [--data DATA] [--json OUT] [--speed]``

* MedSeg validation split (the 10 held-out slices of :func:`~.data.medseg_split`): mean
  per-slice ``lesion_dice``, ``ggo_dice``, ``consolidation_dice`` through
  :func:`ct_triage.models.lesions.segment_slices` on the original slice grid;
* held-out phantoms (:data:`REPORT_PHANTOMS`, never trained on nor used for checkpoint
  selection): the full compute path of ``analyze``, :func:`ct_triage.models.analysis.segment`
  then :func:`ct_triage.models.quantify.quantify`, against the phantom truth:
  ``phantom_poi_abs_error_pp`` (mean absolute error of the total percent of lung involved,
  percentage points), its maximum, and the predicted involvement of the lesion-free
  phantoms (``phantom_healthy_max_poi_pp``, absent when the set has none);
* ``real_hu_ct/totalseg_example_ct_sm.npz``: ``totalseg_lung_dice`` of the classical lungs
  against the TotalSegmentator reference and ``totalseg_healthy_poi_pp``, the percent of
  that (lesion-free) lung the pipeline calls lesion;
* ``--phantoms second|dev|SEED:SEVERITY:SLICES|all,...``: another phantom set instead of
  the report phantoms (``second``: the held-out :data:`SECOND_PHANTOMS`; ``dev``: the
  development set :data:`DEV_PHANTOMS`, not held out);
* ``--speed``: seconds of the lesion segmenter on a 300-slice 512 x 512 phantom.

No torch: this runs with the inference dependencies only.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ct_triage.models.analysis import LesionModel, segment
from ct_triage.models.lesions import (
    LesionSegmenter,
    PredictFn,
    load_lesion_segmenter,
    segment_slices,
)
from ct_triage.models.lungs import segment_lungs
from ct_triage.models.manifest import InputSpec
from ct_triage.models.metrics import class_dice, dice
from ct_triage.models.preprocess import whole_image_box
from ct_triage.models.quantify import quantify
from ct_triage.models.runtime.factory import RuntimeConfig
from ct_triage.models.train.data import MedsegSlice, load_medseg, medseg_split
from ct_triage.models.volume import Volume

logger = logging.getLogger(__name__)

#: Held-out phantoms of the report: (seed, severity, n_slices or None for a whole thorax).
#: Seeds 11-14 at 60 slices are those of ``tests/e2e/test_analyze_phantom.py``.
REPORT_PHANTOMS: tuple[tuple[int, str, int | None], ...] = (
    (11, "none", 60),
    (12, "mild", 60),
    (13, "moderate", 60),
    (14, "severe", 60),
    (31, "none", None),
    (32, "mild", None),
    (33, "moderate", None),
    (34, "severe", None),
    (35, "mild", None),
    (36, "moderate", None),
)


def _three_of_each(
    first_seed: int, severities: tuple[str, str, str]
) -> tuple[tuple[int, str, int | None], ...]:
    """Twelve phantoms from ``first_seed`` on, the severities in turn: six at 60 slices, then
    six whole thoraxes."""
    return tuple(
        (seed, severities[i % 3], 60 if i < 6 else None)
        for i, seed in enumerate(range(first_seed, first_seed + 12))
    )


#: A second held-out set (``--phantoms second``), added for model 0.4.0's decision and never
#: used for training, checkpoint selection or calibration: three of each severity at 60
#: slices and as whole thoraxes.
SECOND_PHANTOMS = _three_of_each(71, ("mild", "moderate", "severe"))


#: A development set (``--phantoms dev``) for error analysis (:mod:`.diagnose`) and as a
#: criterion of model-adoption rules written before a candidate is measured (from
#: 2026-11-26): never trained on, nor used for checkpoint selection or calibration, but looked
#: at while deciding, so it is *not* a held-out set. Same layout as :data:`SECOND_PHANTOMS`.
DEV_PHANTOMS = _three_of_each(41, ("severe", "moderate", "mild"))


def evaluate_slices(
    predict: PredictFn, slices: Iterable[MedsegSlice], spec: InputSpec
) -> dict[str, float]:
    """Mean per-slice Dice on full-resolution MedSeg slices through the inference path.

    The one per-slice scoring of the lesion network: the training loop's validation
    (:mod:`.loop`), the bias calibration (:mod:`.calibrate`) and :func:`measure_medseg` use it.
    Each slice goes through :func:`ct_triage.models.lesions.segment_slices` on its original
    grid. ``lesion_dice``: Dice of (pred > 0) vs (truth > 0); ``ggo_dice`` /
    ``consolidation_dice``: Dice of each class (1.0 when truth and prediction are both empty).

    Parameters
    ----------
    predict
        The network: ``(N, C, H, W)`` windowed input to class probabilities.
    slices
        The slices, read one at a time (a generator keeps memory flat).
    spec
        The network's input description (manifest).
    """
    les, ggo, con = [], [], []
    for s in slices:
        pred = segment_slices(
            s.hu[None],
            np.array([0], dtype=np.intp),
            whole_image_box(s.hu.shape),
            predict,
            spec,
        )[0]
        les.append(dice(s.lesion_class > 0, pred > 0))
        ggo.append(class_dice(s.lesion_class, pred, 1))
        con.append(class_dice(s.lesion_class, pred, 2))
    return {
        "lesion_dice": float(np.mean(les)),
        "ggo_dice": float(np.mean(ggo)),
        "consolidation_dice": float(np.mean(con)),
    }


def measure_medseg(seg: LesionSegmenter, data_dir: Path) -> dict[str, float]:
    """Mean per-slice Dice on the MedSeg validation split (original slice grid)."""
    _, val_files = medseg_split(data_dir)
    return evaluate_slices(
        seg.predictor.predict, (load_medseg(f) for f in val_files), seg.manifest.input
    )


def measure_phantoms(
    seg: LesionModel,
    phantoms: tuple[tuple[int, str, int | None], ...] = REPORT_PHANTOMS,
) -> tuple[dict[str, float], list[dict[str, object]]]:
    """Percent-involvement error on held-out phantoms through ``segment`` + ``quantify``."""
    from ct_triage.models import phantom

    errors, healthy, cases = [], [], []
    for seed, severity, n_slices in phantoms:
        ph = phantom.generate(phantom.spec_from_seed(seed, n_slices=n_slices, severity=severity))
        truths = phantom.percent_involvement(ph)
        got = quantify(segment(ph.volume, seg)).percent_involvement
        truth, pred = truths["total"], got.total
        cases.append(
            {"seed": seed, "severity": severity, "slices": ph.volume.shape[0],
             "true_poi": truth, "pred_poi": pred,
             "true_poi_right": truths["right"], "pred_poi_right": got.right,
             "true_poi_left": truths["left"], "pred_poi_left": got.left}
        )  # fmt: skip
        logger.info("phantom %d %s: truth %.2f %% predicted %.2f %%", seed, severity, truth, pred)
        if severity == "none":
            healthy.append(pred)
        else:
            errors.append(abs(pred - truth))
    metrics = {
        "phantom_poi_abs_error_pp": float(np.mean(errors)),
        "phantom_poi_max_abs_error_pp": float(np.max(errors)),
    }
    if healthy:  # absent (not NaN, which is not JSON) for a set without a lesion-free phantom
        metrics["phantom_healthy_max_poi_pp"] = float(np.max(healthy))
    return metrics, cases


def measure_totalseg(seg: LesionSegmenter, data_dir: Path) -> dict[str, float]:
    """Lung Dice of the classical lungs and the lesion percent the pipeline finds."""
    path = data_dir / "real_hu_ct" / "totalseg_example_ct_sm.npz"
    with np.load(path) as d:
        image, lung, sp = d["image"], d["lung_mask"], d["spacing"]
    vol = Volume(hu=image.astype(np.int16), spacing=(float(sp[0]), float(sp[1]), float(sp[2])))
    lungs = segment_lungs(vol)
    result = segment(vol, seg, require_lungs=False)
    q = quantify(result)
    return {
        "totalseg_lung_dice": dice(lung > 0, lungs > 0),
        "totalseg_healthy_poi_pp": q.percent_involvement.total,
    }


def measure_speed(seg: LesionSegmenter, *, n_slices: int = 300, seed: int = 41) -> float:
    """Seconds of the lesion segmenter alone on a ``n_slices`` 512 x 512 phantom (1 mm)."""
    from ct_triage.models import phantom

    ph = phantom.generate(
        phantom.spec_from_seed(seed, n_slices=n_slices, severity="moderate", slice_spacing_mm=1.0)
    )
    lungs = segment_lungs(ph.volume)
    warm = np.zeros_like(lungs)
    warm[n_slices // 2] = lungs[n_slices // 2]
    seg(ph.volume, warm)  # warm-up: ONNX Runtime's first call allocates
    t0 = time.perf_counter()
    seg(ph.volume, lungs)
    return time.perf_counter() - t0


def parse_phantoms(text: str) -> tuple[tuple[int, str, int | None], ...]:
    """``"71:mild:60,77:severe:all"`` -> ``((71, "mild", 60), (77, "severe", None))``;
    ``"second"``: :data:`SECOND_PHANTOMS`; ``"dev"``: :data:`DEV_PHANTOMS`.

    Raises
    ------
    ValueError
        A malformed entry, an unknown severity or a slice count below 8.
    """
    from ct_triage.models.phantom import SEVERITIES

    named = {"second": SECOND_PHANTOMS, "dev": DEV_PHANTOMS}.get(text.strip())
    if named is not None:
        return named
    out: list[tuple[int, str, int | None]] = []
    for entry in text.split(","):
        parts = entry.strip().split(":")
        if len(parts) != 3 or not parts[0].isdigit():
            raise ValueError(f"phantom {entry!r}: expected SEED:SEVERITY:SLICES|all")
        seed, severity, n = int(parts[0]), parts[1], parts[2]
        if severity not in SEVERITIES:
            raise ValueError(f"phantom {entry!r}: severity must be one of {sorted(SEVERITIES)}")
        if n != "all" and not (n.isdigit() and int(n) >= 8):
            raise ValueError(f"phantom {entry!r}: slices must be a number >= 8 or 'all'")
        out.append((seed, severity, None if n == "all" else int(n)))
    return tuple(out)


def measure_model(
    model_dir: Path | None,
    data_dir: Path,
    *,
    threads: int = 2,
    speed: bool = False,
    phantoms: tuple[tuple[int, str, int | None], ...] = REPORT_PHANTOMS,
) -> tuple[dict[str, float], dict[str, object]]:
    """All manifest metrics of the model in ``model_dir`` (``None``: the shipped one).

    ``phantoms`` replaces the report phantoms (then the ``phantom_*`` numbers describe that
    set, not the manifest's).
    """
    seg = load_lesion_segmenter(RuntimeConfig(model_dir=model_dir, threads=threads, z_step_mm=0.0))
    metrics = measure_medseg(seg, data_dir)
    ph_metrics, cases = measure_phantoms(seg, phantoms)
    metrics.update(ph_metrics)
    metrics.update(measure_totalseg(seg, data_dir))
    if speed:
        metrics["lesion_seconds_300x512x512"] = measure_speed(seg)
    return metrics, {"phantoms": cases}


def main(argv: list[str] | None = None) -> int:
    from ct_triage.models.train.data import default_data_dir

    parser = argparse.ArgumentParser(prog="python -m ct_triage.models.train.measure")
    parser.add_argument("--model", type=Path, default=None, help="model dir (default: shipped)")
    parser.add_argument("--data", type=Path, default=None, help="shared data dir")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--speed", action="store_true", help="also time a 300-slice study")
    parser.add_argument(
        "--phantoms",
        default=None,
        help="measure these phantoms instead of the report set: "
        "second|dev|SEED:SEVERITY:SLICES|all,...",
    )
    args = parser.parse_args(argv)
    try:
        phantoms = parse_phantoms(args.phantoms) if args.phantoms else REPORT_PHANTOMS
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    metrics, details = measure_model(
        args.model,
        args.data or default_data_dir(),
        threads=args.threads,
        speed=args.speed,
        phantoms=phantoms,
    )
    text = json.dumps({"metrics": metrics, **details}, indent=1, allow_nan=False)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
