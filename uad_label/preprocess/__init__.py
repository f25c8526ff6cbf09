"""Preprocessing shared by every detector: load -> RAS -> N4 -> 1 mm -> MNI152 registration ->
brain mask, with an exact way back to the native grid. See docs/preprocessing.md."""
from uad_label.preprocess.normalize import equalize_hist, percentile_scale, zero_outside, zscore
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
    "zscore",
    "percentile_scale",
    "equalize_hist",
    "zero_outside",
]
