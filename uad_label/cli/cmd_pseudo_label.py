from __future__ import annotations

from .params_arg import add_param_options, collect_params

HELP = """Run a detector over the unlabelled cases of a datastore or folder (those without an approved `final`
label) and store each case's mask as a label with the detector's own tag (labels/<tag>/, default: the detector's
name) and its float map under labels/<tag>_map/, with provenance (detector, version, parameters, threshold,
date) in the label's info. The detector's outputs go to --out like `uad batch` writes them: resumable (re-run the
same command; finished cases are skipped), a failing case is recorded and the rest go on, --engine ray runs the
cases on Ray actors. Approved final labels always win: a case with one is skipped and never overwritten.
Train the fast segmenter on the result with `uad train segresnet --data DATA --set pseudo_tags=TAG`."""
EPILOG = """example:
  uad pseudo-label samseg /data/datastore --out out/pseudo_samseg      # re-run to resume
  uad pseudo-label flair_threshold demo_datastore --preprocessed --out out/pseudo_flair --tag flair
  uad pseudo-label samseg archive_folder --out out/pl --engine ray --workers 2"""


def add_arguments(p):
    from ..detectors import available

    p.add_argument("detector", choices=available(), help="detector whose masks become pseudo-labels")
    p.add_argument("data", help="MONAI Label datastore or folder of cases (pseudo-labels are stored in it)")
    p.add_argument("--out", required=True, help="folder for the detector's outputs (resumable)")
    p.add_argument("--tag", default=None, help="label tag (default: the detector's name; never final/original)")
    p.add_argument("--force", action="store_true", help="redo finished cases")
    p.add_argument("--limit", type=int, default=None, help="only the first N unlabelled cases (by name)")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="local (default) or ray")
    p.add_argument("--address", default=None, help="ray: address of a running cluster (default: a local one)")
    p.add_argument("--workers", type=int, default=2, help="ray: number of actors (default 2)")
    add_param_options(p)


def run(args) -> int:
    from tqdm import tqdm

    from ..batch.pseudo_label import pseudo_label

    bar = lambda total: tqdm(total=total, desc=f"pseudo-label {args.detector}", unit="case")  # noqa: E731
    try:
        s = pseudo_label(args.detector, args.data, args.out, collect_params(args), tag=args.tag, engine=args.engine,
                         force=args.force, limit=args.limit, address=args.address, workers=args.workers,
                         progress=bar)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished cases are kept in {args.out}; run the same command again to resume")
        return 130
    print(f"{len(s['labelled'])} pseudo-label(s) '{s['tag']}' stored in {args.data}/labels/{s['tag']}; "
          f"{len(s['skipped_final'])} case(s) with a final label skipped; {len(s['failed'])} failed")
    for f in s["failed"]:
        print(f"  FAILED {f['case']}: {f['error']}")
    for c in s["final_meanwhile"]:
        print(f"  {c}: a final label was saved during the run; it wins, no pseudo-label stored")
    return 1 if s["failed"] else 0
