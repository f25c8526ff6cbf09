"""Active-learning strategies of the app; the logic lives in uad_label.active.strategies."""
from uad_label.active.strategies import MostAnomalous, MostUncertain, RandomCase, default_strategies

__all__ = ["MostAnomalous", "MostUncertain", "RandomCase", "default_strategies"]
