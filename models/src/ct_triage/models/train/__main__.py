"""``python -m ct_triage.models.train --config {smoke,cpu,gpu} --out DIR``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from ct_triage.models.manifest import WEIGHTS_DIR, TrainingInfo
from ct_triage.models.train.config import CONFIGS, get_config
from ct_triage.models.train.data import default_data_dir, medseg_split
from ct_triage.models.train.export import record_metrics, write_model_dir
from ct_triage.models.train.loop import input_spec, train
from ct_triage.models.train.measure import evaluate_slices

logger = logging.getLogger("ct_triage.models.train")

DATA_DESCRIPTION = (
    "MedSeg COVID-19 CT segmentation slices (COVID-SemiSeg training split redistributed by "
    "Inf-Net, github:DengPingFan/Inf-Net@fb3a03b5b2f70642fbf2a12cde9e5c41b5ebd28e), 2-D "
    "lung-window JPEG slices with approximate HU, radiologist GGO/consolidation masks; "
    "{n_train} slices for training, {n_val} held out for validation. Lesion-free examples: "
    "real true-HU slices (TotalSegmentator example CT, Apache-2.0; dcmqi 3-slice CT, "
    "BSD-3-Clause){phantom}."
)
LICENCE = (
    "Weights trained on COVID-SemiSeg data: non-commercial research use only (inherited from "
    "the training data). Not for primary diagnosis."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ct_triage.models.train", description=__doc__)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    parser.add_argument("--out", type=Path, required=True, help="output model directory")
    parser.add_argument("--data", type=Path, default=None, help="shared data dir")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate")
    parser.add_argument(
        "--phantom-volumes", type=int, default=None, help="synthetic volumes to sample slices from"
    )
    parser.add_argument(
        "--init", type=Path, default=None, help="checkpoint.pt of an earlier run to start from"
    )
    parser.add_argument(
        "--fold",
        type=int,
        default=None,
        help="MedSeg cross-validation fold 0-4 (its 10 slices held out), or -1: train on all 50",
    )
    parser.add_argument(
        "--negatives",
        type=Path,
        nargs="*",
        default=None,
        help="real lesion-free chest CT volumes (.npz; python -m ct_triage.dicom_bridge.to_npz)",
    )
    parser.add_argument("--version", default="0.2.0")
    parser.add_argument(
        "--cache", type=Path, default=None, help="folder to keep the cached phantom slices in"
    )
    parser.add_argument(
        "--no-measure",
        action="store_true",
        help="skip the held-out phantom and TotalSegmentator measurements (MedSeg Dice only)",
    )
    parser.add_argument(
        "--allow-shipped",
        action="store_true",
        help="allow --out to be the shipped weights directory",
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    out: Path = args.out
    if out.resolve() == WEIGHTS_DIR.resolve() and not args.allow_shipped:
        parser.error("refusing to overwrite the shipped weights without --allow-shipped")
    cfg = get_config(
        args.config,
        steps=args.steps,
        eval_every=args.eval_every,
        lr=args.lr,
        phantom_volumes=args.phantom_volumes,
        init=str(args.init) if args.init else None,
        fold=args.fold,
        negatives=tuple(str(p) for p in args.negatives) if args.negatives else None,
    )
    if cfg.needs_init and not cfg.init:
        parser.error(f"--config {cfg.name} needs --init CHECKPOINT")
    data_dir = args.data or default_data_dir()
    result = train(cfg, data_dir, progress=not args.quiet, cache_dir=args.cache)
    spec = input_spec(cfg)
    train_files, val_files = medseg_split(data_dir, cfg.fold)
    training = TrainingInfo(
        data=DATA_DESCRIPTION.format(
            n_train=len(train_files),
            n_val=len(val_files),
            phantom=(
                f"; up to {cfg.phantom_per_volume} lung slices from each of "
                f"{cfg.phantom_volumes} synthetic phantom volumes (ct_triage.models.phantom, "
                "seeds 1000+, severities none/mild/moderate/severe in turn)"
                if cfg.phantom_volumes
                else ""
            ),
        ),
        licence=LICENCE,
        validation_split=[f.name for f in val_files],
        seed=cfg.seed,
        config=cfg.describe(),
        notes=(
            "metrics measured with the exported ONNX model by "
            "`python -m ct_triage.models.train.measure --model DIR` (see its docstring and "
            "models/MODEL_CARD.md): lesion/ggo/consolidation_dice = mean per-slice Dice on the "
            "MedSeg validation split; phantom_* = percent of lung involved through "
            "analysis.segment + quantify on held-out phantom seeds 11-14 (60 slices) and 31-36; "
            "totalseg_* on real_hu_ct/totalseg_example_ct_sm.npz. Weights of the training step "
            f"{result.best_step} of {cfg.steps}"
            + (f" (starting from {cfg.init})" if cfg.init else "")
            + ", chosen on the MedSeg validation Dice and the "
            f"{cfg.poi_metric} percent-involvement error of selection phantoms "
            f"{', '.join(str(seed) for seed, _ in cfg.selection_phantoms)}; background-logit bias "
            f"{result.background_bias:g} baked into the exported softmax head (chosen on the "
            "same selection data)."
        ),
    )
    out.mkdir(parents=True, exist_ok=True)
    torch.save(result.net.state_dict(), out / "checkpoint.pt")
    bias = result.background_bias
    manifest = write_model_dir(
        result.net,
        spec,
        out,
        version=args.version,
        training=training,
        metrics={},
        background_bias=bias,
    )
    # Re-measure with the exported model itself (what ships is what is scored).
    if args.no_measure or not cfg.measure:
        from ct_triage.models.runtime.onnx import OnnxPredictor

        predictor = OnnxPredictor(out / manifest.file, provider="cpu", threads=cfg.threads)
        metrics = (
            evaluate_slices(predictor.predict, result.validation, spec) if result.validation else {}
        )
    else:
        from ct_triage.models.train.measure import measure_model

        metrics, details = measure_model(out, data_dir, threads=cfg.threads)
        (out / "measure.json").write_text(json.dumps(details, indent=1) + "\n")
    final = record_metrics(manifest, out, metrics)
    history = {"steps": result.history, "calibration": result.calibration}
    (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    print(json.dumps({"out": str(out), "sha256": final.sha256, "metrics": final.metrics}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
