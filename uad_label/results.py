"""The result every detector returns, in the grid of the scan the user loaded.

A result holds a float32 anomaly map (never cast to uint8: the stock Slicer client's uint8 cast
turns such maps into zeros), the binary mask at the threshold used, extra float maps a detector
may add (the segmenter's uncertainty), and a JSON-able `info` dict:

- detector, threshold, threshold_source, min_component_mm3, connectivity
- map_range [min, max] inside the brain
- image_score: the slice-score formula over the whole volume (ranks cases)
- anomalous_volume_ml
- components: id, voxels, volume_ml, max_score, mean_score, centroid_ras (mm, scanner RAS of the
  loaded scan), centroid_index and bbox_index (voxel indices i, j, k of the loaded scan)
- slice_scores: axis (voxel axis closest to superior), values, positions_ras (centre of each slice)
- latencies: seconds per stage; preprocessing: registration metrics and options
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .postprocess.components import component_rows, image_score, slice_scores, threshold_labels
from .postprocess.findings import slice_centres
from .postprocess.findings import superior_axis as _superior_axis
from .preprocess.geometry import ras_affine


def index_to_ras(image: sitk.Image, index: np.ndarray) -> np.ndarray:
    """(N, 3) continuous voxel indices (i, j, k) -> (N, 3) RAS millimetres."""
    affine = ras_affine(image)
    return np.asarray(index, np.float64).reshape(-1, 3) @ affine[:3, :3].T + affine[:3, 3]


def superior_axis(image: sitk.Image) -> int:
    """The voxel axis most aligned with inferior-superior: the axis axial slices are taken along."""
    return _superior_axis(ras_affine(image))


def voxel_volume_mm3(image: sitk.Image) -> float:
    return float(np.prod(image.GetSpacing()))


@dataclass
class DetectionResult:
    anomaly_map: sitk.Image
    mask: sitk.Image
    info: dict
    extras: dict[str, sitk.Image] = field(default_factory=dict)
    brain: sitk.Image | None = None  # uint8 brain mask in the native grid (slice scores use it)
    component_ids: np.ndarray | None = None  # (k, j, i) int32: each finding's voxels hold its id (not saved)

    def save(self, out_dir: str | os.PathLike, prefix: str = "") -> dict[str, Path]:
        """Write map, mask, extras (NIfTI) and the JSON; each file appears whole or not at all."""
        from .io import save_image

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"map": out / f"{prefix}map.nii.gz", "mask": out / f"{prefix}mask.nii.gz",
                 "json": out / f"{prefix}result.json"}
        save_image(self.anomaly_map, paths["map"])
        save_image(self.mask, paths["mask"])
        for name, img in self.extras.items():
            paths[name] = out / f"{prefix}{name}.nii.gz"
            save_image(img, paths[name])
        write_json_atomic(self.info, paths["json"])
        return paths


def write_json_atomic(obj, path: str | os.PathLike) -> None:
    from .atomic import write_text

    write_text(path, json.dumps(obj, indent=2, allow_nan=False, default=_json_default))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def summarise(native_map: sitk.Image, native_brain: sitk.Image, threshold: float,
              min_component_mm3: float = 20.0, connectivity: int = 26,
              findings: bool = True) -> tuple[sitk.Image, dict, np.ndarray]:
    """Mask, findings and scores of a float map in its own (native) grid, and the (k, j, i) image of
    component ids (each finding's voxels hold its `id`; labelled once, reused by detectors' hooks).

    Works on SimpleITK's (k, j, i) array views to avoid transposed copies of the volume; indices
    in the JSON are reported as (i, j, k). `findings=False` (`uad evaluate`, which scores the mask only)
    leaves out the findings table and the slice scores: info has `component_count` instead of `components`
    and no `slice_scores`, the ids are the components' labels in scan order; mask, image score, volume and
    the rest are the same."""
    scores = sitk.GetArrayViewFromImage(native_map)
    brain = sitk.GetArrayViewFromImage(native_brain) > 0
    vv = voxel_volume_mm3(native_map)
    labels, n = threshold_labels(scores, threshold, min_component_mm3, vv, connectivity, brain)
    if findings:
        rows, ids = component_rows(labels, n, scores, vv, lambda kji: index_to_ras(native_map, kji[:, ::-1]))
    else:
        rows, ids = None, labels
    mask = ids > 0
    inside = scores[brain]
    info = {
        "threshold": float(threshold),
        "min_component_mm3": float(min_component_mm3),
        "connectivity": int(connectivity),
        "map_range": [float(inside.min()), float(inside.max())] if inside.size else [0.0, 0.0],
        "image_score": image_score(scores, mask, brain),
        "anomalous_volume_ml": float(mask.sum() * vv / 1000.0),
    }
    if findings:
        axis = superior_axis(native_map)
        per_slice = slice_scores(scores, mask, brain, 2 - axis)
        centres = slice_centres(native_map.GetSize(), axis)  # (i, j, k)
        for r in rows:
            r["centroid_index"] = r["centroid_index"][::-1]
            r["bbox_index"] = [b[::-1] for b in r["bbox_index"]]
        info["components"] = rows
        info["slice_scores"] = {"axis": axis, "values": per_slice.round(6).tolist(),
                                "positions_ras": index_to_ras(native_map, centres).round(3).tolist()}
    else:
        info["component_count"] = int(n)
    mask_image = sitk.GetImageFromArray(mask.astype(np.uint8))
    mask_image.CopyInformation(native_map)
    return mask_image, info, ids
