"""Preprocessing shared by every detector: load -> RAS -> N4 -> 1 mm -> MNI152 registration ->
brain mask, with an exact way back to the native grid. See docs/preprocessing.md. Intensity
normalisation lives in uad_label.transforms.intensity (shared by detectors and trainers)."""
from uad_label.preprocess.pipeline import (
    PreprocessedCase,
    PreprocessOptions,
    RegistrationError,
    grid_from_affine,
    isotropic_ras_grid,
    preprocess,
)

__all__ = [
    "PreprocessOptions",
    "PreprocessedCase",
    "RegistrationError",
    "preprocess",
    "grid_from_affine",
    "isotropic_ras_grid",
]
