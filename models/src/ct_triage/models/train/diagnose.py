"""Where the percent-involvement error of a model comes from, on phantoms with exact truth.

``python -m ct_triage.models.train.diagnose [--model DIR] [--phantoms dev|second|SEED:SEV:N,...]
[--json OUT]``

Each phantom runs through the compute path of ``analyze`` (:func:`ct_triage.models.analysis.segment`
then :func:`ct_triage.models.quantify.quantify`); :func:`decompose` then splits the error into
volumes (mL): lesion missed (and how much of it lies outside the predicted lungs), false
lesion (outside the true lungs, i.e. mediastinum, chest wall or below the diaphragm, and on
dense tissue such as vessels inside the lungs), lung missed and false lung, and the total
percent-involvement error split into its numerator part (lesion volume wrong, true lung
volume) and its denominator part (lung volume wrong). The default set is the development set
``--phantoms dev`` (:data:`~.measure.DEV_PHANTOMS`, not held out): analyse on it, not on the
held-out sets.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ct_triage.models.analysis import segment
from ct_triage.models.lesions import load_lesion_segmenter
from ct_triage.models.quantify import quantify
from ct_triage.models.runtime.factory import RuntimeConfig
from ct_triage.models.train.measure import parse_phantoms

logger = logging.getLogger(__name__)

#: Denser than this (HU) counts as dense tissue (vessels, soft tissue) in :func:`decompose`.
DENSE_HU = -300.0


def decompose(
    true_lungs: npt.NDArray[np.bool_],
    true_lesions: npt.NDArray[np.bool_],
    pred_lungs: npt.NDArray[np.bool_],
    pred_lesions: npt.NDArray[np.bool_],
    hu: npt.NDArray[np.integer] | npt.NDArray[np.floating],
    voxel_ml: float,
) -> dict[str, float]:
    """Volumes (mL) of each kind of error and the percent-involvement error split in two.

    ``poi_error_pp = numerator_pp + denominator_pp`` exactly, with
    ``numerator_pp = 100 (pred lesion - true lesion) / true lung`` and ``denominator_pp`` the
    rest (the effect of the predicted lung volume differing from the true one).

    Raises
    ------
    ValueError
        On shape mismatch or empty true lungs.
    """
    shapes = {a.shape for a in (true_lungs, true_lesions, pred_lungs, pred_lesions, hu)}
    if len(shapes) != 1:
        raise ValueError(f"all arrays must have the same shape, got {sorted(shapes)}")
    if not true_lungs.any() or not pred_lungs.any():
        raise ValueError("the true and predicted lungs must not be empty")

    def ml(mask: npt.NDArray[np.bool_]) -> float:
        return float(np.count_nonzero(mask)) * voxel_ml

    missed = true_lesions & ~pred_lesions
    false = pred_lesions & ~true_lesions
    lung_t, lung_p, les_t, les_p = (
        ml(true_lungs),
        ml(pred_lungs),
        ml(true_lesions),
        ml(pred_lesions),
    )
    poi_t, poi_p = 100.0 * les_t / lung_t, 100.0 * les_p / lung_p
    numerator = 100.0 * (les_p - les_t) / lung_t
    return {
        "true_poi": poi_t,
        "poi_error_pp": poi_p - poi_t,
        "numerator_pp": numerator,
        "denominator_pp": poi_p - poi_t - numerator,
        "lesion_true_ml": les_t,
        "lesion_pred_ml": les_p,
        "lesion_missed_ml": ml(missed),
        "lesion_missed_outside_pred_lungs_ml": ml(missed & ~pred_lungs),
        "lesion_false_ml": ml(false),
        "lesion_false_outside_true_lungs_ml": ml(false & ~true_lungs),
        "lesion_false_dense_in_lungs_ml": ml(false & true_lungs & (hu > DENSE_HU)),
        "lung_true_ml": lung_t,
        "lung_pred_ml": lung_p,
        "lung_missed_ml": ml(true_lungs & ~pred_lungs),
        "lung_false_ml": ml(pred_lungs & ~true_lungs),
    }


def main(argv: list[str] | None = None) -> int:
    from ct_triage.models import phantom

    parser = argparse.ArgumentParser(prog="python -m ct_triage.models.train.diagnose")
    parser.add_argument("--model", type=Path, default=None, help="model dir (default: shipped)")
    parser.add_argument("--phantoms", default="dev", help="dev|second|SEED:SEVERITY:SLICES|all,...")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        phantoms = parse_phantoms(args.phantoms)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    seg = load_lesion_segmenter(
        RuntimeConfig(model_dir=args.model, threads=args.threads, z_step_mm=0.0)
    )
    rows: list[dict[str, object]] = []
    errors: list[float] = []
    print(
        f"{'phantom':>18} {'true %':>7} {'error':>6} {'num':>6} {'den':>6} "
        f"{'missed':>7} {'false':>7} {'out':>7} {'dense':>6}  (pp / mL)"
    )
    for seed, severity, n_slices in phantoms:
        ph = phantom.generate(phantom.spec_from_seed(seed, n_slices=n_slices, severity=severity))
        result = segment(ph.volume, seg)
        d = decompose(
            ph.lung_labels > 0,
            ph.lesion_mask > 0,
            result.lungs > 0,
            result.lesions > 0,
            ph.volume.hu,
            ph.volume.voxel_volume_ml,
        )
        poi = quantify(result).percent_involvement.total
        if abs(poi - d["true_poi"] - d["poi_error_pp"]) > 0.01:  # the same path as measure
            raise RuntimeError(f"phantom {seed}: decomposition disagrees with quantify")
        rows.append({"seed": seed, "severity": severity, "slices": ph.volume.shape[0], **d})
        if severity != "none":
            errors.append(abs(d["poi_error_pp"]))
        print(
            f"{seed:>5} {severity:>8} {ph.volume.shape[0]:>3} {d['true_poi']:7.2f} "
            f"{d['poi_error_pp']:+6.2f} {d['numerator_pp']:+6.2f} {d['denominator_pp']:+6.2f} "
            f"{d['lesion_missed_ml']:7.1f} {d['lesion_false_ml']:7.1f} "
            f"{d['lesion_false_outside_true_lungs_ml']:7.1f} "
            f"{d['lesion_false_dense_in_lungs_ml']:6.1f}",
            flush=True,
        )
    if errors:
        print(f"mean |error| {np.mean(errors):.2f} pp, worst {np.max(errors):.2f} pp")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
