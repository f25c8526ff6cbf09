#!/usr/bin/env bash
# GPU checks and benchmarks for the H200 device machine, one stage per call (each fits the
# device's 10-minute command limit). That machine has its own image (Python 3.12, torch, triton,
# cupy, numpy 2; no MONAI, SimpleITK, nibabel or monailabel, no package registry), so nothing is
# installed from a registry: a temporary path entry makes kernels/ importable as uad_kernels, every
# stage imports only torch-level modules (networks.*, uad_kernels), and pytest runs without this
# repo's addopts. Wheels in .whl/ (scripts/gpu_wheels.sh puts MONAI there, for the stitching
# comparison with monai.inferers.sliding_window_inference) are unpacked to a temporary folder.
#
#   bash scripts/gpu_checks.sh STAGE [OUT]
#   stages: kernels-tests  kernels-bench  inpainting  ppr  patchddm  detector-tests
#   OUT: results folder (default $OUT, else gpu_results/); copy what it holds into benchmarks/.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:?"stage: expected one of kernels-tests kernels-bench inpainting ppr patchddm detector-tests"}
out=${2:-${OUT:-gpu_results}}
mkdir -p "$out"
shim=$(mktemp -d)
trap 'rm -rf "$shim"' EXIT
ln -s "$PWD/kernels" "$shim/uad_kernels"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$shim" .whl/*.whl
fi
export PYTHONPATH="$shim:$PWD${PYTHONPATH:+:$PYTHONPATH}"
pytest_gpu() { python -m pytest "$@" -m gpu -ra -o addopts= -p no:cacheprovider; }

case "$stage" in
  kernels-tests)  pytest_gpu tests/kernels 2>&1 | tee "$out/kernels_tests.txt" ;;
  kernels-bench)  python benchmarks/kernels/bench_kernels.py --device cuda --out "$out/kernels" 2>&1 | tee "$out/kernels_bench.txt" ;;
  inpainting)     python benchmarks/inpainting/bench_speed.py --device cuda --volume --out "$out/inpainting" ;;
  ppr)            python benchmarks/ppr/bench_ppr.py --device cuda --size 256 --width 16 --patch-sample 200000 \
                      --out "$out/ppr" ;;
  patchddm)       python benchmarks/patchddm/bench_step.py --size 256 --device cuda --tile 128 \
                      --out "$out/patchddm/h200_256.json" ;;
  detector-tests) pytest_gpu tests/test_inpainting_maps.py tests/test_patchddm_network.py 2>&1 \
                      | tee "$out/detector_tests.txt" ;;
  *) echo "stage: expected one of kernels-tests kernels-bench inpainting ppr patchddm detector-tests, received '$stage'" >&2
     exit 2 ;;
esac
