"""Process-wide settings, applied once when a process starts (the CLI, the server app), never per
request: torch's and SimpleITK's thread pools are global, so a request that changed them would change
them under every other request running at the same time."""
from __future__ import annotations

import os

from .errors import InputError

ENV_THREADS = "UAD_THREADS"


def configure_threads(threads: int | str | None = None) -> int:
    """Set torch's intra-op threads and SimpleITK's default thread count to `threads` (default: the
    UAD_THREADS environment variable; 0 or unset keeps the libraries' own defaults). Returns the count set
    (0 = defaults kept). On a CPU shared with other jobs, 1 is often fastest (OpenMP threads spin)."""
    value = os.environ.get(ENV_THREADS, "") if threads is None else threads
    try:
        n = int(value or 0)
    except (TypeError, ValueError):
        raise InputError(f"threads ({ENV_THREADS}): expected a whole number >= 0, received {value!r}") from None
    if n < 0:
        raise InputError(f"threads ({ENV_THREADS}): expected a whole number >= 0, received {n}")
    if n:
        import SimpleITK as sitk
        import torch

        torch.set_num_threads(n)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    return n
