"""MONAI Label app of uad-label: wires the detectors (lib/configs) to infer tasks, scoring methods,
active-learning strategies and batch inference. Logic lives in the uad_label package; this file only wires.

Start: `uad serve --studies DIR` (or `monailabel start_server --app server_app --studies DIR`).
Choose detectors with `--conf models flair_threshold,...` (default: all available).
Active learning / scoring (see docs/label_loop.md):
  --conf scoring_params '{"preprocessed": true}'   detector params for scoring and batch inference
  --conf active_detector flair_threshold           whose score `anomaly_score` / most_anomalous use
  --conf strategy_k 5 --conf strategy_reset 600    top-k and re-serve interval of the strategies
  --conf finetune_model NAME --conf finetune_every N   fine-tune after N new final labels
  --conf infer_concurrency N                       inferences computed at once (default: CPU count)
  --conf threads N                                 torch / SimpleITK threads of the process (default: UAD_THREADS)
  --conf pseudo_label_dir DIR                      detector outputs of pseudo-labelling (default <app>/pseudo_labels)
  --conf ray_address ADDR                          batch inference on that Ray cluster (default: in-process)
  --conf auto_score true                           score on start, after next-sample, training and each
                                                   final label (incremental, in-process; default false)
"""
import logging

from lib.activelearning import default_strategies
from lib.configs.detectors import enabled_detectors
from lib.infers.detector import DetectorInfer
from lib.scoring import parse_params, scoring_methods
from monailabel.interfaces.app import MONAILabelApp

import uad_label
from uad_label.active.loop import LabelLoop

log = logging.getLogger(__name__)


def _flag(value, default=True) -> bool:
    return default if value is None else str(value).lower() in ("1", "true", "yes", "on")


class UADApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        conf = conf or {}
        from uad_label.runtime import configure_threads

        configure_threads(conf.get("threads"))  # --conf threads N (else UAD_THREADS): once, never per request
        self.detector_names = enabled_detectors(conf)
        # weights trained through the server go to <app>/model and take precedence over shipped ones
        import os

        self.weights_dir = conf.get("weights_dir") or os.path.join(app_dir, "model")
        os.environ.setdefault("UAD_WEIGHTS_DIR", self.weights_dir)
        self.scoring_params = parse_params(conf.get("scoring_params"))
        wanted = conf.get("active_detector")
        self.active_detector = wanted if wanted in self.detector_names else (
            "flair_threshold" if "flair_threshold" in self.detector_names else self.detector_names[0])
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="uad-label",
                         description="Unsupervised anomaly detection for brain MRI", version=uad_label.__version__,
                         labels=["anomaly"])
        # at most `infer_concurrency` inferences compute at once (default: the CPU count); more requests
        # wait in the queue instead of fighting over the cores, so /info stays fast under load
        import os
        from concurrent.futures import ThreadPoolExecutor

        n = int(conf.get("infer_concurrency", 0) or 0) or (os.cpu_count() or 1)
        if self._infers_threadpool is None:
            self._infers_threadpool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="INFER")
        self.auto_score = _flag(conf.get("auto_score"), False)
        self.label_loop = LabelLoop(self, conf.get("finetune_model"), int(conf.get("finetune_every", 0) or 0),
                                    rescore_on_save=self.auto_score)

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            from uad_label.dicom.datastore import init_dicomweb_datastore

            self.studies = self.studies.rstrip("/").strip()
            return init_dicomweb_datastore(self.studies)
        from monailabel.config import settings

        from uad_label.active.datastore import SafeLocalDatastore

        return SafeLocalDatastore(self.studies, extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
                                  auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                                  read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY)

    def init_infers(self):
        return {name: DetectorInfer(name) for name in self.detector_names}

    def init_trainers(self):
        from lib.trainers.calibrate import calibration_trainers
        from lib.trainers.detector import DetectorTrain

        from uad_label.training import trainers

        tasks = {name: DetectorTrain(name, self.weights_dir) for name in self.detector_names if name in trainers()}
        return {**tasks, **calibration_trainers(self.detector_names, self.weights_dir)}  # calibrate_<detector>

    def init_strategies(self):
        return default_strategies(k=int(self.conf.get("strategy_k", 5)),
                                  reset=float(self.conf.get("strategy_reset", 600)))

    def init_scoring_methods(self):
        import os

        from uad_label.batch.pseudo_label_task import pseudo_label_methods

        work = self.conf.get("pseudo_label_dir") or os.path.join(self.app_dir, "pseudo_labels")
        pseudo = pseudo_label_methods(self.detector_names, work,
                                      self.scoring_params, self.conf.get("ray_address") or None)
        return {**scoring_methods(self.detector_names, self.scoring_params, self.active_detector), **pseudo}

    def init_batch_infer(self):
        from uad_label.batch.server import DetectorBatchInfer

        return DetectorBatchInfer(self.scoring_params, primary=self.active_detector,
                                  ray_address=self.conf.get("ray_address") or None)

    def async_scoring(self, method, params=None):
        """Automatic re-scoring (start, next sample, training, label save): in-process, incremental, one
        run at a time (stock MONAI Label starts a whole app subprocess per trigger)."""
        loop = getattr(self, "label_loop", None)
        if loop is None or not self._scoring_methods or not self.auto_score:
            return {}
        return loop.scorer.trigger(force=False)

    def on_save_label(self, image_id, label_id, tag="final"):
        log.info("label saved: %s => %s (%s)", image_id, label_id, tag)
        return self.label_loop.on_label_saved(image_id, label_id, tag)
