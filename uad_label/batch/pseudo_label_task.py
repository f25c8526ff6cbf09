"""The server's pseudo-label task: POST /scoring/pseudo_label_<detector> runs `pseudo_label.pseudo_label` over the
datastore (MONAI Label's scoring queue runs it in the background; status at GET /scoring/). Request keys: `tag`
(default: the detector's name), `force`, `limit`, and detector parameters (over the app's `--conf scoring_params`).
With `--conf ray_address ADDR` the cases run on that Ray cluster. The detector's outputs go to
<app>/pseudo_labels/<tag>/ (resumable); the labels go into the datastore with their provenance."""
from __future__ import annotations

from pathlib import Path

from monailabel.interfaces.tasks.scoring import ScoringMethod

from ..errors import InputError
from .pseudo_label import check_tag

CONTROL_KEYS = frozenset({"method", "tag", "force", "limit", "model", "device", "bundle_path", "logging", "images"})


class PseudoLabelScoring(ScoringMethod):
    automatic = False  # the label loop's automatic re-scoring skips it: it runs only when asked for

    def __init__(self, detector: str, work_dir: str | Path, params: dict | None = None,
                 ray_address: str | None = None):
        super().__init__(f"Pseudo-labels of the unlabelled cases by {detector} (labels/<tag>/, own tag, "
                         "never final)")
        self.detector, self.work_dir, self.params = detector, Path(work_dir), dict(params or {})
        self.ray_address = ray_address

    def info(self):
        return {**super().info(), "detector": self.detector, "params": self.params, "kind": "pseudo_label"}

    def _split(self, request: dict) -> tuple[str, dict, bool, int | None]:
        from ..detectors import get_detector

        tag = check_tag(request.get("tag") or self.detector)
        own = {k: v for k, v in request.items() if k not in CONTROL_KEYS}
        params = get_detector(self.detector).validate({**self.params, **own})  # pseudo_label() keeps them
        limit = request.get("limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise InputError(f"limit: expected a positive integer, received {limit!r}")
        force = request.get("force", False)
        if not isinstance(force, bool):
            raise InputError(f"force: expected true or false, received {force!r}")
        return tag, params, force, limit

    def check_request(self, request: dict) -> None:
        """What POST /scoring/pseudo_label_<detector> checks before it queues anything (4xx on bad input)."""
        self._split(dict(request or {}))

    def __call__(self, request, datastore):
        from .pseudo_label import pseudo_label

        tag, params, force, limit = self._split(dict(request or {}))
        root = getattr(datastore, "_datastore_path", None)
        if root is None or not Path(root).is_dir():
            raise InputError("datastore: pseudo-labels need a local datastore (a studies folder), not "
                             f"{type(datastore).__name__}")
        return pseudo_label(self.detector, root, self.work_dir / tag, params, tag=tag,
                            engine="ray" if self.ray_address else "local", address=self.ray_address,
                            force=force, limit=limit, datastore=datastore)


def pseudo_label_methods(detectors: list[str], work_dir: str | Path, params: dict,
                         ray_address: str | None = None) -> dict[str, PseudoLabelScoring]:
    return {f"pseudo_label_{d}": PseudoLabelScoring(d, work_dir, params, ray_address) for d in detectors}
