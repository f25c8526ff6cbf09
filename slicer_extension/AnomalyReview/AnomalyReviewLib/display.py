"""What the Slicer module shows and what its controls allow, decided without Slicer (tested outside it).

The module-side code (slicer_scene.py) applies these choices to MRML nodes; keeping them here means
the colour tables, slider ranges and segment names are checked by plain pytest.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

# Built-in colour nodes of Slicer's colour logic (vtkMRMLColorLogic default file nodes). Inferno for
# the anomaly map (dark = normal, bright = abnormal, perceptually uniform); Viridis for uncertainty,
# so the two maps of the segmenter cannot be mistaken for each other.
# A fusion's member maps (quantiles in [0, 1]) get Plasma: perceptually uniform too, and unlike Inferno
# it has no black end, so a member map shown in place of the fused map is not taken for it.
MAP_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileInferno.txt"
UNCERTAINTY_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileViridis.txt"
MEMBER_COLOR_NODE_ID = "vtkMRMLColorTableNodeFilePlasma.txt"
EXTRA_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileColdToHotRainbow.txt"
MEMBER_PREFIX = "member_"
BRAIN_PART = "brain"  # the server's brain mask: feeds the slice scores, is no map to show

OUTPUT_ATTRIBUTE = "AnomalyReview.Output"  # node attribute marking the module's own outputs
EXTRA_ATTRIBUTE = "AnomalyReview.ExtraMap"  # node attribute: which extra map of the result a volume holds
REVIEW_SEGMENT_NAME = "anomaly"
REVIEW_SEGMENT_COLOR = (0.1, 0.9, 0.2)
DEFAULT_MIN_SIZE_MAX = 500.0


def color_node_for(part: str) -> str:
    """Colour table of a result part: 'image' (the anomaly map), 'uncertainty', or any extra map."""
    if part == "image":
        return MAP_COLOR_NODE_ID
    if part == "uncertainty":
        return UNCERTAINTY_COLOR_NODE_ID
    if part.startswith(MEMBER_PREFIX):
        return MEMBER_COLOR_NODE_ID
    return EXTRA_COLOR_NODE_ID


def extra_map_names(extras) -> list[str]:
    """The extra maps of a result the annotator can choose, in the server's order: every extra but the
    brain mask (member_<name> of a fusion, the segmenter's uncertainty, ...)."""
    return [name for name in extras if name != BRAIN_PART]


def extra_window(array) -> tuple[float, float]:
    """Window of an extra map: 0-1 (member quantiles, uncertainty, probabilities), widened to the map's
    finite values when they leave [0, 1], so no value is clipped."""
    a = np.asarray(array, np.float64)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return 0.0, 1.0
    return min(0.0, float(finite.min())), max(1.0, float(finite.max()))


def _number(v) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def result_summary(info: dict) -> str:
    """What the results area says about the server's choices: where the default threshold came from
    (`threshold_source`) and, for a fusion, its members, rule, weights and where the weights came from."""
    lines = []
    if info.get("threshold") is not None or info.get("threshold_source"):
        t = info.get("threshold")
        lines.append(f"server threshold {_number(t) if t is not None else '?'}: "
                     f"{info.get('threshold_source') or 'source not given'}")
    fusion = info.get("fusion")
    if isinstance(fusion, dict):
        members = list(fusion.get("members") or [])
        weights = fusion.get("weights")
        if isinstance(weights, (list, tuple)) and len(weights) == len(members):
            parts = [f"{m} {_number(w)}" for m, w in zip(members, weights)]
        else:
            parts = members + ([f"weights {weights}"] if weights is not None else [])
        intercept = fusion.get("intercept")
        extra = f", intercept {_number(intercept)}" if fusion.get("rule") == "logistic" and intercept else ""
        lines.append(f"fusion ({fusion.get('rule', '?')}): {', '.join(parts)}{extra}; "
                     f"weights: {fusion.get('weights_source') or 'source not given'}")
    return "\n".join(lines)


def min_size_range(params: Optional[dict], current: Optional[float] = None) -> tuple[float, float, float]:
    """(minimum, maximum, step) of the min-size slider from the server's declaration of
    `min_component_mm3` (/info params: default, minimum, maximum). Without a declared maximum the
    slider reaches well past the default and the current value, so no server value is clamped."""
    spec = (params or {}).get("min_component_mm3") or {}
    lo = float(spec.get("minimum", 0.0) or 0.0)
    hi = spec.get("maximum")
    if hi is None:
        candidates = [DEFAULT_MIN_SIZE_MAX]
        for v in (spec.get("default"), current):
            if v is not None:
                candidates.append(10.0 * float(v))
        hi = max(candidates)
    hi = float(hi)
    if current is not None and float(current) > hi:
        raise ValueError(f"min_component_mm3: the server sent {current}, above its own maximum {hi}")
    return lo, hi, 1.0


def label_names(labels) -> dict[int, str]:
    """Label value -> name from a model's /info `labels` (MONAI Label sends a list, where the
    first name is value 1, or a {name: value} dict)."""
    if isinstance(labels, dict):
        return {int(v): str(k) for k, v in labels.items()}
    if isinstance(labels, (list, tuple)):
        return {i + 1: str(name) for i, name in enumerate(labels)}
    return {}


def segment_name(value: int, names: dict[int, str]) -> str:
    return names.get(int(value), f"label {int(value)}")


def label_values(mask: np.ndarray) -> list[int]:
    """The non-zero values of a label array, ascending (one segment each)."""
    return [int(v) for v in np.unique(np.asarray(mask)) if v > 0]


def union_label(arrays, shape) -> np.ndarray:
    """The saved label: the union (value 1) of every segment of the review segmentation."""
    out = np.zeros(tuple(shape), np.uint8)
    for a in arrays:
        if a is None:
            continue
        a = np.asarray(a)
        if a.shape != out.shape:
            raise ValueError(f"segment: expected shape {out.shape} (the map's grid), received {a.shape}")
        out[a > 0] = 1
    return out


def chart_point(ids_per_series) -> Optional[int]:
    """The slice index of a chart click: the first selected point of the first series."""
    for ids in ids_per_series:
        for i in ids:
            return int(i)
    return None
