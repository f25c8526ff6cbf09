"""Healthy training data. There is no real healthy cohort offline, so training draws on:

- a datastore written by `uad sample-data` (manifest.json marks each case healthy or not);
- a MONAI Label datastore whose image info says {"healthy": true} (set with PUT /datastore/info),
  or that lists healthy case ids in `healthy.txt` (one per line);
- any other folder of scans, all taken as healthy (e.g. IXI: a folder of NIfTI files, or one
  folder per subject);
- lesion-free slices of scans with a lesion mask (`lesion_free_slices`), e.g. the real MS scans.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..cases import find_cases, split_name
from ..errors import InputError
from ..io import image_extension


def healthy_cases(source: str | Path, modalities=("FLAIR",)) -> list[dict[str, Path]]:
    """Cases (modality -> file) of `source` that count as healthy and have every modality asked."""
    root = Path(source)
    if not root.is_dir():
        raise FileNotFoundError(f"data: expected a folder of scans or a datastore, received {root}")
    manifest = root / "manifest.json"
    healthy_ids: set[str] | None = None
    if manifest.exists():
        healthy_ids = {c["id"] for c in json.loads(manifest.read_text(encoding="utf-8")).get("cases", [])
                       if c.get("healthy")}
    elif (root / "healthy.txt").exists():
        healthy_ids = {line.strip() for line in (root / "healthy.txt").read_text(encoding="utf-8").splitlines()
                       if line.strip()}
    elif (root / "datastore_v2.json").exists():
        objects = json.loads((root / "datastore_v2.json").read_text(encoding="utf-8")).get("objects", {})
        healthy_ids = set()
        for image_id, obj in objects.items():
            if obj.get("image", {}).get("info", {}).get("healthy"):
                parsed = split_name(image_id + ".nii.gz")
                healthy_ids.add(parsed[0] if parsed else image_id)
    out = []
    files = [p for p in sorted(root.iterdir()) if p.is_file() and image_extension(p)]
    if healthy_ids is None and files and all(split_name(p.name) is None for p in files):
        # a plain folder of single-modality scans (IXI-style): each file is one case of modalities[0]
        return [{modalities[0]: p} for p in files]
    for case in find_cases(root):
        if healthy_ids is not None and case.case_id not in healthy_ids:
            continue
        if all(m in case.images for m in modalities):
            out.append({m: case.images[m] for m in modalities})
    if not out:
        raise InputError(f"data: no healthy case with modalities {list(modalities)} in {root} "
                         "(mark healthy cases in manifest.json, healthy.txt or the image info)")
    return out


def lesion_free_slices(lesion_mask: np.ndarray, axis: int = 2, margin: int = 2) -> np.ndarray:
    """Indices of slices along `axis` with no lesion voxel within `margin` slices."""
    has = np.asarray(lesion_mask, bool).any(axis=tuple(a for a in range(lesion_mask.ndim) if a != axis))
    near = np.convolve(has.astype(int), np.ones(2 * margin + 1, int), mode="same") > 0
    return np.flatnonzero(~near)
