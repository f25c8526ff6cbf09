"""One MONAI Label train task per learned detector; training happens in uad_label.training."""
from pathlib import Path

from monailabel.interfaces.tasks.train import TrainTask

from uad_label.training import TrainRequest, train


class DetectorTrain(TrainTask):
    def __init__(self, name: str, out_dir: str):
        super().__init__(f"Train '{name}' on the healthy images of the datastore (config cpu: demo size; full: GPU)")
        self.name = name
        self.out_dir = out_dir

    def config(self):
        return {"config": "cpu", "device": "auto"}

    def __call__(self, request, datastore):
        source = Path(datastore.datastore_path)
        overrides = {k: v for k, v in request.items() if k in ("epochs", "steps", "lr", "batch_size", "holdout", "threads")}
        return train(self.name, TrainRequest([source], request.get("config", "cpu"), Path(self.out_dir),
                                             request.get("device", "auto"), overrides))
