"""Run a detector for a MONAI Label infer request; the app's infer tasks are thin wrappers."""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from ..detectors import get_detector
from ..io import save_image
from .inputs import case_images

log = logging.getLogger("uad_label.server")

# keys MONAI Label itself puts into an infer request; everything else must be a detector parameter
MONAILABEL_REQUEST_KEYS = frozenset({
    "model", "image", "device", "description", "save_label", "label_tag", "result_extension", "result_dtype",
    "result_compress", "client_id", "session", "session_id", "label", "timeout", "output", "cache_transforms",
    "largest_cc", "pipeline", "label_info", "logging", "result", "_uad_return_mask", "train_mode",
})
RESULT_CHOICES = ("map", "mask")


def split_request(detector_name: str, request: dict) -> tuple[dict, dict]:
    """(detector params validated, MONAI Label keys). Raises ValueError on unknown or bad params."""
    det = get_detector(detector_name)
    params = {k: v for k, v in request.items() if k not in MONAILABEL_REQUEST_KEYS}
    result = request.get("result", "map")
    if result not in RESULT_CHOICES:
        raise ValueError(f"parameter 'result': expected one of {list(RESULT_CHOICES)}, received {result!r}")
    return det.validate(params), {k: v for k, v in request.items() if k in MONAILABEL_REQUEST_KEYS}


def run_infer_request(detector_name: str, request: dict) -> tuple[str, dict]:
    """Detect on request['image'] (a path MONAI Label resolved) and write the float map (or the mask,
    with result='mask') to a temporary file MONAI Label streams back and deletes. With
    `_uad_return_mask` the mask also goes to a temporary file named in the JSON under `_files`."""
    params, _ = split_request(detector_name, request)
    image = request.get("image")
    if not image or not os.path.exists(str(image)):
        raise ValueError(f"image: expected an image id of the datastore or an uploaded file, received {image!r}")
    det = get_detector(detector_name)
    images = case_images(image)
    log.info("infer %s on %s (%s)", detector_name, image, ", ".join(sorted(images)))
    result = det.detect(images, params, progress=lambda f, m: log.info("[%s] %3.0f%% %s", detector_name, 100 * f, m))
    info = dict(result.info)
    written: list[str] = []
    try:
        main = result.mask if request.get("result", "map") == "mask" else result.anomaly_map
        path = _temp_nifti(main, written)
        files = {}
        if request.get("_uad_return_mask"):
            files["mask"] = _temp_nifti(result.mask, written)
            for name, img in result.extras.items():
                files[name] = _temp_nifti(img, written)
            if result.brain is not None:  # clients compute slice scores over the same brain
                files["brain"] = _temp_nifti(result.brain, written)
        if files:
            info["_files"] = files
    except BaseException:
        for p in written:
            Path(p).unlink(missing_ok=True)
        raise
    return path, info


def _temp_nifti(image, written: list[str]) -> str:
    fd, path = tempfile.mkstemp(prefix="uad_", suffix=".nii.gz")
    os.close(fd)
    written.append(path)
    save_image(image, path)
    return path
