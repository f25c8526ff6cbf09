#!/usr/bin/env bash
# Set everything up (.venv, pinned dependencies) and run the test suite. .ci/run calls this.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
export TRITON_INTERPRET=1  # no GPU here or on CI: Triton kernels run in the CPU interpreter
exec .venv/bin/python -m pytest -ra "$@"
