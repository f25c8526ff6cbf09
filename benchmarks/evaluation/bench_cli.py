"""`uad evaluate` as a user runs it: N cases from the command line, total and per case, first and steady.

    .venv/bin/python benchmarks/evaluation/bench_cli.py [--cases 6] [--repeats 3] [--compare DIR] [--profile]

Each run is a fresh `uad evaluate flair_threshold CASES --preprocessed --out OUT` process on N copies of one
case (symbolic links to --case, MSLUB patient 26 by default, in a temporary folder). For each run: wall time,
CPU seconds of the process (user + system, from os.wait4), load average before it; from its metrics.json:
the per-case seconds (first case, steady = median of the others), the pooled metrics + PR curve + outputs
after the loop, and the start-up before `evaluate()` (interpreter, imports, argument parsing) and the exit as the
rest; wall and CPU for each where the tree's metrics.json has CPU seconds (`cpu_seconds`).

--compare DIR times a second source tree in the same run, interleaved repeat by repeat (order alternating):
DIR holds `uad_label/` and `kernels/` (or `uad_kernels/`), e.g. a copy of the tree before a change; it runs
with PYTHONPATH pointing at it. Both must give identical metrics (checked). --profile adds a cProfile (CPU
clock) of one run of the working tree, its top entries written to profile_cli.txt.

Writes results_cli.json and results_cli.md next to this file and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))
from common import environment  # noqa: E402

METRIC_KEYS = ("dsc_upper", "auprc", "auroc", "best_threshold", "dice_default_mean")


def make_cases(src: Path, n: int, folder: Path) -> Path:
    cases = folder / f"cases{n}"
    cases.mkdir(parents=True)
    for i in range(n):
        (cases / f"{src.name}_{i + 1}").symlink_to(src.resolve(), target_is_directory=True)
    return cases


def source_env(tree: Path | None, scratch: Path) -> dict:
    """Environment running `uad` from `tree` (None: the installed working tree)."""
    env = dict(os.environ)
    if tree is None:
        return env
    kernels = tree / "uad_kernels" if (tree / "uad_kernels").is_dir() else tree / "kernels"
    shim = scratch / "compare_path"
    if not shim.exists():
        shim.mkdir()
        (shim / "uad_label").symlink_to((tree / "uad_label").resolve(), target_is_directory=True)
        (shim / "uad_kernels").symlink_to(kernels.resolve(), target_is_directory=True)
    env["PYTHONPATH"] = str(shim) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_once(cases: Path, out: Path, env: dict, detector: str, profile: Path | None = None) -> dict:
    uad = [sys.executable, "-c", "import sys; from uad_label.cli.main import main; sys.exit(main())"]
    if profile is not None:
        uad = [sys.executable, str(HERE / "bench_cli.py"), "--_profiled", str(profile), "--"]
    cmd = [*uad, "evaluate", detector, str(cases), "--preprocessed", "--out", str(out)]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=out.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stdout, stderr = proc.stdout.read().decode("utf-8", "replace"), proc.stderr.read().decode("utf-8", "replace")
    proc.stdout.close()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stdout}\n{stderr}")
    m = json.loads((out / "metrics.json").read_text())
    per_case = [r["seconds"] for r in m["per_case"]]
    cpu_case = [r["cpu_seconds"] for r in m["per_case"] if "cpu_seconds" in r]
    loop = sum(per_case)
    n = len(per_case)
    row = {"load_average_1min": round(load, 2), "cases": n, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
           "wall_per_case_s": wall / n, "cpu_per_case_s": (usage.ru_utime + usage.ru_stime) / n,
           "first_case_s": per_case[0], "steady_case_s": statistics.median(per_case[1:]) if n > 1 else per_case[0],
           "after_loop_s": m["seconds"] - loop, "startup_s": wall - m["seconds"],
           "metrics": {k: m[k] for k in METRIC_KEYS}, "dice_default": [r["dice_default"] for r in m["per_case"]]}
    if cpu_case:
        row["first_case_cpu_s"] = cpu_case[0]
        row["steady_case_cpu_s"] = statistics.median(cpu_case[1:]) if n > 1 else cpu_case[0]
    if cpu_case and "cpu_seconds" in m:
        row["after_loop_cpu_s"] = m["cpu_seconds"] - sum(cpu_case)
        row["startup_cpu_s"] = row["cpu_s"] - m["cpu_seconds"]
    return row


def profiled_main(out: str, argv: list[str]) -> int:
    """Child of --profile: the CLI under cProfile with the CPU clock, top entries to `out`."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile(time.process_time)
    prof.enable()
    from uad_label.cli.main import main

    code = main(argv)
    prof.disable()
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    stats.sort_stats("cumulative").print_stats(r"uad_label|uad_kernels|kernels/|numba|matplotlib/pyplot", 45)
    stats.sort_stats("tottime").print_stats(25)
    Path(out).write_text(text.getvalue().replace(str(ROOT) + "/", ""))
    return code


def summary(rows: list[dict]) -> dict:
    keys = ("wall_s", "cpu_s", "wall_per_case_s", "cpu_per_case_s", "first_case_s", "steady_case_s",
            "first_case_cpu_s", "steady_case_cpu_s", "after_loop_s", "after_loop_cpu_s", "startup_s",
            "startup_cpu_s", "load_average_1min")
    return {k: statistics.median(r[k] for r in rows) for k in keys if all(k in r for r in rows)}


def table(results: dict) -> list[str]:
    names = list(results)
    lines = ["| median over repeats | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    labels = [("wall_s", "wall of the command (s)"), ("wall_per_case_s", "**wall / N (s per volume)**"),
              ("cpu_s", "CPU of the command (s)"), ("cpu_per_case_s", "CPU / N (s per volume)"),
              ("startup_s", "start-up and exit: interpreter, imports, parsing (s)"),
              ("startup_cpu_s", "start-up and exit, CPU (s)"),
              ("first_case_s", "first case (s)"), ("first_case_cpu_s", "first case, CPU (s)"),
              ("steady_case_s", "steady case: median of the others (s)"),
              ("steady_case_cpu_s", "steady case, CPU (s)"),
              ("after_loop_s", "after the loop: pooled metrics, PR curve, outputs (s)"),
              ("after_loop_cpu_s", "after the loop, CPU (s)"),
              ("load_average_1min", "load average before the runs")]
    for key, label in labels:
        vals = [results[n]["median"].get(key) for n in names]
        if all(v is None for v in vals):
            continue
        lines.append(f"| {label} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in vals) + " |")
    return lines


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--_profiled":
        return profiled_main(sys.argv[2], sys.argv[4:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default=str(ROOT.parent / "shared" / "data" / "mslub" / "patient26"))
    ap.add_argument("--cases", type=int, default=6, help="N: copies of the case in the evaluated folder")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--detector", default="flair_threshold")
    ap.add_argument("--compare", default=None, help="a second source tree (uad_label/, kernels/) to time beside")
    ap.add_argument("--profile", action="store_true", help="also write a CPU cProfile of one run (profile_cli.txt)")
    ap.add_argument("--tag", default="", help="suffix of the results files (results_cli<TAG>.json/.md)")
    args = ap.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="uad-bench-cli-"))
    cases = make_cases(Path(args.case), args.cases, scratch)
    variants = {"this tree": None}
    if args.compare:
        variants = {"compared tree": Path(args.compare), **variants}
    envs = {name: source_env(tree, scratch) for name, tree in variants.items()}
    for name in variants:  # warm-up: numba's on-disk cache, the page cache
        run_once(cases, scratch / "warm", envs[name], args.detector)
    results = {name: {"runs": []} for name in variants}
    order = list(variants)
    for rep in range(args.repeats):
        for name in (order if rep % 2 == 0 else order[::-1]):
            row = run_once(cases, scratch / f"out_{rep}_{len(results[name]['runs'])}", envs[name], args.detector)
            results[name]["runs"].append(row)
            print(f"repeat {rep + 1} {name}: wall {row['wall_s']:.2f} s, CPU {row['cpu_s']:.2f} s, "
                  f"{row['wall_per_case_s']:.2f} s per volume (load {row['load_average_1min']:.2f})", flush=True)
    for name in variants:
        results[name]["median"] = summary(results[name]["runs"])
    first = [r["metrics"] | {"dice_default": r["dice_default"]} for v in results.values() for r in v["runs"]]
    identical = all(f == first[0] for f in first)
    if args.profile:
        run_once(cases, scratch / "profiled", envs["this tree"], args.detector, profile=HERE / "profile_cli.txt")
    env = environment()
    out = {"benchmark": f"uad evaluate {args.detector} --preprocessed on {args.cases} copies of {Path(args.case).name}",
           "environment": env, "cases": args.cases, "repeats": args.repeats, "compare": args.compare,
           "metrics_identical": identical, "metrics": first[0], "results": results}
    (HERE / f"results_cli{args.tag}.json").write_text(json.dumps(out, indent=2))
    m = first[0]
    md = [f"# `uad evaluate` from the command line ({env['date']})", "",
          f"`{out['benchmark']}`, {args.repeats} repeat(s), fresh process each, interleaved. Machine: {env['cpus']} "
          f"CPUs ({env['processor']}), load average {env['load_average_1min']:.1f} at the end; Python {env['python']}, "
          f"numpy {env['numpy']}, numba {env.get('numba')}, SimpleITK {env.get('SimpleITK')}, torch {env['torch']}.",
          *([f"Compared tree: `{args.compare}` (PYTHONPATH); this tree: `{ROOT}`."] if args.compare else []),
          "", *table(results), "",
          f"Metrics ({'identical in every run' if identical else 'NOT identical across runs'}): upper-bound Dice "
          f"{m['dsc_upper']:.4f}, AUPRC {m['auprc']:.4f}, AUROC {m['auroc']:.4f}, Dice at the default threshold "
          f"{m['dice_default'][0]:.4f}.", ""]
    (HERE / f"results_cli{args.tag}.md").write_text("\n".join(md))
    print("\n".join(md))
    import shutil

    shutil.rmtree(scratch, ignore_errors=True)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
