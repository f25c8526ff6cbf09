"""Network builders of the learned detectors (one module per detector family)."""
