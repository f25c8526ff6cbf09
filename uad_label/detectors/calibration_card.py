"""Calibration cards: a detector's default threshold (and the fusion's weights) chosen on this
installation's approved labels by `uad calibrate` / the calibrate train task (uad_label.evaluation.calibrate
writes them). A card is `<detector>.calibration.json` beside the weights (uad_label.weights: $UAD_WEIGHTS_DIR
first, then the package's). The detector base uses a valid card's threshold when a request gives none and
says so in `threshold_source`; a card that does not parse or lacks a field is refused (CalibrationCardError),
never silently ignored; a card made for other map parameters (e.g. tissue_outlier's `score`) does not apply.
"""
from __future__ import annotations

import json
import math
import threading
from pathlib import Path

CARD_KIND = "uad-calibration"
CARD_VERSION = 1
SUFFIX = ".calibration.json"
# parameters the calibration chooses itself: not part of the parameters a card must match
CALIBRATED_PARAMS = ("weights", "intercept")
_LOCK = threading.Lock()
_CACHE: dict[str, tuple[tuple, dict]] = {}


class CalibrationCardError(ValueError):
    """A calibration card exists but cannot be used (unreadable, not a card, a field missing or invalid)."""


def card_path(detector: str, out_dir: str | Path | None = None) -> Path:
    """Where `detector`'s card is written: out_dir, else the first weights folder (as save_state)."""
    from ..weights import weights_dirs

    return Path(out_dir or weights_dirs()[0]) / f"{detector}{SUFFIX}"


def find_card(detector: str) -> Path | None:
    from ..weights import weights_dirs

    name = f"{detector}{SUFFIX}"
    return next((folder / name for folder in weights_dirs() if (folder / name).exists()), None)


def map_params(detector, params) -> dict:
    """The parameters that shape a detector's map (its own, not the common ones), as a card stores them."""
    return {p.name: params[p.name] for p in detector.params if p.name not in CALIBRATED_PARAMS and p.name in params}


def _refuse(path: Path, what: str, detector: str) -> CalibrationCardError:
    return CalibrationCardError(f"calibration card {path}: {what}; it is not used. Delete it or re-run "
                                f"`uad calibrate {detector} --data DATASTORE` to write a valid one")


def check_card(card, detector: str, path: Path | str = "card") -> dict:
    """The card if it is a valid card of `detector`; else CalibrationCardError naming the field."""
    path = Path(path)
    if not isinstance(card, dict):
        raise _refuse(path, f"expected a JSON object, received {type(card).__name__}", detector)
    if card.get("kind") != CARD_KIND or card.get("version") != CARD_VERSION:
        raise _refuse(path, f"expected kind {CARD_KIND!r} version {CARD_VERSION}, received "
                            f"{card.get('kind')!r} version {card.get('version')!r}", detector)
    if card.get("detector") != detector:
        raise _refuse(path, f"expected detector {detector!r}, received {card.get('detector')!r}", detector)
    t = card.get("threshold")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise _refuse(path, f"'threshold': expected a finite number, received {t!r}", detector)
    if not isinstance(card.get("map_params"), dict):
        raise _refuse(path, f"'map_params': expected an object, received {card.get('map_params')!r}", detector)
    for key in ("cases", "folds"):
        if not isinstance(card.get(key), list) or not card[key]:
            raise _refuse(path, f"{key!r}: expected a non-empty list, received {card.get(key)!r}", detector)
    w = card.get("weights")
    if w is not None and (not isinstance(w, list) or not w or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in w)):
        raise _refuse(path, f"'weights': expected a list of finite numbers, received {w!r}", detector)
    return card


def read_card(detector: str) -> tuple[Path, dict] | None:
    """(path, card) of `detector`'s card, None when there is none; re-read when the file changes."""
    path = find_card(detector)
    if path is None:
        return None
    try:
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
    except FileNotFoundError:  # replaced between exists() and stat(): read it on the next request
        return None
    with _LOCK:
        cached = _CACHE.get(detector)
        if cached is not None and cached[0] == key:
            return path, cached[1]
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refuse(path, f"unreadable JSON ({exc})", detector) from None
    check_card(card, detector, path)
    with _LOCK:
        _CACHE[detector] = (key, card)
    return path, card


def applicable_card(detector, params) -> tuple[Path, dict] | None:
    """`detector`'s card when it was calibrated with the map parameters of this request."""
    found = read_card(detector.name)
    if found is None:
        return None
    path, card = found
    mine = json.loads(json.dumps(map_params(detector, params), default=str))
    if card["map_params"] != mine:
        return None
    for name in CALIBRATED_PARAMS:  # a request that sets the calibrated values itself gets no calibrated threshold
        if params.get(name) is not None and params.get(name) != card.get(name):
            return None
    return path, card


def calibrated_threshold(detector, params) -> tuple[float, str] | None:
    """(threshold, source) from a card that applies to this request, or None."""
    found = applicable_card(detector, params)
    if found is None:
        return None
    path, card = found
    cv = card.get("dice_cv", {})
    dice = f"{cv.get('calibrated', float('nan')):.3f} vs {cv.get('default', float('nan')):.3f} before"
    return float(card["threshold"]), (
        f"calibrated: {card['threshold']:.4g} from {len(card['cases'])} labelled cases ({card.get('date', '?')}; "
        f"cross-validated Dice {dice}; card {path})")
