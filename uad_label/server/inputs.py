"""Resolve what a request names into the modality images a detector needs."""
from __future__ import annotations

import os
from pathlib import Path

from ..evaluation.cases import flat_case_id
from ..io import image_extension


def case_images(image_path: str | os.PathLike) -> dict[str, Path]:
    """Modalities of the case an image belongs to.

    `<dir>/<case>_FLAIR.nii.gz` brings its siblings `<case>_T1.*`, `<case>_T2.*`; a file whose name
    carries no modality is taken as FLAIR (a single uploaded scan)."""
    path = Path(image_path)
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
