from __future__ import annotations

from .params_arg import add_param_options, collect_params

HELP = """Run a detector over every case of a folder (case folders, a flat datastore such as
`uad sample-data` writes, or a folder of single scans taken as FLAIR) or of a manifest (CSV or Parquet,
one case per row: id, FLAIR, T1, T2 ...) and write, per case, the float
map, the mask, result.json and report.png (the most anomalous slices with the map overlaid and the
per-slice score curve), then summary.csv, overview.png and index.html ranking cases by image score.
Resumable: finished cases are skipped (--force redoes them). A failing case does not stop the others;
its error goes to <case>/error.json and summary.csv, and the exit status is 1.
--engine ray runs the cases on Ray actors (a local cluster, or --address of a running one), each loading
the detector once; the outputs are the same files."""
EPILOG = """example:
  uad batch flair_threshold demo_datastore --preprocessed --out out/batch
  uad batch flair_threshold /data/clinic_scans --out out/clinic   # re-run to resume
  uad batch flair_threshold archive.csv --preprocessed --out out/archive --engine ray --workers 2"""


def add_arguments(p):
    from ..detectors import available

    p.add_argument("detector", choices=available(), help="detector name")
    p.add_argument("input_dir", help="folder of cases, a MONAI Label datastore folder, or a manifest (.csv/.parquet)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--force", action="store_true", help="redo finished cases")
    p.add_argument("--limit", type=int, default=None, help="only the first N cases (by name)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: one process (default); ray: Ray actors (pip install 'uad-label[ray]')")
    p.add_argument("--address", default=None, help="ray: address of a running cluster (default: start a local one)")
    p.add_argument("--workers", type=int, default=None, help="ray: number of actors (default 2)")
    p.add_argument("--gpus-per-worker", type=float, default=None,
                   help="ray: GPUs per actor (default 1 when the cluster has GPUs, else 0)")
    add_param_options(p)


def run(args) -> int:
    try:
        return _run(args)
    except KeyboardInterrupt:  # both engines leave only complete cases; a re-run resumes
        print(f"\ninterrupted: finished cases are kept in {args.out}; run the same command again to resume")
        return 130


def _run(args) -> int:
    from tqdm import tqdm

    from ..errors import InputError

    bar = lambda total: tqdm(total=total, desc=args.detector, unit="case")  # noqa: E731
    ray_only = {"--address": args.address, "--workers": args.workers, "--gpus-per-worker": args.gpus_per_worker}
    if args.engine == "local":
        given = [k for k, v in ray_only.items() if v is not None]
        if given:
            raise InputError(f"engine: {', '.join(given)} need --engine ray")
        from ..batch.runner import run_batch

        rows = run_batch(args.detector, args.input_dir, args.out, collect_params(args), force=args.force,
                         limit=args.limit, progress=bar)
    else:
        from ..batch.ray_engine import run_batch_ray

        rows = run_batch_ray(args.detector, args.input_dir, args.out, collect_params(args), force=args.force,
                             limit=args.limit, address=args.address, workers=args.workers or 2,
                             gpus_per_worker=args.gpus_per_worker, progress=bar)
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] != "ok"]
    skipped = sum(int(r["skipped"]) for r in ok)
    print(f"{len(ok)} case(s) done ({skipped} already finished), {len(failed)} failed; "
          f"summary {args.out}/summary.csv, overview {args.out}/index.html")
    for r in ok[:10]:
        print(f"  {r['case']:<24} score {float(r['image_score']):.4g}  {r['n_findings']} finding(s)")
    for r in failed:
        print(f"  FAILED {r['case']}: {r['error']}")
    return 1 if failed else 0
