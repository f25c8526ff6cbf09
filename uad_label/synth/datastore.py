"""The demo studies folder: synthetic subjects written in the MONAI Label datastore layout.

Layout (MONAI Label's LocalDatastore lists only the top folder's *.nii.gz):

    DIR/<case>_FLAIR.nii.gz, DIR/<case>_T1.nii.gz, DIR/<case>_T2.nii.gz
    DIR/ground_truth/<case>.nii.gz      uint8 lesion mask on the same grid (all zero if healthy)
    DIR/manifest.json                   one entry per case (see write_sample_data)
    DIR/.uad-sample-data                written last: the folder is complete

Every file is written under DIR/.tmp/ and moved into place with os.replace, so an interrupted
run never leaves a half-written file under a final name; the marker is removed first when a
run starts and written only at the very end.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .lesions import lesion_stats
from .subject import GEOMETRIES, MODALITIES, make_subject

MARKER = ".uad-sample-data"
IN_PROGRESS = ".uad-sample-data.in-progress"
MANIFEST = "manifest.json"
GT_DIR = "ground_truth"
TMP_DIR = ".tmp"
MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def case_files(case: str) -> dict[str, str]:
    """Relative image file names of a case, by modality."""
    return {m: f"{case}_{m}.nii.gz" for m in MODALITIES}


def write_image_atomic(image: sitk.Image, path: Path, compression_level: int = 1) -> None:
    """Write `image` to `path` through a temporary file in `<path's dataset>/.tmp` + os.replace."""
    path = Path(path)
    tmp_dir = path.parent / TMP_DIR if path.parent.name != GT_DIR else path.parent.parent / TMP_DIR
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{os.getpid()}-{path.name}"
    sitk.WriteImage(image, str(tmp), True, compression_level)
    os.replace(tmp, path)


def write_text_atomic(text: str, path: Path) -> None:
    path = Path(path)
    tmp = path.parent / TMP_DIR / f"{os.getpid()}-{path.name}"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(text)
    os.replace(tmp, path)


def prepare_out_dir(out_dir: Path, force: bool = False) -> Path:
    """Create `out_dir` or check that it may be (re)written: empty, or one of our datastores
    (complete or interrupted), or `force`. Removes the completion marker."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output path exists and is not a folder: {out_dir}")
    if out_dir.is_dir():
        ours = any((out_dir / n).exists() for n in (MARKER, IN_PROGRESS, MANIFEST))
        if any(out_dir.iterdir()) and not ours and not force:
            raise ValueError(f"output folder {out_dir} is not empty and is not a uad datastore "
                             "(use --force to write into it anyway)")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).unlink(missing_ok=True)
    (out_dir / IN_PROGRESS).write_text("written by uad sample-data; removed when the folder is complete\n")
    return out_dir


def finish_out_dir(out_dir: Path, manifest: dict) -> None:
    write_text_atomic(json.dumps(manifest, indent=2) + "\n", out_dir / MANIFEST)
    shutil.rmtree(out_dir / TMP_DIR, ignore_errors=True)
    (out_dir / IN_PROGRESS).unlink(missing_ok=True)
    write_text_atomic(json.dumps({"cases": len(manifest["cases"]), "kind": manifest["kind"]}) + "\n",
                      out_dir / MARKER)
    shutil.rmtree(out_dir / TMP_DIR, ignore_errors=True)


def list_lesion_masks(masks_dir) -> list[Path]:
    d = Path(masks_dir)
    if not d.is_dir():
        raise ValueError(f"lesion masks folder not found: {d}")
    masks = sorted(p for p in d.iterdir() if p.is_file() and p.name.lower().endswith(MASK_SUFFIXES))
    if not masks:
        raise ValueError(f"no lesion masks (*.nii.gz, *.nii, *.nrrd, *.mha) in {d}")
    return masks


def subject_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index)]).generate_state(1)[0] & 0x7FFFFFFF)


def plan_cases(n_healthy: int, n_lesion: int, seed: int) -> list[dict]:
    """Case ids, seeds and kinds: lesion and healthy cases alternate (lesion first) so the first
    cases of the demo show both kinds; the surplus of either kind comes last."""
    if n_healthy < 0 or n_lesion < 0 or n_healthy + n_lesion == 0:
        raise ValueError(f"need at least one case (n_healthy={n_healthy}, n_lesion={n_lesion})")
    kinds = []
    left_healthy, left_lesion = n_healthy, n_lesion
    while left_healthy or left_lesion:
        if left_lesion:
            kinds.append(False)
            left_lesion -= 1
        if left_healthy:
            kinds.append(True)
            left_healthy -= 1
    return [dict(id=f"sub-{i:03d}", healthy=k, seed=subject_seed(seed, i)) for i, k in enumerate(kinds)]


def write_sample_data(out_dir, n_healthy: int = 4, n_lesion: int = 4, seed: int = 0, lesion_masks_dir=None,
                      geometry: str = "native", progress: bool = True, *, downsample: int = 1,
                      deform_mm: float = 4.0, force: bool = False) -> dict:
    """Generate the synthetic datastore in `out_dir` and return its manifest.

    Deterministic: the same arguments give byte-identical image arrays. With `lesion_masks_dir`
    the lesion cases get real masks from that folder (MNI space, any grid; case k uses the k-th
    mask in sorted order, cycling) instead of synthetic lesions.
    """
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
    masks = list_lesion_masks(lesion_masks_dir) if lesion_masks_dir is not None else None
    plan = plan_cases(int(n_healthy), int(n_lesion), int(seed))
    out_dir = prepare_out_dir(Path(out_dir), force=force)
    (out_dir / GT_DIR).mkdir(exist_ok=True)
    cases = []
    it = plan
    if progress:
        from tqdm import tqdm
        it = tqdm(plan, desc="uad sample-data", unit="case")
    k_lesion = 0
    for case in it:
        if case["healthy"]:
            lesions = False
        elif masks is not None:
            lesions = masks[k_lesion % len(masks)]
            k_lesion += 1
        else:
            lesions = True
        subj = make_subject(case["seed"], lesions, geometry, downsample=downsample, deform_mm=deform_mm)
        files = case_files(case["id"])
        for m, name in files.items():
            write_image_atomic(subj.images[m], out_dir / name)
        gt_rel = f"{GT_DIR}/{case['id']}.nii.gz"
        write_image_atomic(subj.lesion_mask, out_dir / gt_rel)
        meta = subj.meta
        cases.append(dict(
            id=case["id"], healthy=subj.healthy, seed=case["seed"], n_lesions=meta["n_lesions"],
            lesion_volume_ml=meta["lesion_volume_ml"], lesion_source=meta["lesion_source"],
            files=files, ground_truth=gt_rel, geometry=geometry, orientation=meta["orientation"],
            spacing_mm=meta["spacing_mm"], size=meta["size"], rigid=meta.get("rigid"),
            max_displacement_mm=meta.get("max_displacement_mm", 0.0), contrast=meta["contrast"],
            noise_fraction=meta["noise_fraction"]))
    manifest = dict(
        kind="synthetic", generator="uad_label.synth", seed=int(seed), n_healthy=int(n_healthy),
        n_lesion=int(n_lesion), geometry=geometry, downsample=int(downsample), deform_mm=float(deform_mm),
        lesion_masks_dir=str(Path(lesion_masks_dir).resolve()) if lesion_masks_dir is not None else None,
        template="MNI152 2009 (nilearn package data)", modalities=list(MODALITIES),
        ground_truth_dir=GT_DIR, cases=cases)
    finish_out_dir(out_dir, manifest)
    return manifest


def read_manifest(out_dir) -> dict:
    p = Path(out_dir) / MANIFEST
    if not p.is_file():
        raise ValueError(f"no {MANIFEST} in {out_dir}")
    return json.loads(p.read_text(encoding="utf-8"))


def is_complete(out_dir) -> bool:
    return (Path(out_dir) / MARKER).is_file()


__all__ = ["write_sample_data", "read_manifest", "is_complete", "plan_cases", "case_files", "MARKER",
           "MANIFEST", "GT_DIR", "lesion_stats"]
