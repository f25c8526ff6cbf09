from __future__ import annotations

from .params_arg import add_param_options, collect_params

HELP = """Evaluate a detector on a folder of cases with ground truth, by the published protocol of
Meissen et al.: metrics pooled over all cases; upper-bound Dice over 100 thresholds evenly spaced
between the maps' minimum and maximum (components of <= 20 mm^3 removed after thresholding);
AUPRC and AUROC over voxels; per-case Dice at the detector's default threshold. Prints a table;
with --out writes metrics.json and pr_curve.png.
DATA_DIR holds one folder per case (FLAIR, T1, T2 files and a GT file, any supported extension),
or is a datastore written by `uad sample-data` (<case>_FLAIR.nii.gz ... and ground_truth/)."""
EPILOG = """example:
  mkdir -p cases && ln -s $PWD/../shared/data/mslub/patient26 cases/
  uad evaluate flair_threshold cases --preprocessed --out out/eval
  uad evaluate samseg cases --results out/batch_samseg --out out/eval_samseg   # maps of an earlier batch run"""


def add_arguments(p):
    from ..detectors import available

    p.add_argument("detector", choices=available(), help="detector name")
    p.add_argument("data_dir", help="folder of cases with ground truth")
    p.add_argument("--out", default=None, help="output folder for metrics.json and pr_curve.png")
    p.add_argument("--thresholds", type=int, default=100, help="number of thresholds (default 100, as published)")
    p.add_argument("--save-maps", action="store_true", help="also write each case's map, mask and JSON under OUT/cases")
    p.add_argument("--results", default=None, metavar="DIR",
                   help="score the results a `uad batch` / `uad pseudo-label` run of this detector wrote to DIR "
                        "instead of running it (give the parameters of that run: the filter must match)")
    add_param_options(p)


def run(args) -> int:
    from ..evaluation.evaluate import evaluate, format_table

    if args.thresholds < 2:
        raise ValueError(f"--thresholds: expected at least 2, received {args.thresholds}")
    metrics = evaluate(args.detector, args.data_dir, args.out, collect_params(args), args.thresholds,
                       save_maps=args.save_maps, results_dir=args.results)
    print(format_table(metrics))
    if args.out:
        print(f"wrote {args.out}/metrics.json and {args.out}/pr_curve.png")
    return 0
