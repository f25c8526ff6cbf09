"""The label loop on the server: what happens after an annotator saves a final label.

1. The label is validated and saved (uad_label.server.asgi, SafeLocalDatastore).
2. `LabelLoop.on_label_saved` counts final labels; if the app is configured with a model to fine-tune
   (`--conf finetune_model NAME`, `--conf finetune_every N`) and N new final labels arrived since the
   last fine-tuning, it starts MONAI Label training of that model (training ends by re-scoring).
3. It (re-)scores in the background: one scoring run at a time, further requests coalesce into one
   follow-up run; scoring is incremental (new or changed cases only) unless fine-tuning changed the
   model, in which case everything is re-scored.
4. The next POST /activelearning/most_anomalous returns the next unlabelled case.
See docs/label_loop.md.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)


class CoalescingRunner:
    """Runs `fn(force)` in a daemon thread; triggers during a run collapse into one re-run."""

    def __init__(self, fn: Callable[[bool], object], name: str = "uad-scoring"):
        self._fn, self._name = fn, name
        self._lock = threading.Lock()
        self._running = False
        self._pending = False
        self._pending_force = False
        self.runs = 0
        self.idle = threading.Event()
        self.idle.set()

    def trigger(self, force: bool = False) -> dict:
        with self._lock:
            self._pending_force |= force
            if self._running:
                self._pending = True
                return {"status": "queued"}
            self._running = True
            self.idle.clear()
        threading.Thread(target=self._loop, name=self._name, daemon=True).start()
        return {"status": "started"}

    def _loop(self):
        while True:
            with self._lock:
                force, self._pending_force, self._pending = self._pending_force, False, False
            try:
                self._fn(force)
            except Exception:
                log.exception("%s failed", self._name)
            self.runs += 1
            with self._lock:
                if not self._pending:
                    self._running = False
                    self.idle.set()
                    return


class LabelLoop:
    def __init__(self, app, finetune_model: str | None = None, finetune_every: int = 0,
                 rescore_on_save: bool = True):
        self.app = app
        self.finetune_model = finetune_model or None
        self.finetune_every = int(finetune_every or 0)
        self.rescore_on_save = rescore_on_save
        self._labels_at_last_finetune = None
        self.scorer = CoalescingRunner(self._score)

    def _score(self, force: bool):
        for name, method in self.app._scoring_methods.items():
            if not getattr(method, "automatic", True):  # e.g. pseudo-labelling: only when asked for
                continue
            request = {"method": name, "force": force}
            method(request, self.app.datastore())

    def count_final_labels(self) -> int:
        ds = self.app.datastore()
        return len(ds.get_labeled_images("final")) if hasattr(ds, "get_labeled_images") else 0

    def on_label_saved(self, image_id: str, label_id: str, tag: str = "final") -> dict:
        out: dict = {}
        if tag != "final":
            return out
        n = self.count_final_labels()
        if self._labels_at_last_finetune is None:
            self._labels_at_last_finetune = 0
        trainers = getattr(self.app, "_trainers", {}) or {}
        if (self.finetune_model and self.finetune_every > 0 and self.finetune_model in trainers
                and n - self._labels_at_last_finetune >= self.finetune_every):
            self._labels_at_last_finetune = n
            log.info("label loop: %d final labels, fine-tuning %s", n, self.finetune_model)
            try:
                out["finetune"] = self.app.async_training(self.finetune_model, enqueue=True)
            except Exception as exc:
                log.warning("label loop: fine-tuning could not start: %s", exc)
                out["finetune"] = {"error": str(exc)}
        if self.rescore_on_save and getattr(self.app, "_scoring_methods", None):
            out["scoring"] = self.scorer.trigger(force=False)
        out["final_labels"] = n
        return out
