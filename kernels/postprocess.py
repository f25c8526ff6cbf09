"""Op 5: post-processing with one API on both devices.

Inputs may be torch tensors (CPU or CUDA), NumPy arrays or CuPy arrays; the result has the
input's kind and device. CUDA tensors and CuPy arrays run on the GPU with cupyx.scipy.ndimage
and CuPy (zero-copy through DLPack); CPU tensors and NumPy arrays run with scipy.ndimage and
scikit-image. ``backend="reference"`` forces the CPU path (GPU data makes a round trip).

  connected_components(mask, connectivity=1, min_size=0) -> (labels int32, n)
  remove_small_components(mask, min_size, connectivity=1) -> bool mask
  median_filter(x, size=3, mode="reflect")
  grey_erosion(x, size=3, mode="reflect")
  binary_opening(mask, structure=None, iterations=1)
  otsu_threshold(x, mask=None, bins=256) -> float

One CuPy RawKernel, `masked_histogram` (source below, also compiled with nvcc by the tests):
the Otsu threshold of the in-brain voxels needs a histogram of a masked subset. cupyx has no
masked histogram, and cupy.histogram(x[mask]) first compacts the array with boolean indexing,
which synchronises the device (the output size is data dependent) and copies every selected
voxel. The kernel bins in shared memory straight from (x, mask), one pass, no sync, no copy.
Everything else is cupyx.scipy.ndimage, which already has GPU kernels for these ops.
"""
from __future__ import annotations

import functools
import sys

import numpy as np

from ._common import resolve_backend

MASKED_HISTOGRAM_SRC = r"""
extern "C" __global__ void masked_histogram(const float* __restrict__ x, const unsigned char* __restrict__ mask,
                                            long long n, float lo, float hi, float scale, int bins,
                                            unsigned long long* __restrict__ hist) {
    extern __shared__ unsigned int sh[];
    for (int i = threadIdx.x; i < bins; i += blockDim.x) sh[i] = 0u;
    __syncthreads();
    long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        if (mask != 0 && mask[i] == 0) continue;
        float v = x[i];
        if (!(v >= lo) || !(v <= hi)) continue;   /* also drops NaN */
        int b = (int)((v - lo) * scale);
        if (b >= bins) b = bins - 1;
        if (b < 0) b = 0;
        atomicAdd(&sh[b], 1u);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < bins; i += blockDim.x)
        if (sh[i]) atomicAdd(&hist[i], (unsigned long long)sh[i]);
}
"""


# ----------------------------------------------------------------------------- containers
def _is_cupy(x) -> bool:
    return type(x).__module__.startswith("cupy")


def _kind(x, op: str, name: str) -> str:
    if isinstance(x, np.ndarray):
        return "numpy"
    torch = sys.modules.get("torch")  # not imported: x is no tensor (NumPy callers never import torch here)
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch-cuda" if x.is_cuda else "torch-cpu"
    if _is_cupy(x):
        return "cupy"
    raise ValueError(f"{op}: {name} must be a torch.Tensor, numpy.ndarray or cupy.ndarray, got {type(x).__name__}")


def _use_gpu(kind: str, backend: str, op: str) -> bool:
    device = "cuda" if kind in ("torch-cuda", "cupy") else "cpu"
    return resolve_backend(backend, device, kernel="cupy", op=op) == "cupy"


def _to_np(x, kind):
    if kind in ("torch-cpu", "torch-cuda"):
        return x.detach().cpu().numpy()
    if kind == "cupy":
        return x.get()
    return x


def _to_cp(x, kind):
    import cupy

    if kind == "torch-cuda":
        return cupy.from_dlpack(x.detach().contiguous())
    if kind == "torch-cpu":
        return cupy.asarray(x.detach().numpy())
    return cupy.asarray(x)


def _back(arr, kind, like):
    """Return ``arr`` (numpy or cupy) in the container kind of the input ``like``."""
    on_gpu = _is_cupy(arr)
    if kind == "numpy":
        return arr.get() if on_gpu else arr
    if kind == "cupy":
        import cupy

        return arr if on_gpu else cupy.asarray(arr)
    import torch

    if on_gpu:
        t = torch.from_dlpack(arr)
        return t if kind == "torch-cuda" else t.cpu()
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.to(like.device) if kind == "torch-cuda" else t


def _prepare(op, x, backend, name="x"):
    kind = _kind(x, op, name)
    if getattr(x, "ndim", 0) < 1:
        raise ValueError(f"{op}: {name} must have at least 1 dimension, got shape {tuple(x.shape)}")
    gpu = _use_gpu(kind, backend, op)
    if gpu:
        import cupy
        import cupyx.scipy.ndimage as ndi

        return kind, gpu, (_to_cp(x, kind)), cupy, ndi
    import scipy.ndimage as ndi

    return kind, gpu, _to_np(x, kind), np, ndi


def _check_int(op, name, v, minimum):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{op}: {name} must be an int >= {minimum}, got {v!r}")
    return int(v)


# ----------------------------------------------------------------------------- ops
def connected_components(mask, *, connectivity: int = 1, min_size: int = 0, backend: str = "auto"):
    """Label the connected components of ``mask != 0`` (connectivity 1 = faces ... ndim = corners),
    drop those with fewer than ``min_size`` voxels and renumber the rest 1..n in scan order.
    Returns (labels int32 in the input's container, n)."""
    op = "connected_components"
    kind, gpu, a, xp, ndi = _prepare(op, mask, backend, "mask")
    connectivity = _check_int(op, "connectivity", connectivity, 1)
    if connectivity > a.ndim:
        raise ValueError(f"{op}: connectivity must be in [1, {a.ndim}] for a {a.ndim}D mask, got {connectivity}")
    min_size = _check_int(op, "min_size", min_size, 0)
    structure = ndi.generate_binary_structure(a.ndim, connectivity)
    labels, n = ndi.label(a != 0, structure=structure)
    n = int(n)
    sizes = xp.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_size
    keep[0] = False
    new_ids = (xp.cumsum(keep) * keep).astype(xp.int32)
    out = new_ids[labels]
    return _back(out, kind, mask), int(keep.sum())


def remove_small_components(mask, min_size: int, *, connectivity: int = 1, backend: str = "auto"):
    """Boolean mask without the connected components smaller than ``min_size`` voxels."""
    labels, _ = connected_components(mask, connectivity=connectivity, min_size=min_size, backend=backend)
    return labels > 0


def _size(op, size, ndim):
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size),) * ndim
    size = tuple(size)
    if len(size) != ndim or any((not isinstance(s, (int, np.integer))) or s < 1 for s in size):
        raise ValueError(f"{op}: size must be a positive int or {ndim} positive ints, got {size!r}")
    return size


_MODES = ("reflect", "constant", "nearest", "mirror", "wrap")


def median_filter(x, size=3, *, mode: str = "reflect", backend: str = "auto"):
    """Median over a ``size`` box (scipy.ndimage.median_filter semantics)."""
    op = "median_filter"
    kind, gpu, a, xp, ndi = _prepare(op, x, backend)
    if mode not in _MODES:
        raise ValueError(f"{op}: mode must be one of {_MODES}, got {mode!r}")
    return _back(ndi.median_filter(a, size=_size(op, size, a.ndim), mode=mode), kind, x)


def grey_erosion(x, size=3, *, mode: str = "reflect", backend: str = "auto"):
    """Minimum over a ``size`` box (scipy.ndimage.grey_erosion semantics)."""
    op = "grey_erosion"
    kind, gpu, a, xp, ndi = _prepare(op, x, backend)
    if mode not in _MODES:
        raise ValueError(f"{op}: mode must be one of {_MODES}, got {mode!r}")
    return _back(ndi.grey_erosion(a, size=_size(op, size, a.ndim), mode=mode), kind, x)


def binary_opening(mask, *, structure=None, iterations: int = 1, backend: str = "auto"):
    """Erosion then dilation of ``mask != 0`` (scipy.ndimage.binary_opening; default structure:
    the face-connected cross; the border counts as background)."""
    op = "binary_opening"
    kind, gpu, a, xp, ndi = _prepare(op, mask, backend, "mask")
    iterations = _check_int(op, "iterations", iterations, 1)
    if structure is not None:
        structure = xp.asarray(_to_np(structure, _kind(structure, op, "structure")) if not gpu else
                               _to_cp(structure, _kind(structure, op, "structure")))
        if structure.ndim != a.ndim:
            raise ValueError(f"{op}: structure must have {a.ndim} dimensions like mask, got {structure.ndim}")
    return _back(ndi.binary_opening(a != 0, structure=structure, iterations=iterations), kind, mask)


@functools.lru_cache(maxsize=None)
def _hist_kernel():
    import cupy

    return cupy.RawKernel(MASKED_HISTOGRAM_SRC, "masked_histogram")


def masked_histogram_cupy(values, mask, bins: int, lo: float, hi: float):
    """(bins,) uint64 counts of float32 ``values`` inside ``mask`` with lo <= v <= hi (CuPy RawKernel)."""
    import cupy

    v = cupy.ascontiguousarray(values, dtype=cupy.float32).ravel()
    m = cupy.ascontiguousarray(mask, dtype=cupy.uint8).ravel() if mask is not None else None
    hist = cupy.zeros(bins, dtype=cupy.uint64)
    n = v.size
    if n == 0:
        return hist
    scale = bins / (hi - lo) if hi > lo else 0.0
    threads = 256
    blocks = int(min(max((n + threads - 1) // threads, 1), 4096))
    _hist_kernel()((blocks,), (threads,),
                   (v, m if m is not None else 0, cupy.int64(n), cupy.float32(lo), cupy.float32(hi),
                    cupy.float32(scale), cupy.int32(bins), hist), shared_mem=4 * bins)
    return hist


def _otsu_from_hist(xp, counts, lo, hi):
    """Otsu on a histogram: maximise the between-class variance (scikit-image's formula)."""
    bins = counts.shape[0]
    counts = counts.astype(xp.float64)
    centers = lo + (xp.arange(bins, dtype=xp.float64) + 0.5) * ((hi - lo) / bins)
    w1 = xp.cumsum(counts)
    w2 = xp.cumsum(counts[::-1])[::-1]
    m1 = xp.cumsum(counts * centers) / xp.maximum(w1, 1e-300)
    m2 = (xp.cumsum((counts * centers)[::-1]) / xp.maximum(w2[::-1], 1e-300))[::-1]
    var12 = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    return float(centers[int(xp.argmax(var12))])


def otsu_threshold(x, *, mask=None, bins: int = 256, backend: str = "auto") -> float:
    """Otsu threshold of the values of ``x`` (inside ``mask`` when given): skimage.filters.threshold_otsu
    on the CPU; masked-histogram RawKernel + the same formula on the GPU (equal within one bin)."""
    op = "otsu_threshold"
    kind, gpu, a, xp, _ = _prepare(op, x, backend)
    bins = _check_int(op, "bins", bins, 2)
    m = None
    if mask is not None:
        mkind = _kind(mask, op, "mask")
        m = _to_cp(mask, mkind) if gpu else _to_np(mask, mkind)
        if tuple(m.shape) != tuple(a.shape):
            raise ValueError(f"{op}: mask must have the shape of x {tuple(a.shape)}, got {tuple(m.shape)}")
        m = m != 0
    a = a.astype(xp.float32)
    if gpu:
        import cupy

        sel = m if m is not None else cupy.ones(a.shape, dtype=bool)
        lo = float(cupy.where(sel, a, cupy.inf).min())
        hi = float(cupy.where(sel, a, -cupy.inf).max())
        if not np.isfinite(lo):
            raise ValueError(f"{op}: mask selects no voxel")
        if hi == lo:
            return lo
        return _otsu_from_hist(cupy, masked_histogram_cupy(a, m, bins, lo, hi), lo, hi)
    from skimage.filters import threshold_otsu

    vals = a[m] if m is not None else a.ravel()
    if vals.size == 0:
        raise ValueError(f"{op}: mask selects no voxel")
    if float(vals.min()) == float(vals.max()):
        return float(vals.min())
    return float(threshold_otsu(vals, nbins=bins))
