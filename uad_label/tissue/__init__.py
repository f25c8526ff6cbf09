"""Tissue models: the one EM + MRF Gaussian mixture (mixture.py), StRegA's tissue segmentation on it
(segment.py) and the MNI152 tissue priors on a work grid (atlas.py) that tissue_outlier uses."""
from .segment import CONTRAST_ORDER, TissueSegmentation, check_contrast, segment_tissues

__all__ = ["segment_tissues", "check_contrast", "TissueSegmentation", "CONTRAST_ORDER"]
