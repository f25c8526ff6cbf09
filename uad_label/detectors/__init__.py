"""Detector registry. Detectors are imported on first use so that listing them stays cheap and a
detector whose optional dependencies are missing does not break the others."""
from __future__ import annotations

import importlib

from .base import Detector

_REGISTRY: dict[str, str] = {
    "flair_threshold": "uad_label.detectors.flair_threshold:FlairThreshold",
    "inpainting": "uad_label.detectors.inpainting:InpaintingDetector",
    "inpainting_fast": "uad_label.detectors.inpainting:InpaintingFastDetector",
    "patchddm": "uad_label.detectors.patchddm:PatchDDM",
    "ppr": "uad_label.detectors.ppr:PatchPositionRegression",
    "segresnet": "uad_label.detectors.segresnet:SegResNetSegmenter",
    "tissue_outlier": "uad_label.detectors.tissue_outlier:TissueOutlier",
    "fusion": "uad_label.detectors.fusion:Fusion",
    "baur_ae": "uad_label.detectors.baur_ae:BaurAE",
    "ae3d": "uad_label.detectors.ae3d:AE3D",
    "strega": "uad_label.detectors.strega:StRegA",
}
_INSTANCES: dict[str, Detector] = {}

def available() -> list[str]:
    return sorted(_REGISTRY)


def get_detector(name: str) -> Detector:
    if name not in _REGISTRY:
        raise ValueError(f"detector: expected one of {available()}, received {name!r}")
    if name not in _INSTANCES:
        module, cls = _REGISTRY[name].split(":")
        _INSTANCES[name] = getattr(importlib.import_module(module), cls)()
    return _INSTANCES[name]


def register(name: str, target: str) -> None:
    """Add a detector ('package.module:Class'); later issues plug theirs in here."""
    _REGISTRY[name] = target


if importlib.import_module(".samseg_runner", __name__).samseg_available():  # optional extra; imports no TensorFlow
    register("samseg", "uad_label.detectors.samseg:Samseg")
