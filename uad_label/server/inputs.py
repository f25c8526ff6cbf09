"""Resolve what a request names into the modality images a detector needs."""
from __future__ import annotations

import os
from pathlib import Path

from ..evaluation.cases import flat_case_id
from ..io import image_extension


def case_images(image_path: str | os.PathLike) -> dict[str, Path]:
    """Modalities of the case an image belongs to.

    A folder whose files are named `<case>_<MODALITY>.*` (a multi-file upload session) gives those
    files; any other folder is taken as one DICOM series of FLAIR.

    `<dir>/<case>_FLAIR.nii.gz` brings its siblings `<case>_T1.*`, `<case>_T2.*`; a file whose name
    carries no modality is taken as FLAIR (a single uploaded scan)."""
    path = Path(image_path)
    if path.is_dir():  # a DICOM series, or an upload session holding <case>_<MODALITY> files
        named = {}
        for f in sorted(path.iterdir()):
            parsed = flat_case_id(f.name) if f.is_file() and image_extension(f) else None
            if parsed and parsed[1] != "GT":
                named.setdefault(parsed[1], f)
        return named or {"FLAIR": path}
    parsed = flat_case_id(path.name) if path.is_file() else None
    if parsed is None:
        return {"FLAIR": path}
    case_id, modality = parsed
    found = {modality: path}
    for sibling in sorted(path.parent.iterdir()):
        if sibling == path or not image_extension(sibling) or sibling.name.startswith("."):
            continue
        other = flat_case_id(sibling.name)
        if other and other[0] == case_id and other[1] not in found and other[1] != "GT":
            found[other[1]] = sibling
    return found
