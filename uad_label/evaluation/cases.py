"""Find evaluation cases: one folder per case (FLAIR, T1, T2, GT files), or a flat datastore
folder (`<case>_FLAIR.nii.gz` ... with `ground_truth/<case>.nii.gz`, as `uad sample-data` writes)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..io import MODALITY_ALIASES, find_modalities, image_extension


@dataclass
class EvalCase:
    case_id: str
    images: dict[str, Path]
    gt: Path | None
    meta: dict = field(default_factory=dict)


def _strip_extension(name: str) -> str:
    ext = image_extension(name) or ""
    return name[: len(name) - len(ext)] if ext else name


def flat_case_id(filename: str) -> tuple[str, str] | None:
    """('sub-000', 'FLAIR') for 'sub-000_FLAIR.nii.gz'; None if no modality suffix."""
    stem = _strip_extension(filename)
    for modality, aliases in MODALITY_ALIASES.items():
        for alias in sorted(aliases, key=len, reverse=True):
            m = re.fullmatch(rf"(?P<case>.+?)[_\-.]{re.escape(alias)}", stem, flags=re.IGNORECASE)
            if m:
                return m.group("case"), modality
    return None


def discover_cases(data_dir: str | Path, require_gt: bool = True) -> list[EvalCase]:
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"DATA_DIR: expected a folder of cases, received {root} (not a folder)")
    cases: list[EvalCase] = []
    subdirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")
               and d.name != "ground_truth" and d.name != "labels"]
    for d in subdirs:
        found = find_modalities(d)
        gt = found.pop("GT", None)
        if found:
            cases.append(EvalCase(d.name, found, gt))
    if not cases:  # flat datastore layout
        grouped: dict[str, dict[str, Path]] = {}
        for f in sorted(root.iterdir()):
            if f.is_file() and image_extension(f) and not f.name.startswith("."):
                parsed = flat_case_id(f.name)
                if parsed and parsed[1] != "GT":
                    grouped.setdefault(parsed[0], {})[parsed[1]] = f
        gt_dir = root / "ground_truth"
        for case_id, images in grouped.items():
            gts = [p for p in gt_dir.glob(f"{case_id}.*") if image_extension(p)] if gt_dir.is_dir() else []
            cases.append(EvalCase(case_id, images, gts[0] if gts else None))
    if not cases:
        raise ValueError(f"DATA_DIR: found no cases in {root}: expected one folder per case holding FLAIR/T1/T2 "
                         "and GT files, or <case>_FLAIR.nii.gz files with ground_truth/<case>.nii.gz")
    if require_gt:
        missing = [c.case_id for c in cases if c.gt is None]
        if missing:
            raise ValueError(f"DATA_DIR: cases without a ground truth (GT) file: {missing}")
    return cases
