from __future__ import annotations

import json
import sys
from pathlib import Path

from .params_arg import add_param_options, collect_params

HELP = """Run a detector on one case locally (no server) and write the float anomaly map, the mask at
the threshold used and result.json (threshold, findings, per-slice scores, latencies) to --out.
CASE is a case folder (FLAIR/T1/T2 files by name) or an image file: `x_FLAIR.nii.gz` brings its siblings
`x_T1.*` and `x_T2.*` (the server's rule), a file whose name names no modality is taken as FLAIR."""
EPILOG = """example:
  uad detect flair_threshold ../shared/data/mslub/patient26 --preprocessed --out out/p26
  uad detect flair_threshold scan_FLAIR.nii.gz -p threshold=0.98 --out out/scan"""


def add_arguments(p):
    from ..detectors import available

    p.add_argument("detector", choices=available(), help="detector name")
    p.add_argument("case", help="case folder or image file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--brain-mask", default=None,
                   help="brain mask file in the FLAIR's grid (else propagated from the template)")
    add_param_options(p)


def run(args) -> int:
    from ..cases import case_of
    from ..detectors import get_detector
    from ..io import load_image

    case = Path(args.case)
    if not case.exists():
        raise FileNotFoundError(f"CASE: {case} does not exist")
    images = case_of(case).images
    det = get_detector(args.detector)
    mask = load_image(args.brain_mask) if args.brain_mask else None
    from tqdm import tqdm

    with tqdm(total=100, desc=args.detector, unit="%", bar_format="{l_bar}{bar}| {postfix}") as bar:
        def progress(fraction, message):
            bar.n = int(100 * fraction)
            bar.set_postfix_str(message)
            bar.refresh()
        result = det.detect(images, collect_params(args), progress=progress, brain_mask=mask)
    paths = result.save(args.out)
    info = result.info
    print(f"threshold {info['threshold']:.4g} ({info['threshold_source']}); "
          f"{len(info['components'])} finding(s), {info['anomalous_volume_ml']:.2f} mL; "
          f"image score {info['image_score']:.4g}")
    for row in info["components"][:10]:
        print(f"  #{row['id']:<3} {row['volume_ml']:8.3f} mL  max {row['max_score']:.3f}  at RAS {row['centroid_ras']}")
    print(json.dumps({k: str(v) for k, v in paths.items()}), file=sys.stderr)
    return 0
