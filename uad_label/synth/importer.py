"""Import a user's folder of scans into the datastore layout of `write_sample_data`.

Accepted input (`src_dir`):
- per-case folders: `src/<case>/<anything with FLAIR|T1|T2 ...>.nii.gz|.nii|.nrrd|.nhdr|.mha|.mhd`,
  DICOM series directly in the case folder or in its sub-folders (modality from the sub-folder
  name or the DICOM SeriesDescription), optional ground truth (`GT`, `seg`, `mask`, `label`,
  `lesion`, `consensus` in the name);
- flat files: `src/<case>_<MOD>.nii.gz` (`<case>_GT.nii.gz` for ground truth);
- a DICOM series directly in a top-level folder counts as a case folder with one image.

Everything is converted to `.nii.gz` with its geometry (spacing, origin, direction) unchanged;
ground truth is stored as uint8 0/1 in `ground_truth/<case>.nii.gz` (resampled, nearest
neighbour, onto the case's first image grid only if its grid differs).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .datastore import GT_DIR, finish_out_dir, prepare_out_dir, write_image_atomic
from .lesions import lesion_stats
from .template import xyz_from_sitk

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_GT_TOKENS = {"gt", "seg", "segmentation", "mask", "label", "labels", "lesion", "lesions", "consensus",
              "groundtruth", "ground", "truth", "roi"}
_MOD_TOKENS = [  # (token set, canonical modality), first match wins
    ({"flair", "t2flair", "t2_flair"}, "FLAIR"),
    ({"t1post", "t1ce", "t1gd", "t1c", "t1wce", "t1contrast"}, "T1POST"),
    ({"t1", "t1w", "mprage", "t1weighted"}, "T1"),
    ({"t2", "t2w", "t2weighted"}, "T2"),
    ({"pd", "pdw"}, "PD"),
]
_MOD_ORDER = ["FLAIR", "T1", "T2", "T1POST", "PD"]


def _strip_suffix(name: str) -> str | None:
    low = name.lower()
    for s in IMAGE_SUFFIXES:
        if low.endswith(s):
            return name[: -len(s)]
    return None


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[^A-Za-z0-9]+", text) if t]


def classify(stem: str) -> tuple[str, str | None, list[str]]:
    """("gt" | "image", modality or None, the remaining name tokens) of a file stem or a name."""
    toks = _tokens(stem)
    if any(t.lower() in _GT_TOKENS for t in toks):
        return "gt", None, [t for t in toks if t.lower() not in _GT_TOKENS]
    for names, mod in _MOD_TOKENS:
        if any(t.lower() in names for t in toks):
            return "image", mod, [t for t in toks if t.lower() not in names]
    if "flair" in stem.lower():
        return "image", "FLAIR", toks
    return "image", None, toks


def _safe(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return s or "case"


def _read(path: Path) -> sitk.Image:
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise ValueError(f"cannot read image file {path}: {first}") from None
    if img.GetDimension() != 3:
        raise ValueError(f"{path} is a {img.GetDimension()}-D image; only 3-D scans are imported")
    return img


def _dicom_series(folder: Path) -> list[tuple[sitk.Image, str, Path]]:
    """(image, series description, folder) for each DICOM series directly in `folder`."""
    out = []
    candidates = [p for p in folder.iterdir() if p.is_file() and _strip_suffix(p.name) is None
                  and not p.name.startswith(".") and p.suffix.lower() in ("", ".dcm", ".ima", ".dicom")]
    if not candidates:
        return out
    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError:
        ids = ()
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warn)
    for sid in ids:
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        reader.MetaDataDictionaryArrayUpdateOn()
        try:
            img = reader.Execute()
        except RuntimeError as exc:
            raise ValueError(f"cannot read DICOM series {sid} in {folder}: "
                             f"{str(exc).strip().splitlines()[-1]}") from None
        desc = reader.GetMetaData(0, "0008|103e").strip() if reader.HasMetaDataKey(0, "0008|103e") else ""
        out.append((img, desc, folder))
    return out


def _scan_case_folder(folder: Path) -> dict:
    images, gts = [], []  # (modality|None, name hint, source, loader)
    for p in sorted(folder.iterdir()):
        if p.is_file():
            stem = _strip_suffix(p.name)
            if stem is None:
                continue
            kind, mod, rest = classify(stem)
            (gts if kind == "gt" else images).append((mod, "_".join(rest) or stem, p, None))
        elif p.is_dir():
            for img, desc, src in _dicom_series(p):
                kind, mod, _ = classify(p.name)
                if mod is None and kind != "gt":
                    kind, mod, _ = classify(desc)
                (gts if kind == "gt" else images).append((mod, _safe(p.name), src, img))
    for img, desc, src in _dicom_series(folder):
        kind, mod, _ = classify(desc)
        images.append((mod, _safe(desc) or "dicom", src, img))
    return dict(images=images, gts=gts)


def discover(src_dir) -> dict[str, dict]:
    """case id -> {"images": [(modality, hint, source path, preloaded image|None)], "gts": [...]}."""
    src = Path(src_dir)
    if not src.exists():
        raise ValueError(f"scans folder not found: {src}")
    if not src.is_dir():
        raise ValueError(f"not a folder: {src}")
    cases: dict[str, dict] = {}
    for p in sorted(src.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            found = _scan_case_folder(p)
            if found["images"]:
                case = cases.setdefault(_safe(p.name), dict(images=[], gts=[]))
                case["images"] += found["images"]
                case["gts"] += found["gts"]
        elif p.is_file():
            stem = _strip_suffix(p.name)
            if stem is None:
                continue
            kind, mod, rest = classify(stem)
            case_id = _safe("_".join(rest)) if (mod is not None or kind == "gt") and rest else _safe(stem)
            case = cases.setdefault(case_id, dict(images=[], gts=[]))
            (case["gts"] if kind == "gt" else case["images"]).append((mod, "image", p, None))
    cases = {k: v for k, v in cases.items() if v["images"]}
    if not cases:
        raise ValueError(f"no scans found in {src} (looked for {', '.join(IMAGE_SUFFIXES)} files, per-case "
                         "folders and DICOM series)")
    return cases


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4))


def import_scans(src_dir, out_dir, *, force: bool = False, progress: bool = False) -> dict:
    """Convert a folder of scans into the datastore layout in `out_dir`; returns the manifest.

    Raises ValueError (naming the path) for a missing folder, a folder without scans, an
    unreadable file or two files that would land on the same output name.
    """
    cases = discover(src_dir)
    # read everything before writing anything: errors surface before the output is touched
    loaded = {}
    for cid, c in cases.items():
        imgs, names = [], {}
        unnamed = 0
        for mod, hint, path, pre in c["images"]:
            img = pre if pre is not None else _read(path)
            if mod is None:
                unnamed += 1
                mod = _safe(hint).upper() if hint and hint != "image" else f"IMG{unnamed}"
            name = f"{cid}_{mod}.nii.gz"
            if name in names:
                raise ValueError(f"two scans map to {name}: {names[name]} and {path}")
            names[name] = path
            imgs.append((mod, name, path, img))
        imgs.sort(key=lambda t: (_MOD_ORDER.index(t[0]) if t[0] in _MOD_ORDER else 99, t[0]))
        if len(c["gts"]) > 1:
            raise ValueError(f"case {cid} has several ground-truth files: {', '.join(str(g[2]) for g in c['gts'])}")
        gt = None
        if c["gts"]:
            gpath = c["gts"][0][2]
            gt = c["gts"][0][3] if c["gts"][0][3] is not None else _read(gpath)
        loaded[cid] = (imgs, gt, c["gts"][0][2] if c["gts"] else None)

    out = prepare_out_dir(Path(out_dir), force=force)
    entries = []
    it = loaded.items()
    if progress:
        from tqdm import tqdm
        it = tqdm(list(it), desc="uad sample-data --import", unit="case")
    for cid, (imgs, gt, gpath) in it:
        files, sources = {}, {}
        for mod, name, path, img in imgs:
            write_image_atomic(img, out / name)
            files[mod] = name
            sources[mod] = str(Path(path).resolve())
        entry = dict(id=cid, healthy=None, files=files, sources=sources, ground_truth=None, geometry="imported",
                     spacing_mm=[round(s, 4) for s in imgs[0][3].GetSpacing()], size=list(imgs[0][3].GetSize()))
        if gt is not None:
            ref = imgs[0][3]
            gt_bin = sitk.Cast(sitk.Cast(gt, sitk.sitkFloat32) > 0.5, sitk.sitkUInt8)
            resampled = not _same_grid(gt_bin, ref)
            if resampled:
                gt_bin = sitk.Resample(gt_bin, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
            else:
                gt_bin.CopyInformation(ref)
            (out / GT_DIR).mkdir(exist_ok=True)
            rel = f"{GT_DIR}/{cid}.nii.gz"
            write_image_atomic(gt_bin, out / rel)
            n, vol = lesion_stats(xyz_from_sitk(gt_bin), float(np.prod(gt_bin.GetSpacing())))
            entry.update(ground_truth=rel, healthy=(n == 0), n_lesions=n, lesion_volume_ml=round(vol, 3),
                         ground_truth_source=str(Path(gpath).resolve()), ground_truth_resampled=resampled)
        entries.append(entry)
    manifest = dict(kind="imported", source=str(Path(src_dir).resolve()), ground_truth_dir=GT_DIR, cases=entries)
    finish_out_dir(out, manifest)
    return manifest
