"""`uad sample-data DIR`: build the deterministic demo datastore, or import a folder of scans."""
from __future__ import annotations

import argparse
import time

HELP = """Build the deterministic demo studies folder DIR from the MNI152 template shipped with nilearn
(no download): healthy synthetic subjects and subjects with MS-like white-matter lesions, FLAIR/T1/T2
each, ground truth in DIR/ground_truth/, a manifest.json, and the marker DIR/.uad-sample-data written
last. With --import SRC, convert a folder of your own scans (NIfTI, NRRD, MHA or DICOM series; per-case
folders or <case>_<MOD> files) into the same layout instead."""

EPILOG = """examples:
  uad sample-data demo_datastore                       # 4 healthy + 4 lesion subjects, scanner-like geometry
  uad sample-data bench --n-healthy 0 --n-lesion 27 --geometry template \\
      --lesion-masks ../shared/data/mslub/lesion_masks_mni   # real lesion masks pasted into synthetic brains
  uad sample-data my_studies --import /data/my_scans   # import your own scans
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR",
                        help="output studies folder (created; an existing uad datastore is rewritten)")
    parser.add_argument("--n-healthy", type=int, default=4, help="healthy subjects (default 4)")
    parser.add_argument("--n-lesion", type=int, default=4, help="subjects with lesions (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed = identical data (default 0)")
    parser.add_argument("--geometry", choices=["native", "template"], default="native",
                        help="native: scanner-like (rigid motion, LPS/LAS/RAS voxel order, 1x1x1.2 mm); "
                             "template: the MNI template grid (default native)")
    parser.add_argument("--lesion-masks", metavar="MASKS_DIR", default=None,
                        help="paste real binary lesion masks (MNI space, any grid) from this folder instead of "
                             "synthetic lesions; lesion case k uses the k-th mask (sorted), cycling")
    parser.add_argument("--downsample", type=int, default=1,
                        help="coarser voxels by this factor (quick tests; default 1)")
    parser.add_argument("--deform-mm", type=float, default=4.0,
                        help="largest displacement of the random smooth deformation in mm (0 = none; default 4)")
    parser.add_argument("--import", dest="import_dir", metavar="SRC", default=None,
                        help="import the scans in SRC into DIR instead of generating synthetic data")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty folder that is not a uad datastore")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from uad_label.synth import import_scans, write_sample_data

    t0 = time.perf_counter()
    if args.import_dir:
        manifest = import_scans(args.import_dir, args.dir, force=args.force, progress=not args.no_progress)
        n_gt = sum(1 for c in manifest["cases"] if c.get("ground_truth"))
        print(f"imported {len(manifest['cases'])} case(s) ({n_gt} with ground truth) into {args.dir} "
              f"in {time.perf_counter() - t0:.1f} s")
        return 0
    manifest = write_sample_data(args.dir, n_healthy=args.n_healthy, n_lesion=args.n_lesion, seed=args.seed,
                                 lesion_masks_dir=args.lesion_masks, geometry=args.geometry,
                                 progress=not args.no_progress, downsample=args.downsample,
                                 deform_mm=args.deform_mm, force=args.force)
    n_les = sum(1 for c in manifest["cases"] if not c["healthy"])
    print(f"wrote {len(manifest['cases'])} case(s) ({n_les} with lesions) to {args.dir} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0
