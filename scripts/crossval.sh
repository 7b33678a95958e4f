#!/usr/bin/env bash
# 5-fold cross-validation of the semi-supervised lesion recipe on the 50 labelled MedSeg slices.
#
#   scripts/crossval.sh PRETRAIN_CHECKPOINT OUT_DIR [STEPS] [NEGATIVE.npz ...]
#   (EVAL_EVERY=N sets the checkpoint-scoring interval; default the config's)
#
# PRETRAIN_CHECKPOINT: checkpoint.pt of `python -m ct_triage.models.train --config semi-pretrain`
# (trained without any MedSeg slice, so no fold's held-out slices were ever seen). For each fold
# k the `semi` fine-tune trains on the other 40 slices (plus pseudo-labelled real slices, real
# negatives and phantoms), then its held-out 10 slices are scored twice: the network alone
# (OUT_DIR/fold-k/train.json, "metrics") and the whole analysis path
# (`ct-triage evaluate`, OUT_DIR/fold-k/evaluate.json). OUT_DIR/summary.json pools them.
set -euo pipefail
cd "$(dirname "$0")/.."
PRE=$1; OUT=$2; STEPS=${3:-1200}; shift 3 || shift $#
NEG=("$@")
DATA=${CT_TRIAGE_SHARED_DATA:-$(pwd)/../shared/data}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
for k in 0 1 2 3 4; do
  d="$OUT/fold-$k"
  if [ -f "$d/evaluate.json" ]; then continue; fi
  mkdir -p "$d/heldout"
  "$PY" -m ct_triage.models.train --config semi --init "$PRE" --fold "$k" --steps "$STEPS" \
    --out "$d/model" --cache "$OUT/cache" --version "cv-fold-$k" --no-measure --quiet \
    ${EVAL_EVERY:+--eval-every "$EVAL_EVERY"} \
    ${NEG:+--negatives "${NEG[@]}"} > "$d/train.json" 2> "$d/train.log"
  "$PY" - "$DATA" "$k" "$d/heldout" <<'PY'
import sys
from pathlib import Path
from ct_triage.models.train.data import medseg_split
_, held = medseg_split(Path(sys.argv[1]), int(sys.argv[2]))
for f in held:
    link = Path(sys.argv[3]) / f.name
    if not link.exists():
        link.symlink_to(f)
PY
  CT_TRIAGE_MODEL_DIR="$d/model" .venv/bin/ct-triage evaluate "$d/heldout" \
    --json "$d/evaluate.json" > "$d/evaluate.txt" 2> "$d/evaluate.log"
done
"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = []
for k in range(5):
    d = out / f"fold-{k}"
    net = json.loads((d / "train.json").read_text())["metrics"]
    whole = json.loads((d / "evaluate.json").read_text())["summary"]
    rows.append({"fold": k, "network_lesion_dice": net["lesion_dice"],
                 "network_ggo_dice": net["ggo_dice"],
                 "network_consolidation_dice": net["consolidation_dice"],
                 "whole_path_lesion_dice": whole.get("lesion_dice"),
                 "whole_path_ggo_dice": whole.get("ggo_dice"),
                 "whole_path_consolidation_dice": whole.get("consolidation_dice")})
mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0] if k != "fold"}
(out / "summary.json").write_text(json.dumps({"folds": rows, "mean": mean}, indent=1) + "\n")
for r in rows:
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
print("mean", " ".join(f"{k}={v:.3f}" for k, v in mean.items()))
PY
