"""`uad bench SUITE`: run a benchmark suite, print a table and write DIR/bench.json.

Suites are registered in SUITES (name -> (one-line help, runner)); a runner takes
(device, quick, out) and returns the result dict. Benchmarks live beside the package in the source
checkout (benchmarks/), not in it: the kernel suite is benchmarks/kernels/bench_kernels.py, which also
runs on its own (`python benchmarks/kernels/bench_kernels.py`).
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

HELP = "Run benchmarks: print a table and write bench.json (and results.md) to --out."
EPILOG = """examples:
  uad bench kernels --quick --device cpu --out benchmarks/kernels/cpu
  uad bench kernels --device cuda --out benchmarks/kernels/h200
"""


BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(relative: str):
    """The benchmark module at benchmarks/RELATIVE of the source checkout (not part of an installed package)."""
    import importlib.util

    path = BENCHMARKS / relative
    if not path.is_file():
        raise FileNotFoundError(f"benchmark {relative}: not found under {BENCHMARKS}; benchmarks ship with the "
                                "source checkout (git clone), not with an installed package")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _kernels(device: str, quick: bool, out: Path | None) -> dict:
    return load_benchmark("kernels/bench_kernels.py").run(device=device, quick=quick, out=out)


# suite name -> (help, runner(device, quick, out) -> result dict); add preprocessing/evaluation suites here
SUITES: dict[str, tuple[str, Callable[[str, bool, Path | None], dict]]] = {
    "kernels": ("GPU kernel library (gather, inpainting, error map, stitching) vs references and baselines", _kernels),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", choices=sorted(SUITES),
                        help="benchmark suite: " + "; ".join(f"{k}: {v[0]}" for k, v in SUITES.items()))
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds instead of minutes")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="device to benchmark (default: cuda when torch sees a GPU, else cpu)")
    parser.add_argument("--out", type=Path, default=None, help="directory for bench.json and results.md")


def run(args: argparse.Namespace) -> int:
    from ..device import resolve_device

    device = resolve_device(args.device or "auto")
    if args.suite not in SUITES:
        raise ValueError(f"suite must be one of {sorted(SUITES)}, got {args.suite!r}")
    SUITES[args.suite][1](device, args.quick, args.out)
    return 0
