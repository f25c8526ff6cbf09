"""The steps of a review session, as functions a Job runs (Logic and tests call the same ones)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np

from .client import Client, InferResult, ServerError
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
    scan: Optional[tuple] = None  # (file name, bytes) of the datastore scan, fetched in the job when asked


@dataclass(frozen=True)
class SaveSnapshot:
    """What a save sends, taken on the main thread so later slider moves cannot change it."""
    image_id: str
    label: object  # NiftiImage
    summary: dict


def connect_server(ctx: Optional[JobContext], url: str, token: Optional[str] = None) -> dict:
    """Connect (a Job's work): /info/ and the datastore listing, off the Qt thread.
    Returns {"client", "info", "models", "strategies", "images", "datastore_error"}."""
    client = Client(url, token or None)
    if ctx:
        ctx.progress(None, "asking the server for its models")
    info = client.info(ctx=ctx)
    out = {"client": client, "info": info, "models": client.models(info), "strategies": client.strategies(info),
           "images": [], "datastore_error": None}
    if ctx:
        ctx.progress(0.5, "listing the datastore")
    try:
        out["images"] = sorted((client.datastore("all", ctx=ctx).get("objects") or {}))
    except ServerError as exc:  # a server without a datastore still serves its models
        out["datastore_error"] = str(exc)
    return out


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
                 via_session: bool = True, case: str = "scan", fetch_scan: bool = False) -> ReviewCase:
    """Run `model` on a datastore image (`image`) or on uploaded volumes (`files`: modality ->
    bytes or path; through PUT /session/ when `via_session`, else in the infer request itself;
    several modalities always go through a session). With `fetch_scan` (a datastore image), the scan
    itself is downloaded in the same job (`ReviewCase.scan`). Returns the result with its review state."""
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
    scan = client.download_image(image, ctx=ctx) if fetch_scan and image else None
    return ReviewCase(result, review, image, session_id, {k: os.path.basename(str(k)) for k in named}, scan)


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


def review_snapshot(case: ReviewCase, edited=None) -> SaveSnapshot:
    """The final label (edited array in (i, j, k), else the accepted findings) and its summary, frozen now.
    A segmenter's result (no review state) is saved as the edited segmentation in the map's grid."""
    if not case.image_id:
        raise ValueError("save: this scan was uploaded, not taken from the datastore; there is no image to "
                         "attach a label to (add the scan to the datastore first)")
    if case.review is not None:
        return SaveSnapshot(case.image_id, case.review.final_label(edited), case.review.summary())
    if case.result.map is None or edited is None:
        raise ValueError("save: no anomaly map to review (run a detector first)")
    label = case.result.map.with_array((np.asarray(edited) > 0).astype(np.uint8))
    return SaveSnapshot(case.image_id, label, {"detector": case.result.info.get("detector", case.result.model)})


def save_snapshot(ctx: Optional[JobContext], client: Client, snapshot: SaveSnapshot, tag: str = "final") -> dict:
    return client.save_label(snapshot.image_id, snapshot.label, tag, params=snapshot.summary, ctx=ctx)


def save_review(ctx: Optional[JobContext], client: Client, case: ReviewCase, edited=None, tag: str = "final") -> dict:
    """Save the reviewed segmentation (edited array in (i, j, k), or the accepted findings) as the
    datastore label of the case's image."""
    return save_snapshot(ctx, client, review_snapshot(case, edited), tag)
