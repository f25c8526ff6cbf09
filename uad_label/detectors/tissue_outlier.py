"""tissue_outlier: lesions are what a model of healthy tissue does not explain (Van Leemput et al.
2001). An EM Gaussian mixture over the case's co-registered channels (FLAIR, plus T1 and T2 when
the case has them) with three tissue classes (CSF, GM, WM), the MNI152 tissue probability maps
that nilearn ships as spatial priors, a mean-field Potts MRF (uad_label.tissue.mixture, the EM
written for StRegA) and a uniform outlier class with a small fixed prior that takes what no tissue
class explains, so lesions do not bias the tissue estimates.

Map (`score=posterior`, default): the outlier class's posterior, kept only where the voxel is
hyperintense on FLAIR (and on T2 with `sign=flair_t2`) relative to the intensity the spatial
prior expects there (the atlas-weighted tissue means; without an atlas, the WM mean): lesions of
MS are bright on FLAIR/T2, dark abnormal voxels (CSF in enlarged ventricles, a resection cavity)
are not flagged. `score=mahalanobis`: the signed prior-weighted Mahalanobis distance to the tissue
classes (in SDs) instead. Alternatives and their numbers: docs/tissue_outlier.md.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from .base import Detector, MapOutput
from .params import Param

# A posterior: 0.5 is where the outlier class and the tissue classes explain the voxel equally well
DEFAULT_THRESHOLD = 0.5
MAHALANOBIS_THRESHOLD = 4.0  # SDs; with score=mahalanobis
LESION_SIGN = {"FLAIR": 1, "T2": 1}  # channels on which a lesion is hyperintense (T1: iso- to hypointense)
MIN_VOXELS = 1000
FINAL_E_STEPS = 3  # full-resolution mean-field E-steps after the fit


class TissueOutlier(Detector):
    name = "tissue_outlier"
    description = ("Tissue-model outlier (Van Leemput et al. 2001): EM Gaussian mixture (CSF, GM, WM) over FLAIR "
                   "and, when given, T1/T2, with MNI152 tissue priors and an MRF; the map is the posterior of an "
                   "outlier class, kept where the voxel is hyperintense on FLAIR. Training-free, seconds per case.")
    modalities = ("FLAIR",)
    optional_modalities = ("T1", "T2")
    params = (
        Param("channels", "all", str, "all: FLAIR and every given T1/T2; FLAIR: FLAIR alone", choices=("all", "FLAIR")),
        Param("score", "posterior", str, "posterior: outlier-class posterior; mahalanobis: prior-weighted "
              "Mahalanobis distance to the tissue classes (SDs)", choices=("posterior", "mahalanobis")),
        Param("sign", "flair", str, "hyperintensity required on FLAIR, or on FLAIR and T2 (when given)",
              choices=("flair", "flair_t2", "none")),
        Param("outlier_prior", 0.01, float, "prior probability of the outlier class", minimum=1e-6, maximum=0.5),
        Param("beta", 0.3, float, "strength of the MRF (Potts, mean field)", minimum=0.0, maximum=5.0),
        Param("atlas", True, bool, "use the MNI152 tissue priors (template-space cases only; else flat priors)"),
        Param("atlas_floor", 0.1, float, "share of a flat prior mixed into the atlas (anatomy it does not match)",
              minimum=0.0, maximum=1.0),
        Param("atlas_smoothing_mm", 2.0, float, "Gaussian smoothing of the atlas (mm)", minimum=0.0, maximum=10.0),
        Param("iterations", 15, int, "EM iterations at most", minimum=1, maximum=100),
        Param("fit_stride", 2, int, "fit the parameters on every n-th voxel per axis (the map uses every voxel)",
              minimum=1, maximum=4),
    )

    def compute_map(self, case, params, progress):
        from ..tissue.atlas import CLASSES, tissue_priors
        from ..tissue.mixture import fit_mixture, gaussian_log_density

        brain = case.brain
        n_brain = int(brain.sum())
        if n_brain < MIN_VOXELS:
            raise InputError(f"brain mask: expected at least {MIN_VOXELS} brain voxels, received {n_brain} "
                             "(is the FLAIR all zero?)")
        mods = ["FLAIR"] + ([m for m in self.optional_modalities if m in case.arrays]
                            if params["channels"] == "all" else [])
        progress(0.05, "tissue priors")
        box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(brain))
        m = brain[box]
        # each channel over its brain median (robust to lesions), taken on the brain's box only
        scales = {mod: float(np.median(case.arrays[mod][box][m])) or 1.0 for mod in mods}
        chan = np.stack([np.asarray(case.arrays[mod][box], np.float32) / np.float32(scales[mod]) for mod in mods])
        priors = tissue_priors(case, params["atlas_smoothing_mm"]) if params["atlas"] else None
        k = len(CLASSES)
        if priors is not None:
            atlas = priors[(slice(None), *box)]
            atlas = (1 - params["atlas_floor"]) * atlas / np.maximum(atlas.sum(0, keepdims=True), 1e-6) \
                + params["atlas_floor"] / k
        x = chan[:, m]
        # uniform density over the box of the channels' robust range
        lo, hi = np.percentile(x, (0.1, 99.9), axis=1)
        density = 1.0 / float(np.prod(np.maximum(hi - lo, 1e-3)))
        common = {"beta": params["beta"], "outlier_prior": params["outlier_prior"], "outlier_density": density}
        # parameters are fitted on every fit_stride-th voxel per axis (1/8 of them at 2: same estimates,
        # 8x less work); the posterior is then computed on every voxel with those parameters
        st = params["fit_stride"]
        sub = (slice(None), slice(None, None, st), slice(None, None, st), slice(None, None, st))
        ms = m[sub[1:]]
        start = ({"responsibilities": atlas[sub][:, ms], "atlas": atlas[sub][:, ms]} if priors is not None else
                 {"responsibilities": _kmeans_responsibilities(chan[sub][0][ms])})
        progress(0.15, "EM + MRF")
        fit = fit_mixture(chan[sub][:, ms], ms, iterations=params["iterations"], **common, **start)
        progress(0.7, "posterior on every voxel")
        a = atlas[:, m] if priors is not None else None
        if st > 1:
            final = fit_mixture(x, m, means=fit.means, covs=fit.covs, weights=fit.weights, atlas=a,
                                iterations=FINAL_E_STEPS, m_steps=False, **common)
            fit.posterior = final.posterior
        progress(0.85, "anomaly map")
        weights = fit.weights[:, None] * (a if priors is not None else 1.0)
        weights = weights / weights.sum(0, keepdims=True)
        expected = fit.means.T @ weights if priors is not None else \
            np.broadcast_to(fit.means[CLASSES.index("WM")][:, None], x.shape)  # (D, N)
        hyper = np.ones(x.shape[1], bool)
        if params["sign"] != "none":
            for i, mod in enumerate(mods):
                if mod == "FLAIR" or (params["sign"] == "flair_t2" and LESION_SIGN.get(mod)):
                    hyper &= x[i] > expected[i]
        if params["score"] == "posterior":
            score = fit.posterior[k]
        else:
            q = np.stack([gaussian_log_density(x, fit.means[c], fit.covs[c])[1] for c in range(k)])
            # soft minimum of the squared distances, weighted by the priors: -2 log sum_k w_k exp(-q_k / 2)
            qmin = q.min(0)
            soft = qmin - 2 * np.log(np.maximum((weights * np.exp(-0.5 * (q - qmin))).sum(0), 1e-30))
            score = np.sqrt(np.maximum(soft, 0))
        out = np.zeros(brain.shape, np.float32)
        out[box] = _scatter(np.where(hyper, score, 0).astype(np.float32), m)
        labels = fit.posterior.argmax(0)
        fractions = {name: round(float((labels == c).mean()), 4) for c, name in enumerate(CLASSES)}
        fractions["outlier"] = round(float((labels == k).mean()), 4)
        info = {"tissue_outlier": {
            "channels": mods, "atlas": priors is not None, "iterations": fit.iterations,
            "class_fractions": fractions,
            "tissue_volumes_ml": {n: round(f * n_brain * float(np.prod(case.spacing)) / 1000, 1)
                                  for n, f in fractions.items()},
            "class_means": {name: {mod: round(float(fit.means[c, i] * scales[mod]), 2) for i, mod in enumerate(mods)}
                            for c, name in enumerate(CLASSES)},
            "tissue_weights": {name: round(float(fit.weights[c]), 4) for c, name in enumerate(CLASSES)}}}
        return MapOutput(out, info)

    def default_threshold(self, work_map, case, params):
        if params["score"] == "mahalanobis":
            return MAHALANOBIS_THRESHOLD, f"default: {MAHALANOBIS_THRESHOLD} SDs from the tissue model"
        return DEFAULT_THRESHOLD, "default: 0.5 = the outlier class explains the voxel better than the tissues"


def _scatter(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.zeros(mask.shape, values.dtype)
    out[mask] = values
    return out


def _kmeans_responsibilities(flair: np.ndarray) -> np.ndarray:
    """Flat-prior start: 1D k-means on FLAIR (StRegA's initialisation), clusters named by FLAIR's
    contrast order (CSF < WM < GM) and returned as hard responsibilities in CSF, GM, WM order."""
    from ..tissue.segment import _kmeans_init

    mu = _kmeans_init(flair)[0]
    nearest = np.abs(flair[None] - np.sort(mu)[:, None]).argmin(0)  # 0 darkest .. 2 brightest
    rank_of_class = (0, 2, 1)  # CSF darkest, GM brightest, WM between
    return np.stack([(nearest == r) for r in rank_of_class]).astype(np.float32)
