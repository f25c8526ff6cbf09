"""One MONAI Label train task per detector, `calibrate_<detector>`: its default threshold (fusion: and its
weights) chosen on the datastore's final labels by cross-validation (uad_label.evaluation.calibrate); the card
goes beside the weights, where the detectors read it on their next request. With `--conf finetune_model
calibrate_fusion --conf finetune_every N` the label loop re-calibrates after every N new final labels."""
import json
from pathlib import Path

from monailabel.interfaces.tasks.train import TrainTask

from uad_label.detectors import get_detector
from uad_label.errors import InputError
from uad_label.evaluation.calibrate import MIN_CASES, N_FOLDS, calibrate

PREFIX = "calibrate_"


class CalibrateTrain(TrainTask):
    def __init__(self, detector: str, out_dir: str):
        super().__init__(f"Calibrate '{detector}' (threshold, fusion weights) on the final labels of the datastore "
                         f"(at least {MIN_CASES} labelled cases)")
        self.detector = detector
        self.out_dir = out_dir

    def config(self):
        return {"folds": N_FOLDS, "min_cases": MIN_CASES, "params": {}}

    def __call__(self, request, datastore):
        request = dict(request)
        params = request.get("params") or {}
        if isinstance(params, str):
            try:
                params = json.loads(params)
            except json.JSONDecodeError as exc:
                raise InputError(f"params: expected a JSON object, received {params!r} ({exc.msg})") from None
        if not isinstance(params, dict):
            raise InputError(f"params: expected a JSON object, received {type(params).__name__}")
        declared = {p.name for p in get_detector(self.detector).all_params()}
        params = {**{k: v for k, v in request.items() if k in declared}, **params}  # flat keys too
        # MONAI Label's LocalDatastore keeps its folder in `_datastore_path` (it has no public name for it)
        card = calibrate(self.detector, Path(datastore._datastore_path), params,
                         folds=int(request.get("folds", N_FOLDS)), min_cases=int(request.get("min_cases", MIN_CASES)),
                         out_dir=self.out_dir, progress=False)
        return {k: card.get(k) for k in ("detector", "threshold", "weights", "rule", "dice_cv", "path", "date")} | {
            "cases": len(card["cases"])}


def calibration_trainers(detector_names, out_dir: str) -> dict:
    return {f"{PREFIX}{name}": CalibrateTrain(name, out_dir) for name in detector_names}
