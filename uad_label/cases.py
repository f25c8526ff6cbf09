"""What makes a case: the one rule every front end uses (CLI, server, batch, active learning,
training, evaluation), so that the same files always give the same cases and modalities.

A case is a set of co-acquired images of one subject, keyed by modality (FLAIR, T1, T1POST, T2),
with an optional ground truth (GT). Files are recognised by name, case-insensitively:

- in a case folder, by the whole stem (``FLAIR.nii.gz``, ``t2.mha``, ``T1W.nrrd``, ``GT.nii.gz``) or
  one ``_``/``-``/``.``-separated token (``sub01_FLAIR.nii.gz``); a sub-folder named like a modality
  holding a DICOM series counts too;
- in a flat folder (a datastore written by ``uad sample-data``, an upload session), by the suffix
  ``<case>_<MODALITY>``: ``sub-000_FLAIR.nii.gz`` and ``sub-000_T1.nii.gz`` are one case, and
  ``ground_truth/<case>.*`` or ``<case>_GT.*`` its ground truth;
- an image whose name carries no modality is a FLAIR case of its own; a folder with no
  modality-named content is one DICOM series of FLAIR.
A folder holding two studies (``study1_FLAIR``, ``study2_FLAIR``) gives one case per study.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .io import image_extension, is_dicom_dir

#: Canonical modality name -> lower-case name tokens that denote it.
MODALITY_ALIASES: dict[str, tuple[str, ...]] = {
    "FLAIR": ("flair", "t2flair", "t2_flair"),
    "T1": ("t1", "t1w", "mprage", "t1_weighted"),
    "T1POST": ("t1post", "t1ce", "t1c", "t1gd", "t1_post", "t1w_post", "t1_ce", "t1_gd"),
    "T2": ("t2", "t2w", "t2_weighted"),
    "GT": ("gt", "seg", "segmentation", "lesion", "lesions", "label", "labels", "consensus",
           "groundtruth", "ground_truth", "lesion_mask"),
}
_ALIAS_TO_MODALITY = {a: m for m, aliases in MODALITY_ALIASES.items() for a in aliases}
# folders of a datastore that hold results or ground truth, not cases
_NOT_CASE_FOLDERS = frozenset({"ground_truth", "labels"})


@dataclass
class Case:
    case_id: str
    images: dict[str, Path]  # modality -> file or DICOM folder; never GT
    gt: Path | None = None
    meta: dict = field(default_factory=dict)


def _stem(name: str) -> str:
    ext = image_extension(name) or ""
    return name[: len(name) - len(ext)] if ext else name


def image_id(path: str | os.PathLike) -> str:
    """A file's image id as MONAI Label's datastore names it: the file name without its image extension."""
    return _stem(Path(path).name)


def modality_of_name(name: str) -> str | None:
    """Canonical modality named by a file stem or folder name, or None (unknown or ambiguous)."""
    low = name.lower()
    if low in _ALIAS_TO_MODALITY:
        return _ALIAS_TO_MODALITY[low]
    tokens = [t for t in re.split(r"[\s_\-.]+", low) if t]
    found = {_ALIAS_TO_MODALITY[t] for t in tokens if t in _ALIAS_TO_MODALITY}
    for a, b in zip(tokens, tokens[1:]):  # two-token aliases such as "t1_post" / "t2_flair"
        pair = f"{a}_{b}"
        if pair in _ALIAS_TO_MODALITY:
            found -= {_ALIAS_TO_MODALITY.get(a), _ALIAS_TO_MODALITY.get(b)}
            found.add(_ALIAS_TO_MODALITY[pair])
    return found.pop() if len(found) == 1 else None


def split_name(filename: str) -> tuple[str, str] | None:
    """('sub-000', 'FLAIR') for 'sub-000_FLAIR.nii.gz' (the flat-folder rule); None without a modality suffix."""
    stem = _stem(filename)
    for modality, aliases in MODALITY_ALIASES.items():
        for alias in sorted(aliases, key=len, reverse=True):
            m = re.fullmatch(rf"(?P<case>.+?)[_\-.]{re.escape(alias)}", stem, flags=re.IGNORECASE)
            if m:
                return m.group("case"), modality
    return None


def find_modalities(case: str | os.PathLike | Iterable[str | os.PathLike]) -> dict[str, Path]:
    """The FLAIR / T1 / T1POST / T2 / GT images of one case folder (or of a list of files), by name.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: two files claim the same modality (the message lists them) — pass the files
            of one study explicitly to choose.
    """
    if isinstance(case, (str, os.PathLike)):
        root = Path(case)
        if not root.exists():
            raise FileNotFoundError(f"case folder not found: {root}")
        if not root.is_dir():
            raise ValueError(f"{root} is not a folder; pass a case folder or a list of files")
        candidates = sorted(root.iterdir())
    else:
        candidates = [Path(c) for c in case]
    found: dict[str, list[Path]] = {}
    for p in candidates:
        if p.name.startswith("."):
            continue
        if p.is_dir():
            mod = modality_of_name(p.name)
            if mod is not None and is_dicom_dir(p):
                found.setdefault(mod, []).append(p)
            continue
        if image_extension(p) is None:
            continue
        mod = modality_of_name(_stem(p.name))
        if mod is not None:
            found.setdefault(mod, []).append(p)
    dupes = {m: [str(x) for x in ps] for m, ps in found.items() if len(ps) > 1}
    if dupes:
        raise ValueError(f"several images per modality: {dupes}; pass the files of one study explicitly")
    return {m: found[m][0] for m in MODALITY_ALIASES if m in found}


def _image_files(folder: Path) -> list[Path]:
    return [f for f in sorted(folder.iterdir()) if f.is_file() and image_extension(f) and not f.name.startswith(".")]


def _flat_groups(files: Iterable[Path]) -> dict[str, dict[str, Path]]:
    """case id -> {modality: file} by the flat-folder rule (GT included); the first file of a modality wins."""
    groups: dict[str, dict[str, Path]] = {}
    for f in files:
        parsed = split_name(f.name)
        if parsed:
            groups.setdefault(parsed[0], {}).setdefault(parsed[1], f)
    return groups


def _case(case_id: str, found: dict[str, Path], gt: Path | None = None) -> Case:
    images = {m: p for m, p in found.items() if m != "GT"}
    return Case(case_id, images, found.get("GT", gt))


def case_of(path: str | os.PathLike) -> Case:
    """The case a file or folder belongs to.

    A file named ``<case>_<MODALITY>.*`` brings its siblings of the same case (``x_FLAIR.nii.gz`` ->
    ``x_T1``, ``x_T2``); a file without a modality in its name is a FLAIR. A folder is a case folder
    (modalities by name), an upload session of ``<case>_<MODALITY>`` files, or one DICOM series of FLAIR.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the folder holds several studies or cases; the message says how to choose.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"case: {p} does not exist")
    if p.is_file():
        parsed = split_name(p.name)
        if parsed is None:
            return Case(_stem(p.name), {"FLAIR": p})
        group = _flat_groups(_image_files(p.parent)).get(parsed[0], {})
        group[parsed[1]] = p  # the file asked for, even if a sibling also claims its modality
        return _case(parsed[0], group, _flat_gt(p.parent, parsed[0]))
    found = find_modalities(p)
    if found:
        return _case(p.name, found)
    groups = _flat_groups(_image_files(p))
    if len(groups) == 1:
        (case_id, group), = groups.items()
        return _case(case_id, group)
    if len(groups) > 1:
        raise ValueError(f"case: {p} holds several cases {sorted(groups)}; pass one of their files")
    return Case(p.name, {"FLAIR": p})  # a DICOM series; load_image says so if it is none


def _flat_gt(folder: Path, case_id: str) -> Path | None:
    gt_dir = folder / "ground_truth"
    if not gt_dir.is_dir():
        return None
    found = [f for f in _image_files(gt_dir) if _stem(f.name) == case_id]
    return found[0] if found else None


def _folder_cases(folder: Path) -> list[Case]:
    """One case folder, or one case per study when it holds several (``study1_FLAIR``, ``study2_FLAIR``)."""
    try:
        found = find_modalities(folder)
    except ValueError:
        found = None
    if found is not None:
        if any(m != "GT" for m in found):
            return [_case(folder.name, found)]
        return []
    # several studies: split by the flat rule; a folder-wide GT belongs to no single study
    return [_case(f"{folder.name}_{cid}", g) for cid, g in sorted(_flat_groups(_image_files(folder)).items())
            if any(m != "GT" for m in g)]


def find_cases(root: str | os.PathLike, require_gt: bool = False) -> list[Case]:
    """Every case under ``root``: case folders, flat ``<case>_<MODALITY>`` files (a datastore) and
    single scans whose name names no modality (each a FLAIR case), sorted by case id.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no case found, or (with ``require_gt``) cases without ground truth, named.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise FileNotFoundError(f"data: expected a folder of cases, received {folder} (not a folder)")
    cases: list[Case] = []
    for sub in sorted(folder.iterdir()):
        if sub.is_dir() and not sub.name.startswith(".") and sub.name not in _NOT_CASE_FOLDERS:
            cases.extend(_folder_cases(sub))
    files = _image_files(folder)
    # files named just like a modality (FLAIR.nii.gz, T1.nii.gz): `folder` itself is a case folder
    own = [f for f in files if _stem(f.name).lower() in _ALIAS_TO_MODALITY]
    if own:
        cases.append(_case(folder.name, find_modalities(own)))
    for case_id, group in sorted(_flat_groups(files).items()):
        if any(m != "GT" for m in group):
            cases.append(_case(case_id, group, _flat_gt(folder, case_id)))
    cases.extend(Case(_stem(f.name), {"FLAIR": f}, gt=_flat_gt(folder, _stem(f.name)))
                 for f in files if split_name(f.name) is None and f not in own)
    if not cases:
        raise ValueError(f"data: found no cases in {folder}: expected one folder per case holding FLAIR/T1/T2 "
                         "(and GT) files, <case>_FLAIR.nii.gz files (with ground_truth/<case>.nii.gz), or scans")
    if require_gt:
        missing = [c.case_id for c in cases if c.gt is None]
        if missing:
            raise ValueError(f"data: cases without a ground truth (GT) file: {missing}")
    return sorted(cases, key=lambda c: c.case_id)


#: Label tags MONAI Label itself uses: approved labels (`final`) and saved inference results (`original`).
#: Pseudo-labels carry their own tag (the detector's name by default) and never one of these.
FINAL_TAG = "final"
RESERVED_TAGS = frozenset({FINAL_TAG, "original"})


def label_of(root: str | os.PathLike, case_id: str, images: dict[str, Path], tag: str = FINAL_TAG) -> Path | None:
    """The label of a case with `tag` in a datastore at `root` (labels/<tag>/<image id>.*, where the image id is
    the file name of one of the case's images without its extension, or the case id), or None."""
    folder = Path(root) / "labels" / tag
    if not folder.is_dir():
        return None
    stems = [Path(p).name for p in images.values()] + [case_id]
    for f in _image_files(folder):
        stem = _stem(f.name)
        if any(s == stem or s.startswith(stem + ".") for s in stems):
            return f
    return None


def final_label(root: str | os.PathLike, case_id: str, images: dict[str, Path]) -> Path | None:
    """The approved label of a case (labels/final/...), or None."""
    return label_of(root, case_id, images, FINAL_TAG)


def best_label(root: str | os.PathLike, case_id: str, images: dict[str, Path],
               tags: Iterable[str] = (FINAL_TAG,)) -> tuple[str, Path] | None:
    """(tag, file) of the first of `tags` the case has a label for. The approved `final` label always comes
    first, whatever order the pseudo-label tags are given in: an annotator's label wins over any detector's."""
    order = [FINAL_TAG] + [t for t in tags if t != FINAL_TAG]
    for tag in order:
        found = label_of(root, case_id, images, tag)
        if found is not None:
            return tag, found
    return None
