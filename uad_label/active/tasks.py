"""MONAI Label task objects for scoring (the server app only wires these)."""
from __future__ import annotations

import json

from monailabel.interfaces.tasks.scoring import ScoringMethod

from .scoring import score_datastore


def parse_params(value) -> dict:
    if value in (None, ""):
        return {}
    if isinstance(value, dict):
        return dict(value)
    p = json.loads(value)
    if not isinstance(p, dict):
        raise ValueError(f"scoring params: expected a JSON object, received {value!r}")
    return p


class AnomalyScoring(ScoringMethod):
    """POST /scoring/anomaly_<detector>: score every case with the detector (incremental; request keys
    `force`, `images`, and detector parameters override the app's `--conf scoring_params`)."""

    CONTROL_KEYS = {"method", "force", "images", "device", "model", "bundle_path", "logging"}

    def __init__(self, detector: str, params: dict | None = None, primary: bool = False):
        super().__init__(f"Anomaly score of each case by {detector} (image_score of the whole volume)")
        self.detector, self.params, self.primary = detector, dict(params or {}), primary

    def info(self):
        return {**super().info(), "detector": self.detector, "params": self.params, "primary": self.primary}

    def __call__(self, request, datastore):
        params = {**self.params, **{k: v for k, v in request.items() if k not in self.CONTROL_KEYS}}
        images = request.get("images")
        return score_datastore(datastore, self.detector, params, primary=self.primary,
                               force=bool(request.get("force", False)),
                               images=images if isinstance(images, list) else None)


def scoring_methods(detectors: list[str], params: dict, primary: str | None) -> dict[str, AnomalyScoring]:
    return {f"anomaly_{d}": AnomalyScoring(d, params, primary=(d == primary)) for d in detectors}
