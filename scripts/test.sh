#!/usr/bin/env bash
# Set up everything the tests need and run the whole suite (lint, types, tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
bash scripts/install-ohif.sh  # OHIF 3.13 for tests/browser (npm, cached)
bash scripts/setup-venv.sh --dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/pytest "$@"
