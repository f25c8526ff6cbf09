"""Scoring methods of the app; the logic lives in uad_label.active.scoring / uad_label.active.tasks."""
from uad_label.active.tasks import AnomalyScoring, parse_params, scoring_methods

__all__ = ["AnomalyScoring", "parse_params", "scoring_methods"]
