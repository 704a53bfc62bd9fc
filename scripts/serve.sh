#!/usr/bin/env bash
# Installs everything, builds the default model store if needed, and serves it.
# Extra arguments go to `serving start` (e.g. --enable-model-api).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh models
.venv/bin/python -m model_store.build --out model_store/build
exec .venv/bin/python -m serving start --model-store model_store/build --models all "$@"
