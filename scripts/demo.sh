#!/usr/bin/env bash
# Set up (first run only) and analyse the embedded sample study: no PACS, no GPU needed.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/ct-triage ] || bash scripts/setup-venv.sh
exec .venv/bin/ct-triage demo "$@"
