"""MONAI Label app of uad-label: wires the detectors (lib/configs) to infer tasks. Logic lives in
the uad_label package; this file only wires.

Start: `uad serve --studies DIR` (or `monailabel start_server --app server_app --studies DIR`).
Choose detectors with `--conf models flair_threshold,...` (default: all available)."""
import logging

from lib.configs.detectors import enabled_detectors
from lib.infers.detector import DetectorInfer
from monailabel.interfaces.app import MONAILabelApp

import uad_label

log = logging.getLogger(__name__)


class UADApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.detector_names = enabled_detectors(conf)
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="uad-label",
                         description="Unsupervised anomaly detection for brain MRI", version=uad_label.__version__,
                         labels=["anomaly"])

    def init_infers(self):
        return {name: DetectorInfer(name) for name in self.detector_names}
