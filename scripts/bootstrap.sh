#!/usr/bin/env bash
# Create .venv at the repo root and install uad-label with every dependency pinned through
# requirements/constraints.txt. Idempotent: re-runs only when the requirement files change.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" - <<'PYEOF'
import sys
if sys.version_info[:2] != (3, 11):
    sys.exit(f"uad-label needs Python 3.11, found {sys.version.split()[0]}; set PYTHON=/path/to/python3.11")
PYEOF
[ -x .venv/bin/python ] || "$PY" -m venv .venv
STAMP=.venv/.uad-installed
WANT="$(cat requirements/*.txt setup.py | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "[bootstrap] installing dependencies into .venv (pinned by requirements/constraints.txt)"
  .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
  # The constraints file keeps torch on the CPU build: monailabel would otherwise pull a CUDA torch.
  .venv/bin/python -m pip install -q -c requirements/constraints.txt -r requirements/dev.txt
  # optional extra `ray` so the tests run `uad batch --engine ray` on a local cluster
  .venv/bin/python -m pip install -q -c requirements/constraints.txt -r requirements/ray.txt
  .venv/bin/python -m pip install -q -c requirements/constraints.txt --no-deps --no-build-isolation -e .
  echo "$WANT" > "$STAMP"
fi
.venv/bin/python -c "import torch, monai, monailabel; assert torch.__version__.startswith('2.13.0'), torch.__version__"
# SAMSEG (+ TensorFlow) in its own environment, so the tests run the samseg detector; UAD_NO_SAMSEG=1 skips it
[ -n "${UAD_NO_SAMSEG:-}" ] || bash scripts/samseg_env.sh
