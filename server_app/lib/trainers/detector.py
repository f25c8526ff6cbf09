"""One MONAI Label train task per learned detector; training and its validation happen in uad_label.training."""
from pathlib import Path

from monailabel.interfaces.tasks.train import TrainTask

from uad_label.training import request_from_params, train


class DetectorTrain(TrainTask):
    def __init__(self, name: str, out_dir: str):
        super().__init__(f"Train '{name}' on the healthy images of the datastore (config cpu: demo size; full: GPU)")
        self.name = name
        self.out_dir = out_dir

    def config(self):
        # nproc > 1: `uad train NAME` in a child torchrun (uad_label.training.train -> distributed.run_request)
        return {"config": "cpu", "device": "auto", "nproc": 1}

    def __call__(self, request, datastore):
        # every option the CLI's --set accepts is passed on; the trainer refuses unknown ones.
        # MONAI Label's LocalDatastore keeps its folder in `_datastore_path` (it has no public name for it)
        source = Path(datastore._datastore_path)
        return train(self.name, request_from_params(self.name, dict(request), [source], Path(self.out_dir)))
