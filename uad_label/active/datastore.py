"""MONAI Label's local datastore, made safe for many clients and for crashes.

What monailabel 0.8.5's LocalDatastore does, and what this subclass changes:

- it holds a file lock (`<studies>/.lock`, filelock) while it writes `datastore_v2.json`, but writes
  the file in place (`open(path, "w")`): a crash (kill -9) in the middle leaves truncated JSON and the
  next start fails. Here the JSON goes to a temporary file in the same folder, is fsynced and
  `os.replace`d over the old one: the file on disk is always the old or the new version, whole.
- `update_image_info` / `update_label_info` mutate and write without the lock, and every writer
  dumps its whole in-memory copy: a scoring subprocess and the server could overwrite each other's
  updates. Here every mutation holds one reentrant lock (file lock across processes, per-thread
  reentrancy), re-reads the JSON if another process changed it, mutates, and writes.
- labels are copied into place with `shutil.copy`; here they are copied to a temporary name and
  renamed, so a label file is whole or absent.
- a datastore JSON that does not parse (left by an older version or a full disk) is moved aside as
  `datastore_v2.json.corrupt-<ts>` and the datastore is rebuilt from the files on disk instead of
  refusing to start.
- atomic replace shows up as a *move* to file watchers: the auto-reload handler reloads on it.
"""
from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from typing import Any, Dict

from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore, LocalDatastoreModel
from monailabel.interfaces.exception import ImageNotFoundException, LabelNotFoundException

from ..atomic import copy_file

log = logging.getLogger(__name__)


class SafeLocalDatastore(LocalDatastore):
    def __init__(self, datastore_path: str, *args, **kwargs):
        os.makedirs(datastore_path, exist_ok=True)
        # one FileLock instance: thread-local and reentrant within a thread, exclusive across threads
        # (separate descriptors) and processes (flock)
        self._uad_lock = FileLock(os.path.join(datastore_path, ".lock"))
        super().__init__(datastore_path, *args, **kwargs)
        handler = getattr(self, "_handler", None)
        if handler is not None:
            handler.on_moved = self._on_moved_event

    @contextmanager
    def locked(self):
        with self._uad_lock:
            yield

    # -- reading and writing the JSON ---------------------------------------------------------
    def _init_from_datastore_file(self, throw_exception=False):
        with self.locked():
            path = self._datastore_config_path
            if not os.path.exists(path):
                return
            ts = os.stat(path).st_mtime
            if self._config_ts == ts:
                return
            try:
                with open(path) as fp:
                    model = LocalDatastoreModel.model_validate_json(fp.read())
            except ValueError as exc:
                if self._config_ts:  # we hold a good copy in memory: keep it, rewrite the file
                    log.error("datastore JSON %s does not parse (%s); keeping the copy in memory", path, exc)
                    self._write_unlocked()
                    return
                aside = f"{path}.corrupt-{int(time.time())}"
                os.replace(path, aside)
                log.error("datastore JSON %s does not parse (%s); moved to %s, rebuilding from the files",
                          path, exc, aside)
                return
            model.base_path = self._datastore_path
            self._datastore = model
            self._config_ts = ts

    def _write_unlocked(self) -> None:
        path = self._datastore_config_path
        from ..atomic import write_text

        write_text(path, json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str),
                   fsync=True)
        self._config_ts = os.stat(path).st_mtime

    def _update_datastore_file(self, lock=True):
        with self.locked():
            self._write_unlocked()

    def reload_if_changed(self) -> None:
        self._init_from_datastore_file()

    def _on_moved_event(self, event):
        if getattr(event, "dest_path", None) == self._datastore_config_path:
            self._init_from_datastore_file()

    def _reconcile_datastore(self):
        with self.locked():
            return super()._reconcile_datastore()

    # -- mutations ----------------------------------------------------------------------------
    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        id_, image_ext = self._to_id(os.path.basename(image_filename))
        image_id = image_id or id_
        name = self._filename(image_id, image_ext)
        dest = os.path.realpath(os.path.join(self._datastore.image_path(), name))
        with self.locked():
            self._init_from_datastore_file()
            copy_file(image_filename, dest, fsync=True)
            info = dict(image_info or {})
            info["ts"] = int(time.time())
            info["name"] = name
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=image_ext))
            self._write_unlocked()
        return image_id

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        with self.locked():
            self._init_from_datastore_file()
            obj = self._datastore.objects.get(image_id)
            if not obj:
                raise ImageNotFoundException(f"Image {image_id} not found")
            _, label_ext = self._to_id(os.path.basename(label_filename))
            label_path = self._datastore.label_path(label_tag)
            name = self._filename(image_id, label_ext)
            os.makedirs(label_path, exist_ok=True)
            copy_file(label_filename, os.path.join(label_path, name), fsync=True)
            info = dict(label_info or {})
            info["ts"] = int(time.time())
            info["name"] = name
            obj.labels[label_tag] = DataModel(info=info, ext=label_ext)
            self._write_unlocked()
        return image_id

    def update_image_info(self, image_id: str, info: Dict[str, Any]) -> None:
        with self.locked():
            self._init_from_datastore_file()
            obj = self._datastore.objects.get(image_id)
            if not obj:
                raise ImageNotFoundException(f"Image {image_id} not found")
            obj.image.info.update(info)
            self._write_unlocked()

    def merge_image_info(self, image_id: str, key: str, value: Dict[str, Any]) -> Dict[str, Any]:
        """info[key].update(value) under the lock (for nested dicts several writers share)."""
        with self.locked():
            self._init_from_datastore_file()
            obj = self._datastore.objects.get(image_id)
            if not obj:
                raise ImageNotFoundException(f"Image {image_id} not found")
            current = dict(obj.image.info.get(key) or {})
            current.update(value)
            obj.image.info[key] = current
            self._write_unlocked()
            return current

    def update_label_info(self, label_id: str, label_tag: str, info: Dict[str, Any]) -> None:
        with self.locked():
            self._init_from_datastore_file()
            label = self._datastore.label(label_id, label_tag)
            if not label:
                raise LabelNotFoundException(f"Label: {label_id} Tag: {label_tag} not found")
            label.info.update(info)
            self._write_unlocked()
