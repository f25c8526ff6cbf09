"""The steps of a review session, as functions a Job runs (Logic and tests call the same ones)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

from .client import Client, InferResult
from .jobs import JobContext
from .review import Review

MODALITIES = ("FLAIR", "T1", "T2")


@dataclass
class ReviewCase:
    """One case under review: where the scan came from, the server's result, the review state."""
    result: InferResult
    review: Optional[Review]
    image_id: Optional[str] = None  # datastore id (the label can only be saved for one)
    session_id: Optional[str] = None
    inputs: dict = field(default_factory=dict)  # modality -> file name uploaded


def upload_names(files: Mapping[str, Union[bytes, str, os.PathLike]], case: str = "scan") -> dict:
    """Modality -> bytes/path  ->  file name -> bytes/path, named `<case>_<MODALITY>.nii.gz` so the
    server pairs the modalities of one case."""
    out = {}
    for modality, data in files.items():
        if modality not in MODALITIES:
            raise ValueError(f"modality: expected one of {list(MODALITIES)}, received {modality!r}")
        out[f"{case}_{modality}.nii.gz"] = data
    if not any(name.endswith("_FLAIR.nii.gz") for name in out):
        raise ValueError("inputs: a FLAIR volume is required")
    return out


def run_detector(ctx: Optional[JobContext], client: Client, model: str, image: Optional[str] = None,
                 files: Optional[Mapping[str, Union[bytes, str, os.PathLike]]] = None, params: Optional[dict] = None,
                 via_session: bool = True, case: str = "scan") -> ReviewCase:
    """Run `model` on a datastore image (`image`) or on uploaded volumes (`files`: modality ->
    bytes or path; through PUT /session/ when `via_session`, else in the infer request itself;
    several modalities always go through a session). Returns the result with its review state."""
    if (image is None) == (not files):
        raise ValueError("run_detector: give a datastore image id or files to upload, not both")
    session_id = None
    named = {}
    if files:
        named = upload_names(files, case)
        if via_session or len(named) > 1:
            if ctx:
                ctx.progress(0.0, "uploading the scan")
            session_id = client.create_session(named, ctx=ctx)
            result = client.infer(model, session_id=session_id, params=params, ctx=ctx)
        else:
            (name, data), = named.items()
            result = client.infer(model, file=data if isinstance(data, (bytes, bytearray)) else Path(data).read_bytes(),
                                  file_name=name, params=params, ctx=ctx)
    else:
        result = client.infer(model, image=image, params=params, ctx=ctx)
    if ctx:
        ctx.progress(1.0, "thresholding")
    brain = result.extras.get("brain")  # the server's brain mask, when it sends one
    review = (Review(result.map, result.info, brain=None if brain is None else brain.array > 0)
              if result.map is not None and result.mask is not None else None)
    return ReviewCase(result, review, image, session_id, {k: os.path.basename(str(k)) for k in named})


def next_case(ctx: Optional[JobContext], client: Client, strategy: str = "random",
              download: bool = True) -> Optional[dict]:
    """Ask the active-learning strategy for the next image; with `download`, fetch it too.
    Returns {"id", "name", "data", "info"} or None when the strategy has nothing left."""
    sample = client.next_sample(strategy, ctx=ctx)
    if not sample or not sample.get("id"):
        return None
    out = {"id": sample["id"], "info": sample, "name": None, "data": None}
    if download:
        out["name"], out["data"] = client.download_image(sample["id"], ctx=ctx)
    return out


def save_review(ctx: Optional[JobContext], client: Client, case: ReviewCase, edited=None, tag: str = "final") -> dict:
    """Save the reviewed segmentation (edited array in (i, j, k), or the accepted findings) as the
    datastore label of the case's image."""
    if not case.image_id:
        raise ValueError("save: this scan was uploaded, not taken from the datastore; there is no image to "
                         "attach a label to (add the scan to the datastore first)")
    if case.review is None:
        raise ValueError("save: no anomaly map to review (run a detector first)")
    label = case.review.final_label(edited)
    return client.save_label(case.image_id, label, tag, params=case.review.summary(), ctx=ctx)
