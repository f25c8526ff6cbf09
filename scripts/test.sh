#!/usr/bin/env bash
# Set everything up (.venv, pinned dependencies) and run the test suite. .ci/run calls this.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
# The DICOMweb tests run a real Orthanc (Debian packages); without it they skip, visibly.
if ! command -v Orthanc >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[test] installing orthanc and orthanc-dicomweb for the DICOMweb tests"
  if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb) \
      >/tmp/uad-apt.log 2>&1; then
    echo "[test] could not install orthanc (see /tmp/uad-apt.log); the DICOMweb tests will be skipped"
  fi
fi
echo "[test] ruff check (pyproject.toml)"
.venv/bin/ruff check .
export TRITON_INTERPRET=1  # no GPU here or on CI: Triton kernels run in the CPU interpreter
exec .venv/bin/python -m pytest -ra "$@"
