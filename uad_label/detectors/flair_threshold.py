"""FLAIR thresholding baseline (Meissen et al., 'Challenging current semi-supervised anomaly
segmentation methods for brain MRI'): histogram-equalised FLAIR is the anomaly map."""
from __future__ import annotations

from ..transforms.intensity import equalise_in_brain
from .base import Detector
from .params import Param

# The equalised map is each voxel's intensity quantile inside the brain, so a threshold q flags
# the brightest (1 - q) of brain voxels. 0.99 flags the top 1%: the order of a typical MS lesion
# load, and where the published upper-bound Dice sits on the MSLUB patient of ../shared (0.990).
DEFAULT_THRESHOLD = 0.99


class FlairThreshold(Detector):
    name = "flair_threshold"
    description = ("FLAIR thresholding baseline (Meissen et al.): histogram-equalised FLAIR inside the brain is "
                   "the anomaly map; threshold; 26-connected components of 20 mm^3 or less removed. Training-free.")
    modalities = ("FLAIR",)
    params = (Param("nbins", 256, int, "histogram bins of the equalisation (scikit-image semantics)", minimum=2,
                    maximum=65536),)

    def compute_map(self, case, params, progress):
        return equalise_in_brain(case.arrays["FLAIR"], case.brain, params["nbins"])

    def default_threshold(self, work_map, case, params):
        return DEFAULT_THRESHOLD, "default: 0.99 on the equalised map (the brightest 1% of brain voxels)"
