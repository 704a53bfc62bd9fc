#!/usr/bin/env bash
# Installs everything the tests need, runs the quality gates (ruff, mypy; configured in
# pyproject.toml), then the tests. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh "models,test"
echo "== ruff"
.venv/bin/ruff check serving tests bench fuzz model_store
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/python -m pytest -q "$@"
