"""fusion: one map from several detectors' maps. Each member's map is brought to a common scale
inside the brain (its mid-rank quantile among the case's brain voxels, so no member dominates by its
units), then combined with weights by one rule:

- `mean` (default): weighted mean of the quantiles;
- `product`: weighted geometric mean of the quantiles (a voxel must rank high in every member);
- `logistic`: sigmoid(intercept + sum_i w_i logit(q_i)), coefficients fitted on approved labels by
  `uad calibrate fusion -p rule=logistic`.
Measured on synthetic cases with real lesion masks (docs/fusion.md, benchmarks/fusion/).

Members run on the fusion's own preprocessed case (one preprocessing, every member map in the fusion's
work grid) through their compute_map, not their detect(): detect() would preprocess the case again per
member and return maps in the native grid. Each member map is cached per image (path + mtime, or the
pixels of an in-memory image) and member parameters, in a small bounded in-process cache, so a request
with other weights, rule or threshold, or the calibration, does not run the members again. The member
quantile maps come back as result extras `member_<name>`.
"""
from __future__ import annotations

import contextvars
import hashlib
import json
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..transforms.intensity import brain_quantile
from .base import Detector, MapOutput
from .params import Param

# training-free members run by default. samseg is not one of them although it is training-free: it
# takes about 20 minutes per case (docs/fusion.md); add it with -p members=flair_threshold,tissue_outlier,samseg
DEFAULT_MEMBERS = ("flair_threshold", "tissue_outlier")
RULES = ("mean", "product", "logistic")
# mean/product of quantiles: flagged where the members put the voxel, on (weighted) average, in the
# brain's top 1% (flair_threshold's own default on its quantile map); logistic: a probability
DEFAULT_THRESHOLDS = {"mean": 0.99, "product": 0.99, "logistic": 0.5}
# member maps kept (about 29 MB each on the 182x218x182 grid); UAD_FUSION_CACHE sets another number
CACHE_SIZE = int(os.environ.get("UAD_FUSION_CACHE", "6"))
# parameters that do not change a member's map (they act after it)
_NOT_MAP = ("threshold", "min_component_mm3", "connectivity")
_EPS = 1e-6


def combine(quantiles: list[np.ndarray], weights, rule: str, intercept: float = 0.0) -> np.ndarray:
    """The fused map of member quantile maps (same shape; 0 outside the brain stays 0 for mean/product)."""
    w = np.asarray(weights, np.float64)
    if len(quantiles) != w.size or not quantiles:
        raise ValueError(f"weights: expected one per member ({len(quantiles)}), received {w.size}")
    if rule == "logistic":
        z = np.full(quantiles[0].shape, intercept, np.float64)
        for wi, q in zip(w, quantiles):
            qc = np.clip(q, _EPS, 1 - _EPS)
            z += wi * np.log(qc / (1 - qc))
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
    if w.sum() <= 0:
        raise ValueError(f"weights: expected a positive sum for rule {rule!r}, received {w.tolist()}")
    w = w / w.sum()
    if rule == "mean":
        return sum(np.float32(wi) * q for wi, q in zip(w, quantiles)).astype(np.float32)
    if rule == "product":
        logs = sum(wi * np.log(np.maximum(q, _EPS)) for wi, q in zip(w, quantiles) if wi > 0)
        out = np.exp(logs).astype(np.float32)
        out[np.all([q <= 0 for q in quantiles], axis=0)] = 0  # outside the brain
        return out
    raise ValueError(f"rule: expected one of {list(RULES)}, received {rule!r}")


class _MemberCache:
    """Bounded LRU of member maps; a per-key lock makes two concurrent requests for one case wait
    for one computation instead of running the member twice."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict = {}

    def get_or_compute(self, key, compute):
        if key is None:
            return compute()
        with self._lock:
            lock = self._key_locks.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
            value = compute()
            with self._lock:
                self._items[key] = value
                while len(self._items) > self.size:
                    old, _ = self._items.popitem(last=False)
                    self._key_locks.pop(old, None)
            return value

    def clear(self):
        with self._lock:
            self._items.clear()
            self._key_locks.clear()


MEMBER_CACHE = _MemberCache(CACHE_SIZE)
_INPUT_KEY: contextvars.ContextVar = contextvars.ContextVar("uad_fusion_input_key", default=None)


def _image_key(value) -> tuple | None:
    if isinstance(value, (str, Path)):
        p = Path(value)
        try:
            st = p.stat()
        except OSError:
            return None
        return ("file", str(p.resolve()), st.st_mtime_ns, st.st_size)
    try:  # an in-memory SimpleITK image: its pixels and geometry
        import SimpleITK as sitk

        h = hashlib.blake2b(sitk.GetArrayViewFromImage(value).tobytes(), digest_size=16)
        h.update(repr((value.GetSpacing(), value.GetOrigin(), value.GetDirection())).encode())
        return ("pixels", h.hexdigest())
    except Exception:  # anything else: not cached
        return None


def input_key(images, params, brain_mask=None) -> tuple | None:
    """What identifies the preprocessed case: the images (path + mtime, or pixels), the brain mask and
    the preprocessing switches. None = do not cache."""
    keys = tuple(sorted((m, _image_key(v)) for m, v in images.items()))
    mask = _image_key(brain_mask) if brain_mask is not None else "none"
    if any(k is None for _, k in keys) or mask is None:
        return None
    return keys, mask, bool(params["preprocessed"]), bool(params["bias_correction"])


class Fusion(Detector):
    name = "fusion"
    description = ("Fusion of detectors: each member's map as its quantile inside the brain, combined by a weighted "
                   "mean (default), product or logistic rule; weights and threshold from a calibration card when "
                   "`uad calibrate fusion` wrote one. Member maps come back as extras member_<name>.")
    modalities = ("FLAIR",)
    optional_modalities = ("T1", "T2")
    params = (
        Param("members", "", str, "comma-separated detectors to fuse; empty = the installed training-free ones "
              f"({', '.join(DEFAULT_MEMBERS)}; samseg only when named: ~20 min per case)"),
        Param("rule", "mean", str, "how member quantiles combine", choices=RULES),
        Param("weights", None, str, "comma-separated weight per member (logistic: coefficients); null = the "
              "calibration card's, else equal", nullable=True),
        Param("intercept", None, float, "logistic rule's intercept; null = the calibration card's", nullable=True),
        Param("member_params", "{}", str, 'JSON object of parameters per member, e.g. {"tissue_outlier": '
              '{"channels": "FLAIR"}}'),
    )

    def validate(self, params, ignore=()):
        from . import available

        if not (isinstance(params, dict) and getattr(params, "_fusion_checked", False)):
            params = dict(params or {})  # lists / objects (JSON bodies, a card's weights) as the string form
            if isinstance(params.get("weights"), (list, tuple)):
                params["weights"] = ",".join(str(x) for x in params["weights"])
            if isinstance(params.get("member_params"), dict):
                params["member_params"] = json.dumps(params["member_params"])
        p = super().validate(params, ignore)
        if getattr(p, "_fusion_checked", False):
            return p
        names = [n.strip() for n in p["members"].split(",") if n.strip()] or \
            [n for n in DEFAULT_MEMBERS if n in available()]
        bad = [n for n in names if n == self.name or n not in available()]
        if bad or len(set(names)) != len(names) or not names:
            raise InputError(f"parameter 'members': expected distinct detectors among "
                             f"{[n for n in available() if n != self.name]}, received {p['members']!r}")
        p["members"] = ",".join(names)
        if isinstance(p["weights"], str):
            try:
                w = [float(x) for x in p["weights"].split(",")]
            except ValueError:
                raise InputError(f"parameter 'weights': expected comma-separated numbers, received "
                                 f"{p['weights']!r}") from None
            if len(w) != len(names) or not all(np.isfinite(w)) or (p["rule"] != "logistic" and (
                    min(w) < 0 or sum(w) <= 0)):
                raise InputError(f"parameter 'weights': expected {len(names)} finite numbers (one per member of "
                                 f"{names}; non-negative, not all 0 unless rule=logistic), received {p['weights']!r}")
            p["weights"] = w
        try:
            mp = json.loads(p["member_params"]) if isinstance(p["member_params"], str) else p["member_params"]
        except json.JSONDecodeError as exc:
            raise InputError(f"parameter 'member_params': expected a JSON object, received "
                             f"{p['member_params']!r} ({exc.msg})") from None
        if not isinstance(mp, dict) or any(k not in names for k in mp):
            raise InputError(f"parameter 'member_params': expected an object keyed by members {names}, "
                             f"received {p['member_params']!r}")
        p["member_params"] = json.dumps(mp, sort_keys=True)
        p._fusion_checked = True
        return p

    def member_params(self, name: str, params) -> dict:
        """A member's validated parameters: its own from member_params, the common ones from the request."""
        from . import get_detector

        own = json.loads(params["member_params"]).get(name, {})
        common = {k: params[k] for k in ("preprocessed", "bias_correction", "check_contrast")}
        return get_detector(name).validate({**common, **own})

    def detect(self, images, params=None, progress=None, brain_mask=None, findings=True):
        p = self.validate(params)
        token = _INPUT_KEY.set(input_key(images, p, brain_mask))
        try:
            return super().detect(images, p, progress, brain_mask, findings)
        finally:
            _INPUT_KEY.reset(token)

    def member_maps(self, case, params, progress=lambda f, m: None) -> tuple[dict, dict]:
        """({member: map in the work grid}, {member: its info}), from the cache when this case ran before."""
        from . import get_detector

        names = params["members"].split(",")
        maps, infos = {}, {}
        base_key = _INPUT_KEY.get()
        for i, name in enumerate(names):
            det = get_detector(name)
            missing = [m for m in det.modalities if m not in case.arrays]
            if missing:
                raise InputError(f"fusion member '{name}' needs modalities {list(det.modalities)}, missing {missing}")
            mp = self.member_params(name, params)
            key = None if base_key is None else (
                name, base_key, json.dumps({k: v for k, v in mp.items() if k not in _NOT_MAP}, sort_keys=True,
                                           default=str))

            def run(det=det, mp=mp, i=i):
                out = det.compute_map(case, mp, lambda f, m: progress((i + f) / len(names), f"{det.name}: {m}"))
                if not isinstance(out, MapOutput):
                    out = MapOutput(out)
                return np.asarray(out.map, np.float32), out.info

            maps[name], infos[name] = MEMBER_CACHE.get_or_compute(key, run)
        return maps, infos

    def resolve_weights(self, params) -> tuple[list[float], float, str]:
        """(weights, intercept, where they come from): the request's, the card's, or equal."""
        from .calibration_card import applicable_card

        n = len(params["members"].split(","))
        if params["weights"] is not None:
            return list(params["weights"]), float(params["intercept"] or 0.0), "request"
        found = applicable_card(self, params)
        if found is not None and found[1].get("weights") is not None and len(found[1]["weights"]) == n:
            return list(found[1]["weights"]), float(found[1].get("intercept") or 0.0), f"calibration card {found[0]}"
        if params["rule"] == "logistic":
            raise InputError("fusion: rule=logistic needs fitted coefficients: run `uad calibrate fusion --data "
                             "DATASTORE -p rule=logistic` or give -p weights=w1,w2,... -p intercept=b")
        return [1.0] * n, 0.0, "equal (no calibration card)"

    def compute_map(self, case, params, progress):
        maps, infos = self.member_maps(case, params, lambda f, m: progress(0.9 * f, m))
        progress(0.9, "fusing")
        quantiles = {name: brain_quantile(m, case.brain) for name, m in maps.items()}
        weights, intercept, source = self.resolve_weights(params)
        fused = combine(list(quantiles.values()), weights, params["rule"], intercept)
        fused[~case.brain] = 0
        info = {"fusion": {"members": list(maps), "rule": params["rule"], "weights": weights,
                           "intercept": intercept, "weights_source": source,
                           "member_info": {n: i for n, i in infos.items() if i}}}
        return MapOutput(fused, info, {f"member_{name}": q for name, q in quantiles.items()})

    def default_threshold(self, work_map, case, params):
        t = DEFAULT_THRESHOLDS[params["rule"]]
        what = "a probability" if params["rule"] == "logistic" else \
            "the members' weighted quantile: on average in the brain's top 1%"
        return t, f"default: {t} on the fused map ({what}; uncalibrated)"
