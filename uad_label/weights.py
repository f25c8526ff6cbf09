"""Where trained weights live and how they load. Weights are plain state dicts (`<name>.pt`) with
a model card (`<name>.json`: what data, which config, how long, metrics) beside them.

Lookup order: $UAD_WEIGHTS_DIR, then the weights shipped in the package
(uad_label/assets/weights). A detector without weights says so (UntrainedError) instead of
producing a meaningless map."""
from __future__ import annotations

import json
import os
from pathlib import Path

PACKAGE_WEIGHTS = Path(__file__).resolve().parent / "assets" / "weights"


class UntrainedError(ValueError):
    """A learned detector was asked to run without weights."""


def weights_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("UAD_WEIGHTS_DIR"):
        dirs.append(Path(os.environ["UAD_WEIGHTS_DIR"]))
    dirs.append(PACKAGE_WEIGHTS)
    return dirs


def find_weights(name: str) -> Path | None:
    for d in weights_dirs():
        p = d / f"{name}.pt"
        if p.exists():
            return p
    return None


def load_state(name: str, map_location="cpu") -> tuple[dict, dict]:
    """(state dict, model card) of `name`, or UntrainedError telling the user how to train it."""
    import torch

    path = find_weights(name)
    if path is None:
        searched = ", ".join(str(d) for d in weights_dirs())
        raise UntrainedError(f"detector '{name}' is untrained: no {name}.pt in {searched}; "
                             f"train it with `uad train {name} --data DATASTORE` or set UAD_WEIGHTS_DIR")
    state = torch.load(path, map_location=map_location, weights_only=True)
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.exists() else {}
    return state, card


def save_state(name: str, state: dict, card: dict, out_dir: str | os.PathLike | None = None) -> Path:
    """Write `<name>.pt` and its model card atomically into out_dir (default: the first weights dir)."""
    import torch

    from .atomic import atomic_path, write_text

    out = Path(out_dir) if out_dir else weights_dirs()[0]
    target = out / f"{name}.pt"
    with atomic_path(target) as tmp:
        torch.save(state, tmp)
    write_text(target.with_suffix(".json"), json.dumps(card, indent=2, default=str))
    return target
