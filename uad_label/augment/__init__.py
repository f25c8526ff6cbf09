"""Training augmentations that MONAI lacks, written as MONAI transforms (array and dictionary forms)."""
from .ghosting import Ghosting, Ghostingd, RandGhosting, RandGhostingd

__all__ = ["Ghosting", "RandGhosting", "Ghostingd", "RandGhostingd"]
