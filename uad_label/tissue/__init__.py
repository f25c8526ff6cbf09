"""Tissue segmentation (CSF / GM / WM) used by StRegA's input simplification."""
from .segment import CONTRAST_ORDER, TissueSegmentation, check_contrast, segment_tissues

__all__ = ["segment_tissues", "check_contrast", "TissueSegmentation", "CONTRAST_ORDER"]
