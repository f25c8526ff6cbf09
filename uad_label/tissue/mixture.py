"""EM for a Gaussian mixture over brain voxels with a mean-field Potts MRF, optional spatial (atlas)
priors and an optional outlier class: the one EM + MRF of uad_label (StRegA's tissue segmentation
and the tissue_outlier detector both call it).

The model is FSL FAST's hidden MRF-EM (Zhang et al. 2001) generalised as in Van Leemput et al.
(2001): D co-registered channels with a full covariance per class, class priors
``pi_k * atlas_k(x)`` (SPM's tissue weights), and a uniform "outlier" class with a fixed prior that
takes what no tissue explains, so lesions do not bias the tissue estimates (robust M-step). The
MRF enters every E-step as ``beta * sum of the 6 neighbours' current posteriors`` per class.
scikit-learn's GaussianMixture has neither spatial priors nor an MRF, hence this small loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOG_2PI = float(np.log(2 * np.pi))


def neighbour_sum(p: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Sum of the 6-neighbours of every voxel for each class, p of shape (K, X, Y, Z) (zero padded).
    ``out``: an array of p's shape and dtype to write into (reused across E-steps: no new allocation)."""
    if out is None:
        out = np.zeros_like(p)
    else:
        out.fill(0)
    for axis in (1, 2, 3):
        sl_a = [slice(None)] * 4
        sl_b = [slice(None)] * 4
        sl_a[axis], sl_b[axis] = slice(1, None), slice(None, -1)
        out[tuple(sl_a)] += p[tuple(sl_b)]
        out[tuple(sl_b)] += p[tuple(sl_a)]
    return out


@dataclass
class MixtureFit:
    means: np.ndarray  # (K, D)
    covs: np.ndarray  # (K, D, D)
    weights: np.ndarray  # (K,) tissue weights pi
    posterior: np.ndarray  # (K (+1 outlier), N) float32, over the mask's voxels in C order
    log_lik: np.ndarray  # (K, N) Gaussian log-densities of the last E-step
    iterations: int


def gaussian_log_density(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log N(x | mean, cov), squared Mahalanobis distance), x of shape (D, N); D is 1-3, so the
    quadratic form is written out instead of building an (N, D) matrix product."""
    d = x.shape[0]
    prec = np.linalg.inv(cov).astype(np.float32)
    r = [x[i] - np.float32(mean[i]) for i in range(d)]
    q = prec[0, 0] * r[0] * r[0]
    for i in range(d):
        for j in range(i, d):
            if i == j == 0:
                continue
            q += (prec[i, j] * (1 if i == j else 2)) * r[i] * r[j]
    _, logdet = np.linalg.slogdet(cov)
    return (-0.5 * q - np.float32(0.5 * (logdet + d * LOG_2PI))), q


def _m_step(x, p, min_var):
    w = p.sum(1) + 1e-8
    mu = (p @ x.T) / w[:, None]  # (K, D)
    k, d = mu.shape
    cov = np.empty((k, d, d))
    for c in range(k):
        r = x - mu[c][:, None].astype(np.float32)
        cov[c] = (r * p[c]) @ r.T / w[c]
        diag = np.diag_indices(d)
        cov[c][diag] = np.maximum(cov[c][diag], min_var)  # FAST's floor on the standard deviation
    return mu, cov, w


def fit_mixture(x: np.ndarray, mask: np.ndarray, *, means=None, covs=None, weights=None,
                responsibilities: np.ndarray | None = None, atlas: np.ndarray | None = None,
                beta: float = 0.5, iterations: int = 10, tol: float = 1e-3, outlier_prior: float = 0.0,
                outlier_density: float = 1.0, min_var: float = 1e-6, m_steps: bool = True) -> MixtureFit:
    """Fit the mixture to the voxels of `mask` (a box-shaped bool array; x is (D, N) over its True
    voxels in C order). Start either from parameters (means (K, D), covs (K, D, D), weights (K,);
    first step an E-step) or from `responsibilities` (K, N) (first step an M-step). atlas: (K, N)
    spatial priors (rows need not sum to one). outlier_prior > 0 adds a class of constant density
    `outlier_density` (posterior row K). Stops when no mean moves by more than `tol`. m_steps=False
    keeps the given parameters and only iterates the E-step (the MRF's mean-field updates)."""
    x = np.asarray(x, np.float32)
    n = x.shape[1]
    flat = np.flatnonzero(mask)
    if flat.size != n:
        raise ValueError(f"x: expected {flat.size} columns (the mask's voxels), received {n}")
    log_atlas = None if atlas is None else np.log(np.maximum(atlas, 1e-6)).astype(np.float32)
    if responsibilities is not None:
        mu, cov, w = _m_step(x, np.asarray(responsibilities, np.float32), min_var)
        pi = w / w.sum()
    else:
        mu, cov, pi = np.asarray(means, float), np.asarray(covs, float), np.asarray(weights, float)
    k = mu.shape[0]
    n_cls = k + (1 if outlier_prior > 0 else 0)
    box = np.zeros((n_cls, mask.size), np.float32)
    nsum = None if beta <= 0 else np.empty((n_cls, *mask.shape), np.float32)
    post = None
    ll = None
    it = 0
    for it in range(1, iterations + 1):
        # E-step: Gaussian log-likelihood + log prior + MRF term from the neighbours' current posteriors
        logp = np.empty((n_cls, n), np.float32)
        ll = np.empty((k, n), np.float32)
        tissue_share = np.log1p(-outlier_prior) if outlier_prior > 0 else 0.0
        for c in range(k):
            ll[c] = gaussian_log_density(x, mu[c], cov[c])[0]
            logp[c] = ll[c] + np.float32(np.log(pi[c]) + tissue_share)
            if log_atlas is not None:
                logp[c] += log_atlas[c]
        if outlier_prior > 0:
            logp[k] = np.float32(np.log(outlier_prior) + np.log(outlier_density))
        if post is not None and beta > 0:
            box[:, flat] = post
            nb = neighbour_sum(box.reshape(n_cls, *mask.shape), out=nsum).reshape(n_cls, -1)[:, flat]
            logp += np.float32(beta) * nb
        logp -= logp.max(0, keepdims=True)
        p = np.exp(logp)
        p /= p.sum(0, keepdims=True)
        if not m_steps:
            post = p
            continue
        # M-step (tissue classes only: the outlier class has no parameters)
        new_mu, cov, w = _m_step(x, p[:k], min_var)
        if atlas is None:
            pi = w / w.sum()
        else:  # SPM's tissue-weight update: the priors pi_k * atlas_k are normalised per voxel
            denom = (atlas / np.maximum((pi[:, None] * atlas).sum(0, keepdims=True), 1e-12)).sum(1)
            pi = w / np.maximum(denom, 1e-12)
            pi = pi / pi.sum()
        shift = float(np.abs(new_mu - mu).max())
        mu, post = new_mu, p
        if shift < tol:
            break
    return MixtureFit(mu, cov, pi, post, ll, it)
