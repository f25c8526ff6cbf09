"""Active-learning strategies over cases (one representative image per case, see cases.py).

- most_anomalous: the unlabelled case with the highest `anomaly_score` (scoring.py) first;
- most_uncertain: the unlabelled case with the highest segmenter `uncertainty`; while no detector
  reports uncertainty it falls back to the anomaly score and says so (`"fallback": "anomaly_score"`);
- random: a random unlabelled case, weighted towards cases not served recently (MONAI Label's rule).

Top-k, done right: MONAI Label's `Epistemic` strategy builds a top-k and then sorts the *whole*
score table by serve time, so k has no effect. Here the candidates are the k highest-scored
unlabelled cases; among them, a case not served within `reset` seconds wins by score; if all k were
served recently, the one served longest ago wins. With k=1 the answer is always the top case.
Unscored cases rank after every scored one (by id), so a fresh datastore still yields a sample.
Request keys: k (default 5), reset (seconds, default 600), detector (score of that detector instead of
the primary `anomaly_score`), label_tag (default final).
"""
from __future__ import annotations

import logging
import math
import random
import time
from typing import Any

from monailabel.interfaces.tasks.strategy import Strategy

from .cases import unlabeled_representatives
from .scoring import SCORE_KEY, SCORES_KEY, UNCERTAINTY_KEY

log = logging.getLogger(__name__)


def top_k(scores: dict[str, float | None], k: int) -> list[str]:
    """The ids of the k highest scores (None = unscored, ranked last; ties broken by id)."""
    ranked = sorted(scores, key=lambda i: (scores[i] is None, -(scores[i] or 0.0) if scores[i] is not None else 0.0, i))
    return ranked[:k] if k > 0 else ranked


def pick(scores: dict[str, float | None], served: dict[str, float], k: int, reset: float, now: float) -> str | None:
    """Top-k candidates; the best-scored not served within `reset` s, else the least recently served."""
    candidates = top_k(scores, k)
    if not candidates:
        return None
    fresh = [c for c in candidates if now - served.get(c, 0.0) >= reset]
    if fresh:
        return fresh[0]  # candidates are already in score order
    return min(candidates, key=lambda c: (served.get(c, 0.0), candidates.index(c)))


def _score_of(info: dict, key: str, detector: str | None) -> float | None:
    if detector:
        entry = (info.get(SCORES_KEY) or {}).get(detector) or {}
        value = entry.get("uncertainty" if key == UNCERTAINTY_KEY else "score")
    else:
        value = info.get(key)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return float(value)


class ScoreStrategy(Strategy):
    key = SCORE_KEY

    def __init__(self, description: str, k: int = 5, reset: float = 600.0, detector: str | None = None):
        super().__init__(description)
        self.k, self.reset, self.detector = k, reset, detector

    def info(self):
        return {**super().info(), "score_key": self.key, "k": self.k, "reset_s": self.reset,
                "detector": self.detector}

    def candidates(self, request, datastore) -> list[str]:
        reload = getattr(datastore, "reload_if_changed", None)
        if reload:
            reload()
        return unlabeled_representatives(datastore, request.get("label_tag"))

    def __call__(self, request, datastore) -> dict[str, Any] | None:
        images = self.candidates(request, datastore)
        if not images:
            return None
        strategy = request.get("strategy", "")
        k = int(request.get("k", self.k))
        reset = float(request.get("reset", self.reset))
        detector = request.get("detector", self.detector)
        infos = {i: datastore.get_image_info(i) for i in images}
        key = self.key
        scores = {i: _score_of(infos[i], key, detector) for i in images}
        fallback = None
        if key == UNCERTAINTY_KEY and all(v is None for v in scores.values()):
            key, fallback = SCORE_KEY, SCORE_KEY
            scores = {i: _score_of(infos[i], key, detector) for i in images}
        served = {i: float((infos[i].get("strategy") or {}).get(strategy, {}).get("ts", 0)) for i in images}
        chosen = pick(scores, served, k, reset, time.time())
        if chosen is None:
            return None
        result = {"id": chosen, "score": scores[chosen], "score_key": key, "rank": top_k(scores, 0).index(chosen) + 1,
                  "unlabeled_cases": len(images), "unscored_cases": sum(v is None for v in scores.values())}
        if fallback:
            result["fallback"] = fallback
        log.info("%s: %s (score %s, rank %d of %d)", strategy, chosen, scores[chosen], result["rank"], len(images))
        return result


class MostAnomalous(ScoreStrategy):
    key = SCORE_KEY

    def __init__(self, **kw):
        super().__init__("Unlabelled case with the highest anomaly score first (top-k, least recently served)", **kw)


class MostUncertain(ScoreStrategy):
    key = UNCERTAINTY_KEY

    def __init__(self, **kw):
        super().__init__("Unlabelled case with the highest mean segmenter uncertainty first "
                         "(falls back to the anomaly score while no detector reports uncertainty)", **kw)


class RandomCase(Strategy):
    def __init__(self, seed: int | None = None):
        super().__init__("Random unlabelled case, weighted towards cases not served recently")
        self._rng = random.Random(seed)

    def __call__(self, request, datastore) -> dict[str, Any] | None:
        reload = getattr(datastore, "reload_if_changed", None)
        if reload:
            reload()
        images = unlabeled_representatives(datastore, request.get("label_tag"))
        if not images:
            return None
        strategy = request.get("strategy", "random")
        now = time.time()
        weights = [max(1.0, now - float((datastore.get_image_info(i).get("strategy") or {})
                                        .get(strategy, {}).get("ts", 0))) for i in images]
        chosen = self._rng.choices(images, weights=weights)[0]
        return {"id": chosen, "unlabeled_cases": len(images)}


def default_strategies(detector: str | None = None, k: int = 5, reset: float = 600.0) -> dict[str, Strategy]:
    return {"most_anomalous": MostAnomalous(k=k, reset=reset, detector=detector),
            "most_uncertain": MostUncertain(k=k, reset=reset, detector=detector),
            "random": RandomCase()}
