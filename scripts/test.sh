#!/usr/bin/env bash
# Create a fresh virtual environment, install restorecli with the test extras (CPU torch pinned;
# triton for the interpreter tests of the Triton kernels) and run the test suite.
# Usage: scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
ENV_DIR="${RESTORECLI_TEST_ENV:-.venv}"
python3 -m venv "$ENV_DIR"
# shellcheck disable=SC1091
. "$ENV_DIR/bin/activate"
# The constraint also binds pip's isolated build environments (a bare torch would pull CUDA).
export PIP_CONSTRAINT="$PWD/constraints.txt"
python -m pip install --quiet --disable-pip-version-check torch==2.13.0
python -m pip install --quiet --disable-pip-version-check -e ".[dev,test-triton]"
exec python -m pytest -q "$@"
