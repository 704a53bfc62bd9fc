#!/usr/bin/env bash
# Installs everything, builds the default model store if needed, and serves it.
# Extra arguments go to `serving start` (e.g. --enable-model-api).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh models
# The first build on a machine runs `auto` for resnet50 and minilm and precompiles the winner
# (minutes, progress on the console); later builds reuse model_store/build/.cache.
.venv/bin/python -m model_store.build --out model_store/build
# Token authorization (on by default, as in TorchServe 0.12) is turned off here on purpose:
# this demo serves on loopback only (127.0.0.1:8080/8081), so the curl examples work without
# a key. Anything that listens beyond loopback should keep it on (drop --disable-token-auth
# and send `Authorization: Bearer <key>` from key_file.json); see docs/security-auth.md.
exec .venv/bin/python -m serving start --model-store model_store/build --models all \
    --disable-token-auth "$@"
