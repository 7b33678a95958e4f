#!/usr/bin/env bash
# Create ./.venv and install chest-ct-triage into it (editable).
#   scripts/setup-venv.sh          runtime only (CPU, no torch): enough for `ct-triage demo`
#   scripts/setup-venv.sh --dev    + training (torch CPU), test and lint tools
# Runtime dependencies at the versions the container images ship (requirements/constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ "${1:-}" = "--dev" ]; then
  .venv/bin/python -m pip install -q -c requirements/constraints.txt -r requirements-dev.txt
  # the real tritonserver for the Triton tests (see the file for why --no-deps)
  .venv/bin/python -m pip install -q --no-deps -r requirements-triton-server.txt
else
  .venv/bin/python -m pip install -q -c requirements/constraints.txt \
    -e ./kernels -e ./models -e ./dicom_bridge -e ./server
fi
