#!/usr/bin/env bash
# Create .venv-samseg: FreeSurfer SAMSEG (PyPI samseg, a pre-release) with the CPU TensorFlow its lesion model
# needs, pinned by requirements/constraints.txt. It is a separate environment on purpose: TensorFlow installed
# next to the server is loaded by MONAI Label (through torch.utils.tensorboard), and Triton imported after it
# crashes the process. The samseg detector runs its child process with this interpreter (or $UAD_SAMSEG_PYTHON).
# Idempotent: re-runs only when requirements/samseg.txt or the constraints change.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv-samseg/bin/python ] || "$PY" -m venv .venv-samseg
STAMP=.venv-samseg/.uad-installed
WANT="$(cat requirements/samseg.txt requirements/constraints.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "[samseg_env] installing samseg and a CPU TensorFlow into .venv-samseg (about 1.9 GB)"
  .venv-samseg/bin/python -m pip install -q --upgrade pip
  .venv-samseg/bin/python -m pip install -q -c requirements/constraints.txt -r requirements/samseg.txt
  echo "$WANT" > "$STAMP"
fi
.venv-samseg/bin/python -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('samseg') else 1)"
