"""Resolve what a request names into the modality images a detector needs (the rule: uad_label.cases)."""
from __future__ import annotations

import os
from pathlib import Path

from ..cases import case_of


def case_images(image_path: str | os.PathLike) -> dict[str, Path]:
    """Modalities of the case an image (or upload-session folder) belongs to; see uad_label.cases.case_of."""
    return case_of(image_path).images
