"""Voxel-level metrics of the published protocol (Meissen et al.), pooled over a data set.

AUROC and AUPRC are scikit-learn's (`roc_auc_score`, `average_precision_score`) computed from one sorted
pass. Voxels are first collapsed to distinct (score, label) pairs with their counts (sample weights):
the result is the same as over every voxel (ties stay ties), and a 182x218x182 volume whose background
is one value shrinks from 7.2 M samples to the number of distinct brain scores (about 2 M for an
equalised FLAIR). The curves are then written by hand (`ranking_curve`) because scikit-learn validates
and re-sorts those samples about six times per pooled result (4 of 10 s per volume on a loaded machine,
benchmarks/evaluation); tests/test_evaluate.py checks both against scikit-learn to 1e-12.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .level_components import filtered_counts


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two binary arrays; 1.0 when both are empty (nothing to find, nothing found)."""
    pred = np.asarray(pred, bool)
    gt = np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"pred: expected the shape of gt {gt.shape}, received {pred.shape}")
    denom = pred.sum() + gt.sum()
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(pred, gt).sum() / denom)


def dice_from_counts(tp, pred, gt):
    """Dice from voxel counts (arrays broadcast): 2 TP / (predicted + ground truth); 1.0 where both are 0."""
    denom = pred + gt
    return np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), 1.0)


def weighted_samples(score_map: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (score, label) pairs of a volume and how many voxels each stands for.

    The map's minimum (the background of most maps) is counted without sorting it."""
    scores = np.asarray(score_map, np.float32).ravel()
    labels = np.asarray(gt, bool).ravel()
    floor = scores.min() if scores.size else np.float32(0)
    above = np.flatnonzero(scores != floor)  # the brain, usually: the rest is one sample per label
    s_above, y_above = scores[above], labels[above]
    n_true = int(np.count_nonzero(labels))
    n_floor_true = n_true - int(np.count_nonzero(y_above))
    n_floor_of = {True: n_floor_true, False: scores.size - above.size - n_floor_true}
    out_s, out_y, out_w = [], [], []
    for label in (False, True):
        values, counts = np.unique(s_above[y_above == label], return_counts=True)
        n_floor = n_floor_of[label]
        if n_floor:
            values = np.concatenate([[floor], values])
            counts = np.concatenate([[n_floor], counts])
        out_s.append(values.astype(np.float32))
        out_y.append(np.full(values.size, label))
        out_w.append(counts)
    return np.concatenate(out_s), np.concatenate(out_y), np.concatenate(out_w).astype(np.float64)


def merge_samples(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]):
    """Pool weighted samples of several volumes, merging equal (score, label) pairs."""
    if len(parts) == 1:
        return parts[0]
    out_s, out_y, out_w = [], [], []
    for label in (False, True):
        s = np.concatenate([p[0][p[1] == label] for p in parts])
        w = np.concatenate([p[2][p[1] == label] for p in parts])
        values, inverse = np.unique(s, return_inverse=True)
        out_s.append(values)
        out_y.append(np.full(values.size, label))
        out_w.append(np.bincount(inverse.ravel(), weights=w, minlength=values.size))
    return np.concatenate(out_s), np.concatenate(out_y), np.concatenate(out_w)


def ranking_curve(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positives, true positives) above each distinct score, highest score first (weighted):
    scikit-learn's binary classification curve, from one stable sort. Samples may repeat a (score, label) pair
    (several volumes' samples, unmerged): their weights add up in the cumulative sums."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")
    s = np.asarray(scores)[order]
    y = np.asarray(labels, bool)[order]
    w = np.asarray(weights, np.float64)[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # the last sample of each distinct score
    tps = np.cumsum(w * y)[last]
    fps = np.cumsum(w * ~y)[last]
    return fps, tps


def auroc_auprc(fps: np.ndarray, tps: np.ndarray) -> tuple[float, float]:
    """AUROC (trapezoids from (0, 0), as roc_auc_score) and average precision (sum over thresholds of the
    recall step times the precision, as average_precision_score) of a ranking curve."""
    if tps.size == 0 or tps[-1] <= 0:
        return float("nan"), float("nan")
    auprc = float(np.sum(np.diff(np.r_[0.0, tps / tps[-1]]) * (tps / (tps + fps))))
    if fps[-1] <= 0:
        return float("nan"), auprc
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    return float(np.trapz(tpr, fpr)), auprc


@dataclass
class PooledEvaluation:
    """Accumulates cases, then reports pooled upper-bound Dice, AUPRC and AUROC.

    thresholds: the 100 levels evenly spaced between the global minimum and maximum of all maps
    (so they must be known before cases are added: see `evaluate_maps`)."""

    thresholds: np.ndarray
    max_removed_size: int = 20
    connectivity: int = 26
    pred: np.ndarray = field(init=False)
    tp: np.ndarray = field(init=False)
    gt_total: int = field(default=0, init=False)
    samples: list = field(default_factory=list, init=False)
    _ranking: tuple | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.thresholds = np.asarray(self.thresholds, np.float64)
        self.pred = np.zeros(self.thresholds.size, np.int64)
        self.tp = np.zeros(self.thresholds.size, np.int64)

    def _case(self, score_map: np.ndarray, gt: np.ndarray) -> tuple[dict, int, tuple]:
        if not np.isfinite(score_map).all():
            raise ValueError("score_map: expected finite values, received NaN or infinity")
        counts = filtered_counts(score_map, gt, self.thresholds, self.max_removed_size, self.connectivity)
        return counts, int(np.count_nonzero(gt)), weighted_samples(score_map, gt)

    def _accumulate(self, counts: dict, n_gt: int, samples: tuple) -> None:
        self.pred += counts["pred"]
        self.tp += counts["tp"]
        self.gt_total += n_gt
        self.samples.append(samples)
        self._ranking = None
        if len(self.samples) > 8:  # keep memory flat on large data sets
            self.samples = [merge_samples(self.samples)]

    def add(self, score_map: np.ndarray, gt: np.ndarray) -> None:
        self._accumulate(*self._case(score_map, gt))

    def add_many(self, pairs, workers: int | None = None) -> None:
        """add() for every (score_map, gt), the volumes' counts computed in `workers` threads (default: the CPU
        count; the level sweep and NumPy's sorts release the GIL) and accumulated in order: same result as add()
        one by one."""
        from concurrent.futures import ThreadPoolExecutor

        pairs = list(pairs)
        n = min(len(pairs), workers or os.cpu_count() or 1)
        if n <= 1:
            for m, g in pairs:
                self.add(m, g)
            return
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="uad-eval") as pool:
            for part in pool.map(lambda mg: self._case(*mg), pairs):
                self._accumulate(*part)

    def dice_curve(self) -> np.ndarray:
        return dice_from_counts(self.tp, self.pred, self.gt_total)

    def result(self) -> dict:
        curve = self.dice_curve()
        best = int(np.argmax(curve))
        auroc, auprc = auroc_auprc(*self.ranking())
        return {
            "dsc_upper": float(curve[best]),
            "best_threshold": float(self.thresholds[best]),
            "auprc": auprc,
            "auroc": auroc,
            "dice_curve": {"thresholds": self.thresholds.tolist(), "dice": curve.tolist()},
        }

    def ranking(self) -> tuple[np.ndarray, np.ndarray]:
        """The pooled ranking curve (computed once; result() and pr_curve() share it). The volumes' samples are
        ranked as they are, not merged first: ranking_curve adds up equal scores anyway (the counts are whole
        numbers, so the sums are exact), and each volume's samples come sorted, which the stable sort (timsort)
        merges as runs: 0.2 s instead of 1.0 s for six volumes (benchmarks/evaluation/README.md)."""
        if self._ranking is None:
            if len(self.samples) == 1:
                self._ranking = ranking_curve(*self.samples[0])
            else:
                self._ranking = ranking_curve(*(np.concatenate([part[i] for part in self.samples]) for i in range(3)))
        return self._ranking

    def pr_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(precision, recall) as scikit-learn's precision_recall_curve: lowest threshold first, ending at (1, 0)."""
        fps, tps = self.ranking()
        ps = tps + fps
        precision = np.divide(tps, ps, out=np.zeros_like(tps), where=ps != 0)
        recall = tps / tps[-1] if tps.size and tps[-1] > 0 else np.ones_like(tps)
        return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0]


def evaluate_maps(maps: list[np.ndarray], gts: list[np.ndarray], n_thresholds: int = 100,
                  max_removed_size: int = 20, connectivity: int = 26) -> PooledEvaluation:
    """Pooled evaluation of maps already in memory (thresholds from their global range)."""
    if len(maps) != len(gts) or not maps:
        raise ValueError(f"maps, gts: expected equally long non-empty lists, received {len(maps)} and {len(gts)}")
    lo = min(float(np.min(m)) for m in maps)
    hi = max(float(np.max(m)) for m in maps)
    ev = PooledEvaluation(np.linspace(lo, hi, n_thresholds), max_removed_size, connectivity)
    for m, g in zip(maps, gts):
        ev.add(m, g)
    return ev
