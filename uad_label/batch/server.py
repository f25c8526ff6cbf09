"""Server-side batch inference (POST /batch/infer/{detector}) for every detector.

MONAI Label's stock BatchInferTask does not fit detectors on a CPU server: it forwards its own keys
(images, multi_gpu, gpus, max_workers, ...) into the infer request (our detectors refuse unknown
parameters), divides by the number of CUDA devices (ZeroDivisionError without a GPU), and runs every
image of a flat datastore (FLAIR, T1 and T2 of one case separately). This task runs each case once
(its representative image), saves the mask as the `original` label (result=mask), writes the image
score into the image info like scoring does, and records a failing case's error without stopping.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable

from monailabel.interfaces.tasks.batch_infer import BatchInferImageType, BatchInferTask

from ..active.cases import case_of, representatives
from ..active.scoring import _write, params_key
from ..server.tasks import MONAILABEL_REQUEST_KEYS, result_format

log = logging.getLogger(__name__)

BATCH_KEYS = frozenset({"images", "multi_gpu", "gpus", "max_workers", "max_batch_size", "bundle_path", "run_sync",
                        "_id", "_image_id", "model", "device", "logging", "save_label", "label_tag"})
RESULT_KEYS = ("result_extension", "result_dtype", "result_compress")


def detector_params(model: str, request: dict, defaults: dict | None = None) -> dict:
    """The detector parameters of a batch request, validated (InputError on unknown or bad ones).
    Keys of MONAI Label and of the batch task are not parameters, unless the detector declares them
    (e.g. `device`)."""
    from ..detectors import get_detector

    det = get_detector(model)
    declared = set(det.info()["params"])
    own = {k: v for k, v in request.items()
           if (k not in BATCH_KEYS and k not in MONAILABEL_REQUEST_KEYS) or k in declared}
    result_format(request)
    return det.validate({**(defaults or {}), **own})


def check_batch_params(model: str, params: dict) -> None:
    """What POST /batch/infer checks before it queues anything."""
    detector_params(model, {"model": model, **params})


class DetectorBatchInfer(BatchInferTask):
    def __init__(self, default_params: dict | None = None, primary: str | None = None,
                 ray_address: str | None = None):
        self.default_params = dict(default_params or {})
        self.primary = primary
        self.ray_address = ray_address  # --conf ray_address: the cases run on that Ray cluster (ray_server.py)

    def get_images(self, request, datastore):
        selected = super().get_images(request, datastore)
        if isinstance(selected, str):
            selected = [selected]
        reps = representatives(datastore.list_images())
        wanted = {case_of(i)[0] for i in selected}
        return [img for case, img in sorted(reps.items()) if case in wanted]

    def __call__(self, request, datastore, infer: Callable):
        model = request["model"]
        params = detector_params(model, request, self.default_params)
        image_ids = sorted(self.get_images(request, datastore))
        if request.get("max_batch_size", 0):
            image_ids = image_ids[: int(request["max_batch_size"])]
        tag = request.get("label_tag") or "original"
        if self.ray_address:
            from .ray_server import batch_on_ray

            return batch_on_ray(self.ray_address, model, params, image_ids, datastore, tag, model == self.primary,
                                bool(request.get("save_label", True)))
        result: dict = {}
        t0 = time.time()
        for n, image_id in enumerate(image_ids):
            req = {"model": model, "image": image_id, "save_label": bool(request.get("save_label", True)),
                   "label_tag": tag, "result": "mask", **{k: request[k] for k in RESULT_KEYS if k in request},
                   **params}
            t = time.perf_counter()
            try:
                r = infer(req, datastore)
                if r.get("file") and os.path.exists(r["file"]):
                    os.unlink(r["file"])
                info = r.get("params") or {}
                entry = {"score": float(info["image_score"]), "anomalous_volume_ml": info.get("anomalous_volume_ml"),
                         "n_findings": len(info.get("components", [])), "params_key": params_key(model, params),
                         "image_mtime": os.path.getmtime(datastore.get_image_uri(image_id)),
                         "ts": int(time.time()), "seconds": round(time.perf_counter() - t, 3)}
                _write(datastore, image_id, model, entry, primary=(model == self.primary))
                result[image_id] = {"label": r.get("label"), "image_score": entry["score"],
                                    "n_findings": entry["n_findings"], "seconds": entry["seconds"]}
            except Exception as exc:
                log.warning("batch %s: %s failed: %s", model, image_id, exc)
                result[image_id] = {"error": f"{type(exc).__name__}: {exc}"}
            log.info("batch %s: %d / %d (%s)", model, n + 1, len(image_ids), image_id)
        log.info("batch %s: %d case(s) in %.1f s", model, len(image_ids), time.time() - t0)
        return result


__all__ = ["DetectorBatchInfer", "BatchInferImageType"]
