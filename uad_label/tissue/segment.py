"""Brain tissue segmentation (CSF, grey matter, white matter) for StRegA's input simplification.

FSL FAST is not installable here, so this is the same model written in numpy: a 3-class Gaussian
mixture on the brain intensities fitted by EM, with a Potts Markov random field prior (the
posterior of each voxel's 6 neighbours, mean-field approximation, strength `beta`) entering every
E-step, as in FAST's hidden MRF-EM (Zhang et al. 2001) without its bias-field estimation (the
pipeline's N4 has done that). The EM + MRF loop is uad_label.tissue.mixture's, shared with the
tissue_outlier detector. Classes are found by intensity and named by the modality's contrast
order: T1 CSF < GM < WM; T2 WM < GM < CSF; FLAIR CSF < WM < GM.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .mixture import fit_mixture

BACKGROUND, CSF, GM, WM = 0, 1, 2, 3
TISSUES = {CSF: "CSF", GM: "GM", WM: "WM"}
# intensity rank (0 = darkest) -> tissue label, per modality
CONTRAST_ORDER = {
    "T1": (CSF, GM, WM),
    "T2": (WM, GM, CSF),
    "FLAIR": (CSF, WM, GM),
}


@dataclass
class TissueSegmentation:
    labels: np.ndarray  # uint8 (x, y, z): 0 background, 1 CSF, 2 GM, 3 WM
    ranks: np.ndarray  # uint8 (x, y, z): 0 background, 1..3 intensity rank of the voxel's class
    means: np.ndarray  # class means (darkest first), input intensity units
    stds: np.ndarray
    fractions: dict  # tissue name -> fraction of brain voxels
    iterations: int


def _kmeans_init(vals: np.ndarray, bins: int = 256, iterations: int = 50):
    """Means, standard deviations and weights of a 3-cluster 1D k-means, run on the histogram."""
    counts, edges = np.histogram(vals, bins=bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    lo, hi = np.percentile(vals, [1, 99])
    mu = lo + (hi - lo) * np.array([1 / 6, 1 / 2, 5 / 6])  # spread over the range: small classes (CSF) get a centre
    for _ in range(iterations):
        assign = np.abs(centres[:, None] - mu[None]).argmin(1)
        new = np.array([np.average(centres[assign == k], weights=counts[assign == k])
                        if counts[assign == k].sum() else mu[k] for k in range(3)])
        if np.allclose(new, mu):
            break
        mu = new
    assign = np.abs(centres[:, None] - mu[None]).argmin(1)
    w = np.array([counts[assign == k].sum() for k in range(3)], np.float64) + 1.0
    var = np.array([np.average((centres[assign == k] - mu[k]) ** 2, weights=counts[assign == k])
                    if counts[assign == k].sum() else 1e-4 for k in range(3)])
    sd = np.maximum(np.sqrt(var), 1e-3)
    return mu.astype(np.float32), sd.astype(np.float32), (w / w.sum()).astype(np.float32)


def segment_tissues(volume: np.ndarray, brain: np.ndarray, modality: str, beta: float = 0.5,
                    iterations: int = 10, tol: float = 1e-3) -> TissueSegmentation:
    """EM Gaussian mixture with a mean-field Potts MRF prior; see the module docstring."""
    if modality not in CONTRAST_ORDER:
        raise ValueError(f"modality: expected one of {sorted(CONTRAST_ORDER)} for tissue segmentation, "
                         f"received {modality!r}")
    vol = np.asarray(volume)
    brain = np.asarray(brain, bool)
    if vol.ndim != 3 or vol.shape != brain.shape:
        raise ValueError(f"volume: expected a 3D array with the brain mask's shape {brain.shape}, received {vol.shape}")
    if brain.sum() < 100:
        raise ValueError(f"brain mask: expected at least 100 brain voxels, received {int(brain.sum())}")
    if not np.isfinite(vol[brain]).all():
        raise ValueError("volume: expected finite intensities inside the brain, received NaN or infinity")
    # crop to the brain's bounding box
    idx = np.nonzero(brain)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    m = brain[box]
    vals = vol[box][m].astype(np.float32)
    scale = float(np.percentile(vals, 99.5)) or 1.0
    vals = vals / scale
    mu, sd, pi = _kmeans_init(vals)
    fit = fit_mixture(vals[None], m, means=mu[:, None], covs=(sd ** 2)[:, None, None], weights=pi, beta=beta,
                      iterations=iterations, tol=tol)
    mu, sd, it = fit.means[:, 0].astype(np.float32), np.sqrt(fit.covs[:, 0, 0]).astype(np.float32), fit.iterations
    order = np.argsort(mu)
    rank_of_class = np.empty(3, int)
    rank_of_class[order] = np.arange(3)
    ranks_box = np.zeros(m.shape, np.uint8)
    ranks_box[m] = rank_of_class[fit.posterior.argmax(0)] + 1
    tissue_of_rank = np.array((BACKGROUND, *CONTRAST_ORDER[modality]), np.uint8)
    ranks = np.zeros(vol.shape, np.uint8)
    ranks[box] = ranks_box
    labels = tissue_of_rank[ranks]
    n = max(int(brain.sum()), 1)
    fractions = {name: float((labels == k).sum() / n) for k, name in TISSUES.items()}
    return TissueSegmentation(labels, ranks, mu[order] * scale, sd[order] * scale, fractions, it)


def check_contrast(seg: TissueSegmentation, modality: str, max_csf: float = 0.35) -> None:
    """Wrong-modality guard: CSF is a minority class of the brain (about 10-25 % inside a brain mask).
    When the class the modality's contrast order calls CSF (darkest on T1 / FLAIR, brightest on T2)
    covers more than `max_csf` of the brain, the scan is probably another contrast."""
    csf = seg.fractions["CSF"]
    if csf > max_csf:
        where = "brightest" if modality == "T2" else "darkest"
        raise ValueError(f"images: the scan given as {modality} does not have {modality} contrast: its {where} "
                         f"class (CSF on {modality}) covers {csf:.0%} of the brain, expected at most {max_csf:.0%}")
