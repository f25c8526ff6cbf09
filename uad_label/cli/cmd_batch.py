from __future__ import annotations

from .params_arg import add_param_options, collect_params

HELP = """Run a detector over every case of a folder (case folders, a flat datastore such as
`uad sample-data` writes, or a folder of single scans taken as FLAIR) and write, per case, the float
map, the mask, result.json and report.png (the most anomalous slices with the map overlaid and the
per-slice score curve), then summary.csv, overview.png and index.html ranking cases by image score.
Resumable: finished cases are skipped (--force redoes them). A failing case does not stop the others;
its error goes to <case>/error.json and summary.csv, and the exit status is 1."""
EPILOG = """example:
  uad batch flair_threshold demo_datastore --preprocessed --out out/batch
  uad batch flair_threshold /data/clinic_scans --out out/clinic   # re-run to resume"""


def add_arguments(p):
    from ..detectors import available

    p.add_argument("detector", choices=available(), help="detector name")
    p.add_argument("input_dir", help="folder of cases (or a MONAI Label datastore folder)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--force", action="store_true", help="redo finished cases")
    p.add_argument("--limit", type=int, default=None, help="only the first N cases (by name)")
    add_param_options(p)


def run(args) -> int:
    from tqdm import tqdm

    from ..batch.runner import run_batch

    rows = run_batch(args.detector, args.input_dir, args.out, collect_params(args), force=args.force,
                     limit=args.limit, progress=lambda total: tqdm(total=total, desc=args.detector, unit="case"))
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
