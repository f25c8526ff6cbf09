from __future__ import annotations

from .params_arg import add_param_options, collect_params

HELP = """Calibrate a detector on this installation's approved labels: choose its default threshold (and, for
fusion, the members' weights or the logistic rule's coefficients) that maximises the pooled Dice with the
component filter, by cross-validation over cases; write a calibration card beside the weights
($UAD_WEIGHTS_DIR, else the package's weights folder, or --out). Requests that give no threshold then use the
calibrated one, and say so in threshold_source.
DATA is a MONAI Label datastore (final labels in labels/final) or a folder of cases with ground truth (GT);
a final label wins over a GT. At least 4 labelled cases are needed (--min-cases)."""
EPILOG = """example:
  uad sample-data demo --n-healthy 0 --n-lesion 8 --geometry template
  uad calibrate fusion --data demo --preprocessed
  uad calibrate flair_threshold --data demo --preprocessed --folds 4"""


def add_arguments(p):
    from ..detectors import available

    p.add_argument("detector", choices=available(), help="detector name")
    p.add_argument("--data", required=True, help="datastore (labels/final) or folder of cases with GT")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds over cases (default 5)")
    p.add_argument("--min-cases", type=int, default=None, help="labelled cases needed (default 4)")
    p.add_argument("--thresholds", type=int, default=100, help="candidate thresholds per map (default 100)")
    p.add_argument("--out", default=None, help="folder of the card (default: the first weights folder)")
    p.add_argument("--dry-run", action="store_true", help="print the result, write no card")
    add_param_options(p)


def run(args) -> int:
    from ..evaluation.calibrate import MIN_CASES, calibrate, format_card

    if args.thresholds < 2:
        raise ValueError(f"--thresholds: expected at least 2, received {args.thresholds}")
    card = calibrate(args.detector, args.data, collect_params(args), folds=args.folds,
                     min_cases=args.min_cases or MIN_CASES, out_dir=args.out, n_thresholds=args.thresholds,
                     write=not args.dry_run)
    print(format_card(card))
    if "path" in card:
        print(f"wrote {card['path']}")
    return 0
