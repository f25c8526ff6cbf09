"""Labelled cases for segmenters: approved labels and pseudo-labels, with the weight each counts in the loss.

A case contributes one label, chosen by `uad_label.cases.best_label`: its approved `final` label when it has
one (weight `final_weight`), else the first pseudo-label tag of `pseudo_tags` it has (e.g. `samseg`, written
by `uad pseudo-label`; weight `pseudo_weight`). Ground truth files (GT, ground_truth/) are never used here:
they are what evaluation measures against.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..cases import FINAL_TAG, best_label, find_cases
from ..errors import InputError


@dataclass
class LabelledCase:
    case_id: str
    images: dict[str, Path]  # modality -> file (the modalities the case has, of those asked)
    label: Path
    tag: str  # "final" or the pseudo-label tag
    weight: float
    source: Path  # the datastore or folder it came from


def labelled_cases(sources: Iterable[str | Path], modalities: Iterable[str] = ("FLAIR",),
                   required: Iterable[str] = ("FLAIR",), pseudo_tags: Iterable[str] = (),
                   final_weight: float = 3.0, pseudo_weight: float = 1.0,
                   holdout: Iterable[str] = ()) -> list[LabelledCase]:
    """Every case of `sources` that has the `required` modalities and a final label or a pseudo-label of one
    of `pseudo_tags` (final first), except the `holdout` case ids; optional modalities are kept when present."""
    modalities, required, tags = tuple(modalities), tuple(required), tuple(pseudo_tags)
    if FINAL_TAG in tags:
        raise InputError(f"pseudo_tags: expected pseudo-label tags (not {FINAL_TAG!r}, which always counts), "
                         f"received {list(tags)}")
    for name, w in (("final_weight", final_weight), ("pseudo_weight", pseudo_weight)):
        if not w > 0:
            raise InputError(f"{name}: expected a weight > 0, received {w!r}")
    skip = set(holdout)
    out: list[LabelledCase] = []
    for src in sources:
        root = Path(src)
        if not root.is_dir():
            raise InputError(f"data: expected a folder (datastore or case folders), received {root}")
        for case in find_cases(root):
            if case.case_id in skip or not all(m in case.images for m in required):
                continue
            found = best_label(root, case.case_id, case.images, tags)
            if found is None:
                continue
            tag, path = found
            out.append(LabelledCase(case.case_id, {m: case.images[m] for m in modalities if m in case.images},
                                    path, tag, final_weight if tag == FINAL_TAG else pseudo_weight, root))
    return out
