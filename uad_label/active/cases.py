"""One datastore image per case.

`uad sample-data` writes flat datastores: `<case>_FLAIR.nii.gz`, `<case>_T1.nii.gz`, `<case>_T2.nii.gz`
are three datastore images of one case. Scoring, strategies and batch inference treat a case once,
through its *representative* image: the FLAIR if present, else the first modality present in the
order FLAIR, T2, T1, T1POST. An image whose name carries no modality suffix is its own case.
A case counts as labelled when any of its images has a label of the tag asked for (default final).
"""
from __future__ import annotations

from typing import Iterable

from ..cases import split_name

MODALITY_ORDER = ("FLAIR", "T2", "T1", "T1POST")


def case_of(image_id: str) -> tuple[str, str | None]:
    """(case id, modality or None) of a datastore image id (ids carry no extension)."""
    parsed = split_name(image_id + ".nii.gz")
    return parsed if parsed else (image_id, None)


def group_cases(image_ids: Iterable[str]) -> dict[str, dict[str | None, str]]:
    """case id -> {modality: image id}; ground-truth images (`<case>_GT`) are left out."""
    cases: dict[str, dict[str | None, str]] = {}
    for image_id in sorted(image_ids):
        case, modality = case_of(image_id)
        if modality == "GT":
            continue
        cases.setdefault(case, {}).setdefault(modality, image_id)
    return cases


def representative(images: dict[str | None, str]) -> str:
    for modality in MODALITY_ORDER:
        if modality in images:
            return images[modality]
    return images[sorted(images, key=lambda m: (m is not None, str(m)))[0]]


def representatives(image_ids: Iterable[str]) -> dict[str, str]:
    """case id -> the representative image id of that case."""
    return {case: representative(images) for case, images in group_cases(image_ids).items()}


def unlabeled_representatives(datastore, label_tag: str | None = None) -> list[str]:
    """Representative image ids of the cases none of whose images has a label with `label_tag`
    (default: final)."""
    tag = label_tag or "final"
    all_ids = datastore.list_images()
    labeled_cases = {case_of(i)[0] for i in all_ids if tag in (datastore.get_labels_by_image_id(i) or {})}
    reps = representatives(all_ids)
    return [img for case, img in sorted(reps.items()) if case not in labeled_cases]
