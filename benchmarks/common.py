"""Machine and version facts written next to every benchmark result."""
from __future__ import annotations

import datetime
import os
import platform


def environment() -> dict:
    import numpy
    import torch

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    for name in ("monai", "SimpleITK", "skimage", "sklearn", "scipy", "numba"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # optional in some images (the GPU machine has no monai)
            pass
    return info
