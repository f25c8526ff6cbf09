"""Pictures people look at: precision-recall and Dice-versus-threshold curves."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def prefetch() -> None:
    """Import matplotlib in a background thread (0.6-0.9 s of imports) while the caller computes, so the plot at
    the end does not wait for it; plot_curves' own import then finds it loaded (imports are locked)."""
    import threading

    def _load():
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401

    threading.Thread(target=_load, name="uad-prefetch-matplotlib", daemon=True).start()


def plot_curves(precision: np.ndarray, recall: np.ndarray, thresholds: np.ndarray, dice: np.ndarray,
                title: str, path: str | Path, auprc: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
    recall, precision = _for_display(np.asarray(recall), np.asarray(precision))
    a.plot(recall, precision, color="tab:blue", lw=1.5)
    a.set_xlabel("recall")
    a.set_ylabel("precision")
    a.set_xlim(0, 1)
    a.set_ylim(0, 1.02)
    a.set_title(f"precision-recall (AUPRC {auprc:.3f})")
    a.grid(alpha=0.3)
    best = int(np.argmax(dice))
    b.plot(thresholds, dice, color="tab:red", lw=1.5)
    b.axvline(thresholds[best], color="grey", ls="--", lw=1)
    b.set_xlabel("threshold")
    b.set_ylabel("Dice (components <= 20 mm^3 removed)")
    b.set_title(f"Dice vs threshold (best {dice[best]:.3f} at {thresholds[best]:.3g})")
    b.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _for_display(x: np.ndarray, y: np.ndarray, points: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """A pooled PR curve has a point per distinct score (millions): a 1000-pixel-wide plot shows no more than
    `points` evenly spaced ones, endpoints kept, and drawing the rest cost more than the whole metric."""
    if x.size <= points:
        return x, y
    idx = np.unique(np.linspace(0, x.size - 1, points).round().astype(np.int64))
    return x[idx], y[idx]
