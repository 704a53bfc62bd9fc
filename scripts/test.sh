#!/usr/bin/env bash
# Installs everything the tests need and runs them. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh "models,test"
exec .venv/bin/python -m pytest -q "$@"
