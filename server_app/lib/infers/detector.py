"""One MONAI Label infer task per detector; all work happens in uad_label.server.tasks."""
from monailabel.interfaces.tasks.infer_v2 import InferTask

from uad_label.detectors import get_detector
from uad_label.server.tasks import run_infer_request


class DetectorInfer(InferTask):
    def __init__(self, name: str):
        det = get_detector(name)
        self.name = name
        info = det.info()
        labels = ["lesion"] if det.task_type == "segmentation" else ["anomaly"]
        super().__init__(type=det.task_type, labels=labels, dimension=3, description=det.description,
                         config={k: v["default"] for k, v in info["params"].items()})
        self._detector_info = info

    def info(self):
        return {**super().info(), **{k: v for k, v in self._detector_info.items() if k != "description"}}

    def is_valid(self) -> bool:
        return True

    def __call__(self, request):
        return run_infer_request(self.name, request)
