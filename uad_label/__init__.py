"""uad-label core: I/O, preprocessing, detectors, post-processing, evaluation, CLI.

Array convention used throughout the package: a volume array is indexed (x, y, z) in RAS+
voxel order (x towards Right, y towards Anterior, z towards Superior), the order nibabel and
MONAI use; networks take channel-first (C, X, Y, Z). Axial slices are along the last axis.
SimpleITK images (physical LPS coordinates, arrays (z, y, x)) only appear at the I/O boundary.
"""

__version__ = "0.1.0"
