"""Re-choose the background-logit bias of a trained model on the calibration phantoms.

``python -m ct_triage.models.train.calibrate --model DIR --out DIR2 [--biases 0,0.25,...]``

``DIR`` is a training output (``checkpoint.pt``, ``manifest.json``). Every bias of the grid is
scored through the compute path of ``analyze`` (lesion network on the lung slices,
:func:`~ct_triage.models.postprocess.combine`, :func:`~ct_triage.models.quantify.quantify`)
on :data:`CALIBRATION_PHANTOMS` (the selection phantoms of training plus six whole-thorax
tuning phantoms; never the report phantoms of :mod:`.measure`), and on the MedSeg
validation slices. The chosen bias is the one with the smallest *worst* percent-involvement
error among those that keep the MedSeg validation lesion Dice at or above ``--dice-floor``
(ties: the smaller mean error). The network is then exported again with that bias baked
into the softmax head, and the new model is measured with :func:`.measure.measure_model`.
``calibration.json`` in ``DIR2`` keeps every bias tried.

The network runs once per input: the probabilities of another bias follow exactly from
those at bias 0 (the bias only scales the background probability before normalisation).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from ct_triage.models.lesions import PredictFn
from ct_triage.models.manifest import WEIGHTS_DIR, load_manifest
from ct_triage.models.nets import LesionNetConfig, build_lesion_net
from ct_triage.models.train.data import load_medseg, medseg_split, phantom_cases
from ct_triage.models.train.export import record_metrics, write_model_dir
from ct_triage.models.train.loop import phantom_poi_errors, torch_predictor
from ct_triage.models.train.measure import evaluate_slices

logger = logging.getLogger(__name__)

#: (seed, severity, slices or None for the whole thorax): the training selection phantoms
#: 21-28 at 60 slices and the tuning phantoms 61-66; disjoint from the report phantoms
#: (11-14, 31-36) and the training phantoms (>= 1000).
CALIBRATION_PHANTOMS: tuple[tuple[int, str, int | None], ...] = (
    (21, "mild", 60),
    (22, "moderate", 60),
    (23, "severe", 60),
    (24, "moderate", 60),
    (25, "mild", 60),
    (26, "moderate", 60),
    (27, "severe", 60),
    (28, "moderate", 60),
    (61, "mild", None),
    (62, "moderate", None),
    (63, "severe", None),
    (64, "mild", None),
    (65, "moderate", None),
    (66, "severe", None),
)
DEFAULT_BIASES = (-0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


class BiasedPredictor:
    """Probabilities of ``net`` with a background-logit bias, the network run once per input.

    ``softmax(z - b e0) = p * w / sum(p * w)`` with ``w = (exp(-b), 1, 1)`` and ``p`` the
    probabilities at bias 0, so only the bias-0 probabilities are cached (by input digest).
    """

    def __init__(self, predict: PredictFn) -> None:
        self._predict = predict
        self._cache: dict[bytes, npt.NDArray[np.float32]] = {}
        self.bias = 0.0

    def __call__(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        key = hashlib.blake2b(np.ascontiguousarray(batch).tobytes(), digest_size=16).digest()
        base = self._cache.get(key)
        if base is None:
            base = self._cache[key] = self._predict(batch)
        p = np.array(base, dtype=np.float64)
        p[:, 0] *= np.exp(-self.bias)
        p /= p.sum(axis=1, keepdims=True)
        return p.astype(np.float32)


def choose(rows: list[dict[str, float]], dice_floor: float) -> dict[str, float]:
    """The row with the smallest worst error among those at or above the Dice floor."""
    ok = [r for r in rows if r["lesion_dice"] >= dice_floor] or rows
    return min(ok, key=lambda r: (round(r["max_abs_error_pp"], 6), r["mean_abs_error_pp"]))


def main(argv: list[str] | None = None) -> int:
    from ct_triage.models.train.data import default_data_dir
    from ct_triage.models.train.measure import measure_model

    parser = argparse.ArgumentParser(prog="python -m ct_triage.models.train.calibrate")
    parser.add_argument("--model", type=Path, required=True, help="training output directory")
    parser.add_argument("--out", type=Path, required=True, help="new model directory")
    parser.add_argument("--data", type=Path, default=None, help="shared data dir")
    parser.add_argument(
        "--biases", default=",".join(f"{b:g}" for b in DEFAULT_BIASES), help="grid to try"
    )
    parser.add_argument("--dice-floor", type=float, default=0.78)
    parser.add_argument("--version", default=None, help="model version (default: the source's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--allow-shipped", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.out.resolve() == WEIGHTS_DIR.resolve() and not args.allow_shipped:
        parser.error("refusing to overwrite the shipped weights without --allow-shipped")
    biases = [float(b) for b in args.biases.split(",")]
    data_dir = args.data or default_data_dir()
    torch.set_num_threads(args.threads)

    source = load_manifest(args.model)
    spec = source.input
    net = build_lesion_net(LesionNetConfig())
    net.load_state_dict(
        torch.load(args.model / "checkpoint.pt", map_location="cpu", weights_only=True)
    )
    net.eval()
    predictor = BiasedPredictor(torch_predictor(net, torch.device("cpu")))
    val = [load_medseg(f) for f in medseg_split(data_dir)[1]]
    cases = [
        case
        for seed, severity, n in CALIBRATION_PHANTOMS
        for case in phantom_cases({seed: severity}, n)
    ]
    rows: list[dict[str, float]] = []
    for bias in biases:
        predictor.bias = bias
        row: dict[str, float] = {"background_bias": bias}
        row.update(evaluate_slices(predictor, val, spec))
        errors = phantom_poi_errors(predictor, cases, spec)
        row["mean_abs_error_pp"] = float(np.mean(np.abs(errors)))
        row["max_abs_error_pp"] = float(np.max(np.abs(errors)))
        row.update({c.name: e for c, e in zip(cases, errors, strict=True)})
        rows.append(row)
        logger.info(
            "bias %.2f: MedSeg lesion Dice %.4f, calibration phantoms mean %.2f max %.2f pp",
            bias,
            row["lesion_dice"],
            row["mean_abs_error_pp"],
            row["max_abs_error_pp"],
        )
    best = choose(rows, args.dice_floor)
    bias = best["background_bias"]
    logger.info("chosen background bias %.2f", bias)
    note = (
        f" Background bias re-chosen by `python -m ct_triage.models.train.calibrate` as "
        f"{bias:g} (was {_recorded(source.training.background_bias)}): the smallest worst "
        "percent-involvement error on calibration phantoms "
        f"{', '.join(str(s) for s, _, _ in CALIBRATION_PHANTOMS)} with the MedSeg validation "
        f"lesion Dice >= {args.dice_floor:g}."
    )
    training = source.training.model_copy(update={"notes": source.training.notes + note})
    version = args.version or source.version
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = write_model_dir(
        net, spec, args.out, version=version, training=training, metrics={},
        background_bias=bias,
    )  # fmt: skip
    metrics, details = measure_model(args.out, data_dir, threads=args.threads)
    record_metrics(manifest, args.out, metrics)
    torch.save(net.state_dict(), args.out / "checkpoint.pt")
    (args.out / "measure.json").write_text(json.dumps(details, indent=1) + "\n")
    (args.out / "calibration.json").write_text(
        json.dumps({"chosen": bias, "dice_floor": args.dice_floor, "rows": rows}, indent=1) + "\n"
    )
    print(json.dumps({"out": str(args.out), "background_bias": bias, "metrics": metrics}, indent=1))
    return 0


def _recorded(bias: float | None) -> str:
    return "not recorded" if bias is None else f"{bias:g}"


if __name__ == "__main__":
    sys.exit(main())
