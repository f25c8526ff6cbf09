"""What every detector shares: parameters, preprocessing, the map back in the native grid,
thresholding, findings and timings. A detector only says how to compute its map."""
from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..results import DetectionResult, summarise
from .calibration_card import calibrated_threshold
from .params import COMMON_PARAMS, Param, ValidatedParams, validate

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]
# one lock for reading weights and building networks: requests run in worker threads, and two
# first requests must not build (or half-read) the same model twice
_MODEL_LOCK = threading.RLock()


@dataclass
class MapOutput:
    """What compute_map may return instead of a bare map: JSON to merge into the result's info,
    and further work-space float maps (the segmenter's uncertainty) that go back to the native grid
    as result extras."""

    map: np.ndarray
    info: dict = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)


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

        with _MODEL_LOCK:
            path = find_weights(self.weights_name)
            key = (str(path), path.stat().st_mtime_ns) if path else None
            cache = getattr(self, "_weights_cache", None)
            if key is None or cache is None or cache[0] != key:
                state, card = load_state(self.weights_name, map_location)
                self._weights_cache = (key, state, card)
            return self._weights_cache[1], self._weights_cache[2]

    def cached_model(self, device, build: Callable[[dict, dict, str], object]) -> tuple[object, dict]:
        """(network, model card): `build(state, card, device)` makes the network in eval mode on `device`
        once per weights file version and device; later requests reuse it (the one model cache of every
        learned detector)."""
        with _MODEL_LOCK:
            state, card = self.load_weights()
            key = (self._weights_cache[0], str(device))
            cached = getattr(self, "_model_cache", None)
            if cached is None or cached[0] != key:
                self._model_cache = (key, build(state, card, str(device)))
            return self._model_cache[1], card

    def all_params(self) -> tuple[Param, ...]:
        return COMMON_PARAMS + self.params

    def validate(self, params: Mapping | None, ignore=()) -> ValidatedParams:
        """Defaults filled in, values coerced, unknown names refused; parameters this detector already
        validated come back unchanged (validated once per request)."""
        if isinstance(params, ValidatedParams) and params.detector == self.name:
            return params
        return ValidatedParams(self.name, validate(self.all_params(), dict(params or {}), ignore))

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
    def compute_map(self, case, params: dict, progress: Progress) -> np.ndarray | MapOutput:
        """Anomaly map in the work grid of `case` (a PreprocessedCase), float32, higher = more abnormal
        (or a MapOutput carrying extra JSON and extra maps)."""

    def finalize(self, result: DetectionResult, case, params: dict) -> None:
        """Hook after the result is built in the native grid (e.g. per-finding statistics of an
        extra map). The default does nothing."""

    @abstractmethod
    def default_threshold(self, work_map: np.ndarray, case, params: dict) -> tuple[float, str]:
        """(threshold, how it was chosen) when the request gives none."""

    def check_inputs(self, images: Mapping[str, sitk.Image]) -> None:
        missing = [m for m in self.modalities if m not in images]
        if missing:
            raise InputError(f"images: detector '{self.name}' needs modalities {list(self.modalities)}, "
                             f"missing {missing} (received {sorted(images)})")
        for mod, img in images.items():
            if img.GetDimension() != 3:
                raise InputError(f"images['{mod}']: expected a 3D volume, received {img.GetDimension()}D")
            arr = sitk.GetArrayViewFromImage(img)
            if not np.isfinite(arr).all():
                raise InputError(f"images['{mod}']: expected finite intensities, received NaN or infinity")

    def detect(self, images: Mapping[str, sitk.Image | str | Path], params: Mapping | None = None,
               progress: Progress | None = None, brain_mask: sitk.Image | None = None,
               findings: bool = True) -> DetectionResult:
        """The result in the grid of the scan. `findings=False` (`uad evaluate`: it scores the mask) skips the
        findings table, the slice scores and the `finalize` hook (per-finding statistics): see results.summarise."""
        from ..io import load_image
        from ..preprocess import PreprocessOptions, RegistrationError, preprocess

        report = progress or (lambda f, m: log.info("[%s] %3.0f%% %s", self.name, 100 * f, m))
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        p = self.validate(params)
        # only the modalities this detector uses are read (a case folder's T1POST, or the T1/T2 of a
        # FLAIR-only detector, would be decompressed for nothing)
        loaded = {m: (images[m] if isinstance(images[m], sitk.Image) else load_image(images[m]))
                  for m in (*self.modalities, *self.optional_modalities) if m in images}
        self.check_inputs(loaded)
        timings["load"] = time.perf_counter() - t0

        report(0.05, "preprocessing")
        t = time.perf_counter()
        options = PreprocessOptions(preprocessed=p["preprocessed"], bias_correction=p["bias_correction"],
                                    brain_mask=brain_mask)
        try:
            case = preprocess(loaded, options, reference=self.modalities[0])
        except RegistrationError as exc:  # no meaningful map from a scan that is not in template space
            metrics = {k: v for k, v in getattr(exc, "metrics", {}).items()
                       if k in ("mutual_information", "brain_in_head", "fov_coverage")}
            raise InputError(f"{self.name}: refused, the scan failed its registration to the MNI152 template "
                             f"({exc}); metrics: {metrics}") from exc
        check_case(case)
        timings["preprocess"] = time.perf_counter() - t
        timings.update({f"preprocess.{k}": v for k, v in getattr(case, "timings", {}).items()})
        contrast = {}
        if p["check_contrast"]:
            from ..preprocess.contrast import check_modality_contrast

            t = time.perf_counter()
            # every modality the case brings, optional ones (T1/T2 of a FLAIR detector) included
            contrast = {m: check_modality_contrast(case, m) for m in case.arrays}
            timings["contrast_check"] = time.perf_counter() - t

        report(0.3, "computing the anomaly map")
        t = time.perf_counter()
        out = self.compute_map(case, p, lambda f, m: report(0.3 + 0.5 * f, m))
        if not isinstance(out, MapOutput):
            out = MapOutput(out)
        work_map = np.asarray(out.map, np.float32)
        if work_map.shape != case.brain.shape:
            raise RuntimeError(f"{self.name}: map shape {work_map.shape} != work grid {case.brain.shape}")
        timings["detect"] = time.perf_counter() - t

        report(0.85, "post-processing")
        t = time.perf_counter()
        if p["threshold"] is None:
            threshold, source = calibrated_threshold(self, p) or self.default_threshold(work_map, case, p)
        else:
            threshold, source = p["threshold"], "request"
        native_map = sitk.Cast(case.to_native(work_map, interpolation="linear"), sitk.sitkFloat32)
        native_brain = case.to_native(case.brain.astype(np.uint8), interpolation="nearest")
        mask, info, component_ids = summarise(native_map, native_brain, threshold, p["min_component_mm3"],
                                              p["connectivity"], findings=findings)
        extras = {name: sitk.Cast(case.to_native(np.asarray(a, np.float32), interpolation="linear"), sitk.sitkFloat32)
                  for name, a in out.extras.items()}
        timings["postprocess"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        report(1.0, "done")
        info = {"detector": self.name, **info, "threshold_source": source,
                "params": p, "latencies": {k: round(v, 4) for k, v in timings.items()},
                "preprocessing": getattr(case, "registration", {}), "contrast": contrast, **out.info}
        result = DetectionResult(native_map, mask, info, extras, brain=sitk.Cast(native_brain, sitk.sitkUInt8),
                                 component_ids=component_ids)
        if findings:
            self.finalize(result, case, p)
        return result


def check_case(case) -> None:
    """What every detector needs of a preprocessed case, checked once for all of them: a non-empty brain
    and finite intensities inside it."""
    if not case.brain.any():
        raise InputError("brain mask: expected brain voxels, received an empty mask (is the scan all zero?)")
    for modality, array in case.arrays.items():
        if not np.isfinite(array[case.brain]).all():
            raise InputError(f"images['{modality}']: expected finite intensities inside the brain, "
                             "received NaN or infinity")
