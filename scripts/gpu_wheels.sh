#!/usr/bin/env bash
# Run here (where pip reaches the registry), before a device session: puts the pure-Python wheels the
# GPU machine's image lacks into .whl/ (git-ignored). Name .whl in the device call's `carry`;
# scripts/gpu_checks.sh unpacks them there. MONAI only: the kernel benchmark and parity test compare
# our stitching with monai.inferers.sliding_window_inference. SimpleITK (53 MB) would push the
# working tree past the device's 64 MiB limit, so no GPU stage needs it.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl monai==1.5.2
ls -l .whl
