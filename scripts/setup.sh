#!/usr/bin/env bash
# Creates .venv and installs the project into it; safe to run again (it skips what is done).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
EXTRAS="${1:-models}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed-$EXTRAS-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch first and pinned: the CPU build of 2.13 is what this project is built and tested
    # on; any other request can pull a multi-GB CUDA build.
    .venv/bin/python -m pip install --quiet "torch==2.13.*"
    .venv/bin/python -m pip install --quiet -e ".[$EXTRAS]"
    touch "$stamp"
fi
