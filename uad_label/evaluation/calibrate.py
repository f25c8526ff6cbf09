"""`uad calibrate` and the calibrate train task: a detector's default threshold (and the fusion's
weights or logistic coefficients) chosen on this installation's approved labels.

Cases: every case of a folder with a final label (a MONAI Label datastore's labels/final/<image id>.*)
or else a ground truth (GT file, ground_truth/<case>.*). Each case runs once through the detector exactly as
a request would (its detect(): preprocessing, map in the native grid, no threshold yet); the component
filter's confusion counts are taken at every candidate threshold (uad_label.evaluation.level_components).
The choice maximises the pooled Dice (2 sum TP / (sum predicted + sum labelled)) over cases, with the filter
of the request's min_component_mm3 and connectivity applied after thresholding, as inference does.
Cross-validation over cases (round-robin folds) chooses on the other folds and scores the held-out one, next
to the threshold that was in force before (the detector's fixed default, or the previous card): the card
records both. The final values are chosen on all cases. The card is written atomically beside the weights
(uad_label.detectors.calibration_card reads it).
"""
from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..detectors import get_detector
from ..detectors.calibration_card import CARD_KIND, CARD_VERSION, card_path, check_card, map_params
from ..errors import InputError
from .level_components import filtered_counts
from .metrics import dice_from_counts

MIN_CASES = 4  # cross-validation needs cases to choose on and a held-out case per fold
N_FOLDS = 5
# candidate thresholds: the pooled in-brain map values at these upper quantiles (1e-4 .. 1/2 of the brain
# flagged): one grid for any map scale, dense where lesions sit (the top percent)
FLAGGED_FRACTIONS = (1e-4, 0.5)
LOGISTIC_NEGATIVES = 20  # non-lesion voxels sampled per lesion voxel to fit the logistic rule
WEIGHT_STEPS = {2: 10, 3: 4, 4: 2}  # simplex grid of the fusion's weights: step 1/n for 2, 3, 4 members


@dataclass
class CaseData:
    case_id: str
    label_kind: str
    label: str
    gt: np.ndarray  # bool, cropped to the brain's box
    brain: np.ndarray
    max_removed: int  # component filter in voxels of this case's grid
    maps: dict[str, np.ndarray]  # "map" (the detector's), or fusion member quantiles
    baseline: dict = field(default_factory=dict)  # counts at the threshold in force before
    gt_total: int = 0
    box: tuple = ()  # where the cropped arrays sit in the native (x, y, z) volume
    shape: tuple = ()

    def uncropped(self, array: np.ndarray) -> np.ndarray:
        out = np.zeros(self.shape, array.dtype)
        out[self.box] = array
        return out


def labelled_cases(data: str | Path) -> list[dict]:
    """{"id", "images", "label", "kind"} of every case under `data` with a final label or a ground truth."""
    from ..cases import final_label, find_cases

    root = Path(data)
    out = []
    for case in find_cases(root):
        label = final_label(root, case.case_id, case.images)
        if label is not None:
            out.append({"id": case.case_id, "images": case.images, "label": label, "kind": "final label"})
        elif case.gt is not None:
            out.append({"id": case.case_id, "images": case.images, "label": case.gt, "kind": "ground truth"})
    return out


def _is_template_datastore(root: Path) -> bool:
    manifest = root / "manifest.json"
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("geometry") == "template"
    except (OSError, ValueError):
        return False


def _load_case(det, entry: dict, params) -> CaseData:
    from ..io import load_image
    from ..preprocess.geometry import image_to_xyz
    from ..results import voxel_volume_mm3

    run = params
    if det.name == "fusion" and params["rule"] == "logistic":
        try:
            det.resolve_weights(params)
        except InputError:  # no coefficients yet: the members' maps (and the baseline) from the mean rule
            run = det.validate({**params, "rule": "mean"})
    result = det.detect(entry["images"], run, progress=lambda f, m: None)
    gt_img = load_image(entry["label"])
    gt = image_to_xyz(gt_img) > 0.5
    brain = image_to_xyz(result.brain) > 0
    score = image_to_xyz(result.anomaly_map)
    if gt.shape != score.shape:
        raise InputError(f"case {entry['id']}: label {entry['label']} has shape {gt.shape}, the map of its "
                         f"FLAIR {score.shape}: the label must be in the FLAIR's grid")
    if det.name == "fusion":
        maps = {k: image_to_xyz(v) for k, v in result.extras.items() if k.startswith("member_")}
    else:
        maps = {"map": score}
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in np.nonzero(brain | gt))
    vv = voxel_volume_mm3(result.anomaly_map)
    data = CaseData(entry["id"], entry["kind"], str(entry["label"]), gt[box], brain[box],
                    int(np.floor(params["min_component_mm3"] / vv + 1e-9)),
                    {k: np.ascontiguousarray(v[box], np.float32) for k, v in maps.items()})
    data.gt_total, data.box, data.shape = int(data.gt.sum()), box, gt.shape
    t = float(result.info["threshold"])
    counts = filtered_counts(np.ascontiguousarray(score[box]), data.gt, np.array([t]), data.max_removed,
                             params["connectivity"])
    data.baseline = {"threshold": t, "source": result.info["threshold_source"],
                     "pred": int(counts["pred"][0]), "tp": int(counts["tp"][0])}
    return data


def _grid(maps: list[np.ndarray], brains: list[np.ndarray], n: int) -> np.ndarray:
    values = np.concatenate([m[b] for m, b in zip(maps, brains)])
    if values.size > 2_000_000:  # the grid's quantiles need no more samples (deterministic stride)
        values = values[:: values.size // 2_000_000 + 1]
    lo, hi = FLAGGED_FRACTIONS
    levels = 1 - np.geomspace(hi, lo, n)
    return np.unique(np.quantile(values, levels).astype(np.float64))


@dataclass
class Candidate:
    """One map-making choice (the detector's map, or fusion weights): counts per case at each threshold."""

    weights: list[float] | None
    intercept: float
    thresholds: np.ndarray
    pred: np.ndarray  # (cases, thresholds)
    tp: np.ndarray

    def best(self, idx, gt_totals) -> tuple[int, float]:
        curve = dice_from_counts(self.tp[idx].sum(0), self.pred[idx].sum(0), gt_totals[idx].sum())
        j = int(np.argmax(curve))
        return j, float(curve[j])


def _candidate(cases, maker, weights, intercept, n_thresholds, connectivity) -> Candidate:
    fused = [maker(c) for c in cases]
    th = _grid(fused, [c.brain for c in cases], n_thresholds)
    pred = np.zeros((len(cases), th.size), np.int64)
    tp = np.zeros_like(pred)
    for i, (c, m) in enumerate(zip(cases, fused)):
        counts = filtered_counts(m, c.gt, th, c.max_removed, connectivity)
        pred[i], tp[i] = counts["pred"], counts["tp"]
    return Candidate(weights, intercept, th, pred, tp)


def weight_grid(k: int) -> list[list[float]]:
    """Weights on the simplex in steps of 1/WEIGHT_STEPS[k] (equal weights always among them)."""
    steps = WEIGHT_STEPS.get(k, 1)
    grid = [list(np.array(w) / steps) for w in itertools.product(range(steps + 1), repeat=k) if sum(w) == steps]
    equal = [1.0 / k] * k
    if not any(np.allclose(g, equal) for g in grid):
        grid.append(equal)
    return [[round(float(x), 6) for x in g] for g in grid]


def _fit_logistic(cases, names, seed=0) -> tuple[list[float], float]:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c in cases:
        inside = c.brain | c.gt
        feats = np.stack([_logit(c.maps[f"member_{n}"][inside]) for n in names], 1)
        y = c.gt[inside]
        neg = np.flatnonzero(~y)
        keep = np.concatenate([np.flatnonzero(y), rng.choice(neg, min(neg.size, max(LOGISTIC_NEGATIVES * int(y.sum()),
                                                                                     1000)), replace=False)])
        xs.append(feats[keep])
        ys.append(y[keep])
    y = np.concatenate(ys)
    if y.all() or not y.any():
        raise InputError("calibrate fusion: the logistic rule needs labelled lesion and non-lesion voxels")
    model = LogisticRegression(max_iter=500).fit(np.concatenate(xs), y)
    return [round(float(w), 6) for w in model.coef_[0]], round(float(model.intercept_[0]), 6)


def _logit(q):
    q = np.clip(q, 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


def _candidates(det, cases, params, idx, n_thresholds) -> list[Candidate]:
    """The map-making choices to consider when choosing on cases[idx]."""
    conn = params["connectivity"]
    if det.name != "fusion":
        return [_candidate(cases, lambda c: c.maps["map"], None, 0.0, n_thresholds, conn)]
    from ..detectors.fusion import combine

    names = params["members"].split(",")
    rule = params["rule"]

    def maker(w, b):
        return lambda c: combine([c.maps[f"member_{n}"] for n in names], w, rule, b) * c.brain

    if params["weights"] is not None:  # the request fixed the weights: only the threshold is calibrated
        options = [(list(params["weights"]), float(params["intercept"] or 0.0))]
    elif rule == "logistic":
        options = [_fit_logistic([cases[i] for i in idx], names)]
    else:
        options = [(w, 0.0) for w in weight_grid(len(names))]
    return [_candidate(cases, maker(w, b), w, b, n_thresholds, conn) for w, b in options]


def _choose(det, cases, params, idx, n_thresholds, cache):
    """(candidate, threshold index, pooled Dice on cases[idx]) maximising the pooled Dice on cases[idx]."""
    gt_totals = np.array([c.gt_total for c in cases])
    key = tuple(idx) if params.get("rule") == "logistic" and params.get("weights") is None else "all"
    if key not in cache:  # the same candidates serve every fold unless they are fitted on the fold
        cache[key] = _candidates(det, cases, params, idx, n_thresholds)
    best = None
    for cand in cache[key]:
        j, d = cand.best(np.asarray(idx), gt_totals)
        if best is None or d > best[2] + 1e-12:
            best = (cand, j, d)
    return best


def prepare(detector: str, data: str | Path, params: dict | None = None, min_cases: int = MIN_CASES,
            progress: bool = True) -> tuple:
    """(detector, validated params, cases): every labelled case of `data` run once through the detector."""
    from tqdm import tqdm

    det = get_detector(detector)
    root = Path(data)
    given = dict(params or {})
    if given.get("threshold") is not None:
        raise InputError("parameter 'threshold': calibration chooses the threshold; do not give one")
    if "preprocessed" not in given and _is_template_datastore(root):
        given["preprocessed"] = True  # a datastore `uad sample-data --geometry template` wrote
    p = det.validate(given)
    entries = labelled_cases(root)
    if len(entries) < min_cases:
        raise InputError(f"calibrate {detector}: needs at least {min_cases} labelled cases (final labels in "
                         f"labels/final or ground truth), found {len(entries)} in {root}; label "
                         f"{min_cases - len(entries)} more")
    bar = tqdm(entries, desc=f"calibrate {detector}", unit="case", disable=not progress)
    return det, p, [_load_case(det, e, p) for e in bar]


def cross_validate(det, cases: list[CaseData], p, folds: int = N_FOLDS, n_thresholds: int = 100) -> dict:
    """Round-robin folds over cases: choose on the others, score the held-out fold (and the threshold in
    force before); then the choice on all cases."""
    if folds < 2:
        raise InputError(f"folds: expected at least 2, received {folds}")
    k = min(folds, len(cases))
    fold_of = [i % k for i in range(len(cases))]
    gt_totals = np.array([c.gt_total for c in cases])
    cache: dict = {}
    rows, held = [], {"tp": 0, "pred": 0, "gt": 0, "tp0": 0, "pred0": 0}
    for f in range(k):
        train = [i for i in range(len(cases)) if fold_of[i] != f]
        test = [i for i in range(len(cases)) if fold_of[i] == f]
        cand, j, d_train = _choose(det, cases, p, train, n_thresholds, cache)
        tp, pred, gt = int(cand.tp[test, j].sum()), int(cand.pred[test, j].sum()), int(gt_totals[test].sum())
        tp0 = sum(cases[i].baseline["tp"] for i in test)
        pred0 = sum(cases[i].baseline["pred"] for i in test)
        for key, v in (("tp", tp), ("pred", pred), ("gt", gt), ("tp0", tp0), ("pred0", pred0)):
            held[key] += v
        rows.append({"held_out": [cases[i].case_id for i in test], "threshold": float(cand.thresholds[j]),
                     "weights": cand.weights, "intercept": cand.intercept if cand.weights else None,
                     "dice_train": round(d_train, 4),
                     "dice_held_out": round(float(dice_from_counts(tp, pred, gt)), 4),
                     "dice_held_out_default": round(float(dice_from_counts(tp0, pred0, gt)), 4)})
    cand, j, d_all = _choose(det, cases, p, list(range(len(cases))), n_thresholds, cache)
    return {"folds": rows, "fold_of": fold_of, "final": (cand, j, d_all),
            "dice_cv": {"calibrated": round(float(dice_from_counts(held["tp"], held["pred"], held["gt"])), 4),
                        "default": round(float(dice_from_counts(held["tp0"], held["pred0"], held["gt"])), 4),
                        "pooled_over": "held-out cases of every fold"}}


def calibrate(detector: str, data: str | Path, params: dict | None = None, folds: int = N_FOLDS,
              min_cases: int = MIN_CASES, out_dir: str | Path | None = None, n_thresholds: int = 100,
              progress: bool = True, write: bool = True) -> dict:
    """Calibrate `detector` on the labelled cases of `data`; returns the card (written unless write=False)."""
    t0 = time.perf_counter()
    if folds < 2:
        raise InputError(f"folds: expected at least 2, received {folds}")
    det, p, cases = prepare(detector, data, params, min_cases, progress)
    cv = cross_validate(det, cases, p, folds, n_thresholds)
    cand, j, d_all = cv["final"]
    card = {
        "kind": CARD_KIND, "version": CARD_VERSION, "detector": detector,
        "threshold": float(cand.thresholds[j]),
        "map_params": json.loads(json.dumps(map_params(det, p), default=str)),
        "min_component_mm3": p["min_component_mm3"], "connectivity": p["connectivity"],
        "preprocessed": p["preprocessed"], "dice_cv": cv["dice_cv"], "dice_all_cases": round(d_all, 4),
        "baseline": {"threshold": cases[0].baseline["threshold"], "source": cases[0].baseline["source"]},
        "folds": cv["folds"],
        "cases": [{"id": c.case_id, "label": c.label, "label_kind": c.label_kind, "fold": cv["fold_of"][i]}
                  for i, c in enumerate(cases)],
        "n_thresholds": int(cand.thresholds.size), "data": str(Path(data).resolve()),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if det.name == "fusion":
        card.update({"members": p["members"].split(","), "rule": p["rule"], "weights": cand.weights,
                     "intercept": cand.intercept})
    check_card(card, detector)
    if write:
        card["path"] = str(write_card(card, out_dir))
    return card


def write_card(card: dict, out_dir: str | Path | None = None) -> Path:
    """Write the card atomically (a reader never sees half a card) where detectors look for it."""
    from ..atomic import write_text

    path = card_path(card["detector"], out_dir)
    write_text(path, json.dumps({k: v for k, v in card.items() if k != "path"}, indent=2, default=str))
    return path


def format_card(card: dict) -> str:
    lines = [f"{'held out':<40}{'threshold':>12}{'Dice':>8}{'default':>9}"]
    for row in card["folds"]:
        lines.append(f"{','.join(row['held_out'])[:39]:<40}{row['threshold']:>12.5g}{row['dice_held_out']:>8.3f}"
                     f"{row['dice_held_out_default']:>9.3f}")
    cv = card["dice_cv"]
    lines += ["", f"{card['detector']}: threshold {card['threshold']:.5g} from {len(card['cases'])} labelled cases"
              + (f", weights {card['weights']} ({card['rule']})" if card.get("weights") else "")
              + f"; cross-validated pooled Dice {cv['calibrated']:.3f} vs {cv['default']:.3f} at the threshold "
              f"before ({card['baseline']['threshold']:.4g})"]
    return "\n".join(lines)
