"""What every detector shares: parameters, preprocessing, the map back in the native grid,
thresholding, findings and timings. A detector only says how to compute its map."""
from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import SimpleITK as sitk

from ..results import DetectionResult, summarise
from .params import COMMON_PARAMS, Param, validate

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]


class Detector(ABC):
    name: str = ""
    description: str = ""
    modalities: tuple[str, ...] = ("FLAIR",)  # required
    optional_modalities: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()
    task_type: str = "anomaly"  # "segmentation" for the segmenter: clients show a label, not a heat map
    weights_name: str | None = None  # learned detectors: the name of their weights (uad_label.weights)

    def load_weights(self, map_location="cpu") -> tuple[dict, dict]:
        """(state dict, model card); reloaded when the file changes (a server keeps serving while
        `uad train` or the train task writes new weights). UntrainedError when there are none."""
        from ..weights import find_weights, load_state

        path = find_weights(self.weights_name)
        key = (str(path), path.stat().st_mtime_ns) if path else None
        cache = getattr(self, "_weights_cache", None)
        if key is None or cache is None or cache[0] != key:
            state, card = load_state(self.weights_name, map_location)
            self._weights_cache = (key, state, card)
        return self._weights_cache[1], self._weights_cache[2]

    def all_params(self) -> tuple[Param, ...]:
        return COMMON_PARAMS + self.params

    def validate(self, params: Mapping | None, ignore=()) -> dict:
        return validate(self.all_params(), dict(params or {}), ignore)

    def info(self) -> dict:
        from ..weights import find_weights

        out = {"description": self.description, "modalities": list(self.modalities),
               "optional_modalities": list(self.optional_modalities),
               "params": {p.name: p.describe() for p in self.all_params()}}
        if self.weights_name:
            path = find_weights(self.weights_name)
            out["trained"] = path is not None
            out["weights"] = str(path) if path else None
        return out

    @abstractmethod
    def compute_map(self, case, params: dict, progress: Progress) -> np.ndarray:
        """Anomaly map in the work grid of `case` (a PreprocessedCase), float32, higher = more abnormal."""

    @abstractmethod
    def default_threshold(self, work_map: np.ndarray, case, params: dict) -> tuple[float, str]:
        """(threshold, how it was chosen) when the request gives none."""

    def check_inputs(self, images: Mapping[str, sitk.Image]) -> None:
        missing = [m for m in self.modalities if m not in images]
        if missing:
            raise ValueError(f"images: detector '{self.name}' needs modalities {list(self.modalities)}, "
                             f"missing {missing} (received {sorted(images)})")
        for mod, img in images.items():
            if img.GetDimension() != 3:
                raise ValueError(f"images['{mod}']: expected a 3D volume, received {img.GetDimension()}D")
            arr = sitk.GetArrayViewFromImage(img)
            if not np.isfinite(arr).all():
                raise ValueError(f"images['{mod}']: expected finite intensities, received NaN or infinity")

    def detect(self, images: Mapping[str, sitk.Image | str | Path], params: Mapping | None = None,
               progress: Progress | None = None, brain_mask: sitk.Image | None = None) -> DetectionResult:
        from ..io import load_image
        from ..preprocess import PreprocessOptions, preprocess

        report = progress or (lambda f, m: log.info("[%s] %3.0f%% %s", self.name, 100 * f, m))
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        p = self.validate(params)
        loaded = {m: (v if isinstance(v, sitk.Image) else load_image(v)) for m, v in images.items()}
        loaded = {m: loaded[m] for m in (*self.modalities, *self.optional_modalities) if m in loaded}
        self.check_inputs(loaded)
        timings["load"] = time.perf_counter() - t0

        report(0.05, "preprocessing")
        t = time.perf_counter()
        options = PreprocessOptions(preprocessed=p["preprocessed"], bias_correction=p["bias_correction"],
                                    brain_mask=brain_mask)
        case = preprocess(loaded, options, reference=self.modalities[0])
        timings["preprocess"] = time.perf_counter() - t
        timings.update({f"preprocess.{k}": v for k, v in getattr(case, "timings", {}).items()})

        report(0.3, "computing the anomaly map")
        t = time.perf_counter()
        work_map = np.asarray(self.compute_map(case, p, lambda f, m: report(0.3 + 0.5 * f, m)), np.float32)
        if work_map.shape != case.brain.shape:
            raise RuntimeError(f"{self.name}: map shape {work_map.shape} != work grid {case.brain.shape}")
        timings["detect"] = time.perf_counter() - t

        report(0.85, "post-processing")
        t = time.perf_counter()
        if p["threshold"] is None:
            threshold, source = self.default_threshold(work_map, case, p)
        else:
            threshold, source = p["threshold"], "request"
        native_map = sitk.Cast(case.to_native(work_map, interpolation="linear"), sitk.sitkFloat32)
        native_brain = case.to_native(case.brain.astype(np.uint8), interpolation="nearest")
        mask, info = summarise(native_map, native_brain, threshold, p["min_component_mm3"], p["connectivity"])
        timings["postprocess"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        report(1.0, "done")
        info = {"detector": self.name, **info, "threshold_source": source,
                "params": p, "latencies": {k: round(v, 4) for k, v in timings.items()},
                "preprocessing": getattr(case, "registration", {})}
        return DetectionResult(native_map, mask, info, brain=sitk.Cast(native_brain, sitk.sitkUInt8))
