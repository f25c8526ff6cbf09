"""uad-label core: I/O, preprocessing, detectors, post-processing, evaluation, CLI.

Array convention used throughout the package: a volume array is indexed (x, y, z) in RAS+
voxel order (x towards Right, y towards Anterior, z towards Superior), the order nibabel and
MONAI use; networks take channel-first (C, X, Y, Z). Axial slices are along the last axis.
SimpleITK images (physical LPS coordinates, arrays (z, y, x)) only appear at the I/O boundary.
"""

__version__ = "0.1.0"

# TensorFlow (the optional `samseg` extra installs it) stays out of our processes: MONAI imports
# torch.utils.tensorboard, which loads the real TensorFlow when installed (+5 s, +0.5 GB per process)
# unless tensorboard's documented no-TensorFlow switch, a module tensorboard.compat.notf, exists.
import sys as _sys  # noqa: E402
import types as _types  # noqa: E402

_sys.modules.setdefault("tensorboard.compat.notf", _types.ModuleType("tensorboard.compat.notf"))
