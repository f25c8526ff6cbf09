"""Run a detector for a MONAI Label infer request; the app's infer tasks are thin wrappers.

MONAI Label's result contract: a client that asks for an integer `result_dtype` (the stock Slicer
plugin asks `uint8` and `.nrrd`, and loads every result as a label map) gets the binary mask, in
`result_extension`; without a dtype, or with a float one, the image is the float anomaly map.
"""
from __future__ import annotations

import logging
import os
import tempfile

import numpy as np

from ..detectors import get_detector
from ..detectors.params import ValidatedParams
from ..errors import InputError
from .encode import check_dtype, check_extension, encode_image
from .inputs import case_images

log = logging.getLogger("uad_label.server")

# keys MONAI Label itself puts into an infer request; everything else must be a detector parameter.
# A detector that declares one of them as a parameter (e.g. `device`) receives it.
MONAILABEL_REQUEST_KEYS = frozenset({
    "model", "image", "device", "description", "save_label", "label_tag", "result_extension", "result_dtype",
    "result_compress", "client_id", "session", "session_id", "label", "timeout", "output", "cache_transforms",
    "largest_cc", "pipeline", "label_info", "logging", "result", "_uad_return_mask", "_uad_in_memory", "train_mode",
    "_uad_params",
})
VALIDATED = "_uad_params"  # the request's detector parameters, validated once where the request entered
RESULT_CHOICES = ("map", "mask")
IN_MEMORY = "_uad_images"  # key of the info dict that carries the result images to the ASGI app


def split_request(detector_name: str, request: dict) -> tuple[dict, dict]:
    """(detector params validated, MONAI Label keys). Raises InputError on unknown or bad params."""
    det = get_detector(detector_name)
    declared = set(det.info()["params"])
    params = {k: v for k, v in request.items() if k not in MONAILABEL_REQUEST_KEYS or k in declared}
    result_format(request)
    return det.validate(params), {k: v for k, v in request.items() if k in MONAILABEL_REQUEST_KEYS}


def result_format(request: dict) -> tuple[str, str, np.dtype | None]:
    """(which image: 'map' or 'mask', file extension, voxel type or None) a request asks for."""
    result = request.get("result", "map")
    if result not in RESULT_CHOICES:
        raise InputError(f"parameter 'result': expected one of {list(RESULT_CHOICES)}, received {result!r}")
    dtype = check_dtype(request.get("result_dtype"))
    if dtype is not None and np.issubdtype(dtype, np.integer):
        result = "mask"  # a label map was asked for: the segmentation at the threshold, not a cast of the map
    return result, check_extension(request.get("result_extension") or ".nii.gz"), dtype


def stock_result(request: dict) -> bool:
    """Whether the client asked for MONAI Label's own result (one image in a chosen format/type)."""
    return bool(request.get("result_dtype") or request.get("result_extension"))


def run_infer_request(detector_name: str, request: dict) -> tuple[str | None, dict]:
    """Detect on request['image'] (a path MONAI Label resolved).

    From uad-label's ASGI app (`_uad_in_memory`): no file; the images travel in memory under
    info[IN_MEMORY] (the requested one as 'image'; with `_uad_return_mask` also the mask, extra maps
    and the brain). From MONAI Label's own routes (stock server, batch, save_label): the requested
    image goes to a temporary file that MONAI Label streams back or stores and then deletes."""
    given = request.get(VALIDATED)  # validated by the ASGI route (survives MONAI Label's copies of the request)
    if isinstance(given, ValidatedParams) and given.detector == detector_name:
        params = given
    else:  # MONAI Label's own routes: validated here, once
        params, _ = split_request(detector_name, request)
    which, ext, dtype = result_format(request)
    image = request.get("image")
    if not image or not os.path.exists(str(image)):
        raise InputError(f"image: expected an image id of the datastore or an uploaded file, received {image!r}")
    det = get_detector(detector_name)
    images = case_images(image)
    log.info("infer %s on %s (%s)", detector_name, os.path.basename(str(image)), ", ".join(sorted(images)))
    result = det.detect(images, params, progress=lambda f, m: log.info("[%s] %3.0f%% %s", detector_name, 100 * f, m))
    info = dict(result.info)
    main = result.mask if which == "mask" else result.anomaly_map
    if request.get("_uad_in_memory"):
        out = {"image": main}
        if request.get("_uad_return_mask") and not stock_result(request):
            out["mask"] = result.mask
            out.update(result.extras)
            if result.brain is not None:  # clients compute slice scores over the same brain
                out["brain"] = result.brain
        info[IN_MEMORY] = out
        return None, info
    data = encode_image(main, ext, dtype, compress=request.get("result_compress", True) is not False)
    fd, path = tempfile.mkstemp(prefix="uad_result_", suffix=ext)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        os.unlink(path)
        raise
    return path, info
