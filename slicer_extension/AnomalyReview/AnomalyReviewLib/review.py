"""Review state of one case: live re-thresholding of the float map, findings, accept / reject
decisions, the per-slice score chart and the final label. numpy only; no Slicer.

Decisions are attached to a finding's peak voxel (where its score is maximal), so they survive a
change of threshold or minimum size: after re-thresholding, a finding takes the decision of the
decided peaks it contains (conflicting decisions -> pending, to be decided again).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from . import components as comp
from .nifti import NiftiImage

PENDING, ACCEPTED, REJECTED = "pending", "accepted", "rejected"
STATES = (PENDING, ACCEPTED, REJECTED)


class Review:
    def __init__(self, anomaly_map: NiftiImage, info: Optional[dict] = None, brain: Optional[np.ndarray] = None,
                 use_scipy: Optional[bool] = None):
        """`anomaly_map`: the float map in the scan's grid; `info`: the server's JSON (threshold,
        min_component_mm3, connectivity); `brain`: voxels the slice scores count as tissue (the server's
        `brain` part; without one, map > 0, which the detectors' maps satisfy inside the brain)."""
        self.map = anomaly_map
        self.scores = np.asarray(anomaly_map.array, np.float32)
        if self.scores.ndim != 3:
            raise ValueError(f"anomaly map: expected a 3D volume, received shape {self.scores.shape}")
        self.info = dict(info or {})
        self.brain = (self.scores > 0) if brain is None else np.asarray(brain, bool)
        self.voxel_volume_mm3 = anomaly_map.voxel_volume_mm3
        self.connectivity = int(self.info.get("connectivity", 26))
        self.use_scipy = use_scipy
        finite = self.scores[np.isfinite(self.scores)]
        self.range = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        t = self.info.get("threshold")
        self.default_threshold = float(t) if t is not None else float(np.quantile(finite, 0.99)) if finite.size else 0.5
        self.default_min_component_mm3 = float(self.info.get("min_component_mm3", 20.0))
        self.axis = int((self.info.get("slice_scores") or {}).get("axis", comp.superior_axis(anomaly_map.affine)))
        self._decisions: list[tuple[tuple[int, int, int], str]] = []  # (peak voxel, state)
        self.threshold = self.default_threshold
        self.min_component_mm3 = self.default_min_component_mm3
        self.findings: list[dict] = []
        self.labels = np.zeros(self.scores.shape, np.int32)
        self.rethreshold()

    # ------------------------------------------------------------------ thresholding
    def rethreshold(self, threshold: Optional[float] = None, min_component_mm3: Optional[float] = None) -> list[dict]:
        """Threshold the float map again (the slider); findings and states follow."""
        if threshold is not None:
            self.threshold = float(threshold)
        if min_component_mm3 is not None:
            if min_component_mm3 < 0:
                raise ValueError(f"min_component_mm3: expected >= 0, received {min_component_mm3}")
            self.min_component_mm3 = float(min_component_mm3)
        mask = comp.threshold_mask(self.scores, self.threshold, self.min_component_mm3, self.voxel_volume_mm3,
                                   self.connectivity, None, self.use_scipy)
        rows, self.labels = comp.component_table(mask, self.scores, self.voxel_volume_mm3, self.map.index_to_ras,
                                                 self.connectivity, self.use_scipy)
        self.findings = rows
        self._refresh_states()
        return self.findings

    @property
    def mask(self) -> np.ndarray:
        return self.labels > 0

    def reset(self) -> list[dict]:
        """Back to the server's threshold and minimum size (decisions kept)."""
        return self.rethreshold(self.default_threshold, self.default_min_component_mm3)

    def slider_range(self, steps: int = 1000) -> tuple[float, float, float]:
        """(minimum, maximum, step) for a threshold slider over the map's values."""
        lo, hi = self.range
        if hi <= lo:
            hi = lo + 1.0
        return lo, hi, (hi - lo) / steps

    # ------------------------------------------------------------------ findings and decisions
    def finding(self, finding_id: int) -> dict:
        for f in self.findings:
            if f["id"] == finding_id:
                return f
        raise KeyError(f"finding {finding_id}: no such finding at threshold {self.threshold:g} "
                       f"(ids 1..{len(self.findings)})")

    def _refresh_states(self) -> None:
        for f in self.findings:
            f["state"] = PENDING
        if not self.findings:
            return
        seen: dict[int, set] = {}
        for peak, state in self._decisions:
            fid = int(self.labels[peak])
            if fid:
                seen.setdefault(fid, set()).add(state)
        for f in self.findings:
            states = seen.get(f["id"], set())
            f["state"] = states.pop() if len(states) == 1 else PENDING

    def decide(self, finding_id: int, state: str) -> dict:
        if state not in STATES:
            raise ValueError(f"state: expected one of {list(STATES)}, received {state!r}")
        f = self.finding(finding_id)
        self._decisions = [(p, s) for p, s in self._decisions if int(self.labels[p]) != finding_id]
        if state != PENDING:
            self._decisions.append((tuple(int(x) for x in f["peak_index"]), state))
        f["state"] = state
        return f

    def decisions(self) -> list:
        """The decisions as JSON-able [[i, j, k], state] pairs (the Slicer module keeps them in its
        parameter node, so a saved scene restores the review)."""
        return [[list(peak), state] for peak, state in self._decisions]

    def restore_decisions(self, decisions) -> list[dict]:
        """Put back decisions saved by `decisions()`; findings take their states again."""
        out = []
        for item in decisions or []:
            peak, state = item
            if state not in (ACCEPTED, REJECTED):
                raise ValueError(f"decision state: expected {ACCEPTED!r} or {REJECTED!r}, received {state!r}")
            peak = tuple(int(x) for x in peak)
            if len(peak) != 3 or not all(0 <= a < n for a, n in zip(peak, self.labels.shape)):
                raise ValueError(f"decision voxel: expected an (i, j, k) index inside {self.labels.shape}, "
                                 f"received {item[0]!r}")
            out.append((peak, state))
        self._decisions = out
        self._refresh_states()
        return self.findings

    def accept(self, finding_id: int) -> dict:
        return self.decide(finding_id, ACCEPTED)

    def reject(self, finding_id: int) -> dict:
        return self.decide(finding_id, REJECTED)

    def state(self, finding_id: int) -> str:
        return self.finding(finding_id)["state"]

    def counts(self) -> dict:
        out = {s: 0 for s in STATES}
        for f in self.findings:
            out[f["state"]] += 1
        return out

    def finding_mask(self, finding_id: int) -> np.ndarray:
        self.finding(finding_id)
        return self.labels == finding_id

    def accepted_mask(self) -> np.ndarray:
        ids = [f["id"] for f in self.findings if f["state"] == ACCEPTED]
        return np.isin(self.labels, ids) if ids else np.zeros(self.labels.shape, bool)

    def finding_at(self, index_ijk) -> int:
        """The finding containing a voxel (0 if none): clicking in a view selects a row."""
        i, j, k = (int(round(float(x))) for x in index_ijk)
        if not all(0 <= a < n for a, n in zip((i, j, k), self.labels.shape)):
            return 0
        return int(self.labels[i, j, k])

    # ------------------------------------------------------------------ label assembly
    def apply_decision(self, label: np.ndarray, finding_id: int, accepted: bool, value: int = 1) -> np.ndarray:
        """The segmentation after accepting (voxels of the finding added) or un-accepting / rejecting
        (its voxels removed) one finding, keeping whatever else the annotator painted."""
        label = np.array(label, np.uint8, copy=True)
        if label.shape != self.labels.shape:
            raise ValueError(f"label: expected shape {self.labels.shape}, received {label.shape}")
        fm = self.finding_mask(finding_id)
        label[fm] = value if accepted else 0
        return label

    def label_array(self, edited: Optional[np.ndarray] = None, value: int = 1) -> np.ndarray:
        """uint8 final label: the annotator's edited segmentation when given (it already holds the
        accepted findings as edited), else the accepted findings."""
        if edited is not None:
            edited = np.asarray(edited)
            if edited.shape != self.labels.shape:
                raise ValueError(f"edited label: expected shape {self.labels.shape} (the scan's grid), "
                                 f"received {edited.shape}")
            return np.where(edited > 0, value, 0).astype(np.uint8)
        return np.where(self.accepted_mask(), value, 0).astype(np.uint8)

    def final_label(self, edited: Optional[np.ndarray] = None, value: int = 1) -> NiftiImage:
        """The final label as a NIfTI image in the scan's geometry (the map's)."""
        return self.map.with_array(self.label_array(edited, value))

    def summary(self) -> dict:
        """What goes along with the saved label (label info in the datastore)."""
        return {
            "detector": self.info.get("detector"),
            "threshold": self.threshold,
            "server_threshold": self.default_threshold,
            "min_component_mm3": self.min_component_mm3,
            "findings": [{k: f[k] for k in ("id", "state", "voxels", "volume_ml", "max_score", "centroid_ras")}
                         for f in self.findings],
            "counts": self.counts(),
        }

    # ------------------------------------------------------------------ per-slice scores
    def slice_scores(self) -> np.ndarray:
        """Oliinyk et al.'s per-slice score at the current threshold, along the superior axis."""
        return comp.slice_scores(self.scores, self.mask, self.brain, self.axis)

    def slice_positions_ras(self) -> np.ndarray:
        return self.map.index_to_ras(comp.slice_centres(self.scores.shape, self.axis))

    def slice_jump_point(self, slice_index: int) -> np.ndarray:
        """RAS point to jump the views to for a clicked chart point: the slice's centre, or the
        strongest flagged voxel of that slice when it has one."""
        n = self.scores.shape[self.axis]
        if not 0 <= slice_index < n:
            raise IndexError(f"slice {slice_index}: expected 0..{n - 1}")
        sl = [slice(None)] * 3
        sl[self.axis] = slice_index
        flagged = self.mask[tuple(sl)]
        centre = comp.slice_centres(self.scores.shape, self.axis)[slice_index]
        if flagged.any():
            scores = np.where(flagged, self.scores[tuple(sl)], -np.inf)
            idx = list(np.unravel_index(int(np.argmax(scores)), scores.shape))
            idx.insert(self.axis, slice_index)
            centre = np.asarray(idx, np.float64)
        return self.map.index_to_ras(centre)[0]


def slicer_to_ijk(array_kji: np.ndarray) -> np.ndarray:
    """slicer.util.arrayFromVolume gives (k, j, i); the library works in (i, j, k)."""
    return np.asarray(array_kji).transpose(2, 1, 0)


def ijk_to_slicer(array_ijk: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(array_ijk).transpose(2, 1, 0))


def same_grid(a: NiftiImage, affine, shape, tol: float = 1e-3) -> bool:
    """Whether a volume (IJK-to-RAS matrix, shape (i, j, k)) shares the map's grid."""
    return tuple(a.shape[:3]) == tuple(shape[:3]) and np.allclose(np.asarray(a.affine), np.asarray(affine), atol=tol)
