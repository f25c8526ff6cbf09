"""Process-wide settings, applied once when a process starts (the CLI, the server app), never per
request: torch's and SimpleITK's thread pools are global, so a request that changed them would change
them under every other request running at the same time. The one exception, :func:`itk_single_threaded`,
only narrows ITK to one thread for a while (registrations that must repeat exactly, when
UAD_REPRODUCIBLE_REGISTRATION=1) and restores it."""
from __future__ import annotations

import contextlib
import os
import threading

from .errors import InputError

ENV_THREADS = "UAD_THREADS"
ENV_REPRODUCIBLE = "UAD_REPRODUCIBLE_REGISTRATION"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


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
    reproducible_registration_enabled()  # a bad UAD_REPRODUCIBLE_REGISTRATION fails at start, not in a request
    if n:
        import SimpleITK as sitk
        import torch

        torch.set_num_threads(n)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    return n


_itk_single_lock = threading.Lock()
_itk_single_users = 0
_itk_saved_threads = 0


@contextlib.contextmanager
def itk_single_threaded():
    """ITK objects created inside run on one thread, for results that repeat bit for bit.

    ITK's Mattes mutual information sums its joint histogram across threads in whatever order they
    finish, so with 2 threads the same registration ends on different optima from run to run
    (patient01/study2: Mattes MI -0.4528 or -0.4321). SimpleITK's ``ImageRegistrationMethod.SetNumberOfThreads``
    does not reach the metric, which takes ITK's global default when it is created, so only the global
    default does. Nested and concurrent users share one switch (counted): the previous default comes back
    when the last one leaves. Filters that other threads create meanwhile run on one thread too: slower,
    never different."""
    import SimpleITK as sitk

    global _itk_single_users, _itk_saved_threads
    with _itk_single_lock:
        if _itk_single_users == 0:
            _itk_saved_threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        _itk_single_users += 1
    try:
        yield
    finally:
        with _itk_single_lock:
            _itk_single_users -= 1
            if _itk_single_users == 0:
                sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(_itk_saved_threads)


def reproducible_registration_enabled() -> bool:
    """Whether registrations run on one ITK thread (UAD_REPRODUCIBLE_REGISTRATION=1): the same scan then
    always gets the same transform and map. Off by default: on 2 cores it adds 0.7-1 s to a raw scan
    (benchmarks/load/latency.md); in batch work with one thread per worker it costs nothing."""
    value = os.environ.get(ENV_REPRODUCIBLE, "").strip().lower()
    if value not in _TRUE + _FALSE:
        raise InputError(f"{ENV_REPRODUCIBLE}: expected 1 or 0 (true / false), received {value!r}")
    return value in _TRUE


@contextlib.contextmanager
def reproducible_registration():
    """:func:`itk_single_threaded` when :func:`reproducible_registration_enabled`, else nothing."""
    if reproducible_registration_enabled():
        with itk_single_threaded():
            yield
    else:
        yield
