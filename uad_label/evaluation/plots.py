"""Pictures people look at: precision-recall and Dice-versus-threshold curves."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_curves(precision: np.ndarray, recall: np.ndarray, thresholds: np.ndarray, dice: np.ndarray,
                title: str, path: str | Path, auprc: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
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
