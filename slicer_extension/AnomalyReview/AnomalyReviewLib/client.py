"""HTTP client of the uad-label server (MONAI Label endpoints plus our /infer), standard library only.

Every call can take a JobContext (see jobs.py): uploads and downloads report progress, and a
cancelled context closes the connection, so a call blocked while the server infers returns at
once with `Cancelled`. Server errors become `ServerError(status, detail)` with the server's own
message ({"detail": ...}), never a traceback.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from . import multipart, nifti
from .jobs import Cancelled, JobContext

CHUNK = 1 << 16


class ServerError(Exception):
    """The server answered with an error status, or could not be reached (status 0)."""

    def __init__(self, status: int, detail: str, method: str = "", path: str = ""):
        self.status, self.detail, self.method, self.path = status, detail, method, path
        where = f" ({method} {path})" if method else ""
        super().__init__(f"HTTP {status}{where}: {detail}" if status else f"server unreachable{where}: {detail}")


def _error_detail(body: bytes, content_type: str) -> str:
    text = body.decode("utf-8", "replace").strip()
    if "json" in content_type or text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            return text[:2000] or "(no message)"
        detail = obj.get("detail", obj) if isinstance(obj, dict) else obj
        if isinstance(detail, list):  # FastAPI validation errors
            return "; ".join(f"{'.'.join(str(x) for x in d.get('loc', []))}: {d.get('msg', d)}"
                             if isinstance(d, dict) else str(d) for d in detail)
        return detail if isinstance(detail, str) else json.dumps(detail)
    return text[:2000] or "(no message)"


@dataclass
class ModelInfo:
    name: str
    type: str
    description: str = ""
    labels: Any = None
    params: dict = field(default_factory=dict)  # name -> {"default", "type", "help", ...}
    modalities: list = field(default_factory=lambda: ["FLAIR"])
    optional_modalities: list = field(default_factory=list)
    raw: dict = field(default_factory=dict)

    @property
    def is_segmenter(self) -> bool:
        return self.type.lower() in ("segmentation", "segmenter", "deepedit", "deepgrow")

    @classmethod
    def from_info(cls, name: str, d: dict) -> "ModelInfo":
        params = d.get("params") if isinstance(d.get("params"), dict) else {}
        if not params and isinstance(d.get("config"), dict):  # a stock MONAI Label model: its config
            params = {k: {"default": v, "type": type(v).__name__, "help": ""} for k, v in d["config"].items()}
        return cls(name=name, type=str(d.get("type", "")), description=d.get("description", "") or "",
                   labels=d.get("labels"), params=params, modalities=list(d.get("modalities") or ["FLAIR"]),
                   optional_modalities=list(d.get("optional_modalities") or []), raw=d)


def coerce_param(spec: dict, text: Any) -> Any:
    """A value typed in the options table (string) -> the JSON value the parameter expects."""
    if not isinstance(text, str):
        return text
    t = text.strip()
    kind = spec.get("type", "str")
    if t == "" or t.lower() in ("none", "null"):
        if spec.get("nullable") or spec.get("default") is None:
            return None
        raise ValueError(f"parameter: expected a value of type {kind}, received an empty field")
    if kind == "bool":
        if t.lower() in ("true", "1", "yes", "on"):
            return True
        if t.lower() in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"expected true or false, received {text!r}")
    if kind == "int":
        return int(float(t)) if float(t).is_integer() else float(t)
    if kind == "float":
        return float(t)
    if kind in ("list", "dict"):
        return json.loads(t)
    return t


def changed_params(model: ModelInfo, edits: Mapping[str, Any]) -> dict:
    """Parameters whose edited value differs from the default (what goes in the request)."""
    out = {}
    for name, value in edits.items():
        spec = model.params.get(name, {})
        try:
            v = coerce_param(spec, value)
        except ValueError as exc:
            raise ValueError(f"parameter '{name}': {exc}") from None
        if name not in model.params or v != spec.get("default"):
            out[name] = v
    return out


@dataclass
class InferResult:
    """What /infer returned: the JSON info, the float map, the mask and extra maps (uncertainty...)."""
    model: str
    info: dict
    map: Optional[nifti.NiftiImage]
    mask: Optional[nifti.NiftiImage] = None
    extras: dict = field(default_factory=dict)  # name -> NiftiImage
    files: dict = field(default_factory=dict)  # name -> the bytes received (.nii.gz), for Slicer to load

    @property
    def threshold(self) -> Optional[float]:
        t = self.info.get("threshold")
        return None if t is None else float(t)

    def save_files(self, folder: Union[str, os.PathLike], prefix: str = "") -> dict:
        """Write the received NIfTI files (for slicer.util.loadVolume); name -> path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = {}
        for name, data in self.files.items():
            p = folder / f"{prefix}{name}.nii.gz"
            p.write_bytes(data)
            out[name] = p
        return out


def decode_infer_response(model: str, body: bytes, content_type: str) -> InferResult:
    """Multipart (params + image + mask + extras), JSON only (output=json) or the map only."""
    ct = content_type.lower()
    if ct.startswith("multipart/"):
        parts = multipart.decode_fields(body, content_type)
        if "params" not in parts:
            raise ValueError(f"infer response: no 'params' part (parts: {sorted(parts)})")
        info = json.loads(parts["params"].data.decode("utf-8") or "{}")
        files = {name: p.data for name, p in parts.items() if name != "params"}
        images = {name: nifti.read_bytes(data) for name, data in files.items()}
        amap = images.pop("image", None)
        mask = images.pop("mask", None)
        if mask is not None:
            mask = nifti.NiftiImage(mask.array.astype("uint8"), mask.affine, mask.header)
        return InferResult(model, info, amap, mask, images, files)
    if "json" in ct:
        return InferResult(model, json.loads(body.decode("utf-8") or "{}"), None)
    image = nifti.read_bytes(body)
    return InferResult(model, {}, image, files={"image": body})


class Client:
    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 30.0,
                 infer_timeout: Optional[float] = 3600.0):
        url = url.strip() or "http://127.0.0.1:8000"
        if "://" not in url:
            url = "http://" + url
        self.url = url.rstrip("/")
        parsed = urllib.parse.urlsplit(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"server URL: expected http(s)://host[:port], received {url!r}")
        self._scheme, self._host, self._port = parsed.scheme, parsed.hostname, parsed.port
        self._prefix = parsed.path.rstrip("/")
        self.token = token or None
        self.timeout = timeout
        self.infer_timeout = infer_timeout

    # ------------------------------------------------------------------ transport
    def _connection(self, timeout: Optional[float]):
        if self._scheme == "https":
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def request(self, method: str, path: str, query: Optional[Mapping] = None, body: bytes = b"",
                content_type: Optional[str] = None, ctx: Optional[JobContext] = None,
                timeout: Optional[float] = None, progress_span=(0.0, 1.0), label: str = "") -> tuple[int, dict, bytes]:
        """(status, headers lower-cased, body); raises ServerError for >= 400 or no connection,
        Cancelled when ctx is cancelled."""
        q = {k: v for k, v in (query or {}).items() if v is not None and v != ""}
        target = self._prefix + path + ("?" + urllib.parse.urlencode(q) if q else "")
        headers = {"Accept": "*/*", "Content-Length": str(len(body))}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        conn = self._connection(self.timeout if timeout is None else timeout)
        unregister = ctx.on_cancel(lambda: _abort(conn)) if ctx else (lambda: None)
        lo, hi = progress_span
        up_end = lo + (hi - lo) * (0.3 if len(body) > CHUNK else 0.0)
        try:
            if ctx:
                ctx.check()
            conn.putrequest(method, target, skip_accept_encoding=True)
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.endheaders()
            for start in range(0, len(body), CHUNK):
                conn.send(body[start:start + CHUNK])
                if ctx:
                    ctx.progress(lo + (up_end - lo) * min(1.0, (start + CHUNK) / len(body)),
                                 f"{label}: uploading {min(len(body), start + CHUNK) >> 10} / {len(body) >> 10} KiB")
            if ctx:
                ctx.progress(None, f"{label}: waiting for the server")
            resp = conn.getresponse()
            total = int(resp.getheader("Content-Length") or 0)
            chunks, got = [], 0
            while True:
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
                if ctx:
                    ctx.progress(up_end + (hi - up_end) * got / total if total else None,
                                 f"{label}: downloading {got >> 10} KiB")
            data = b"".join(chunks)
            rheaders = {k.lower(): v for k, v in resp.getheaders()}
        except Cancelled:
            raise
        except (OSError, http.client.HTTPException) as exc:
            if ctx and ctx.cancelled:
                raise Cancelled("cancelled") from None
            raise ServerError(0, f"{type(exc).__name__}: {exc} (is the server running at {self.url}?)",
                              method, path) from None
        finally:
            unregister()
            conn.close()
        if ctx and ctx.cancelled:
            raise Cancelled("cancelled")
        if resp.status >= 400:
            raise ServerError(resp.status, _error_detail(data, rheaders.get("content-type", "")), method, path)
        return resp.status, rheaders, data

    def _json(self, method: str, path: str, query=None, body: bytes = b"", content_type=None, ctx=None,
              timeout=None, label="") -> Any:
        _, headers, data = self.request(method, path, query, body, content_type, ctx, timeout, label=label)
        if not data:
            return {}
        try:
            return json.loads(data.decode("utf-8"))
        except ValueError:
            raise ServerError(200, f"expected JSON, received {data[:200]!r}", method, path) from None

    # ------------------------------------------------------------------ MONAI Label endpoints
    def login(self, username: str, password: str) -> str:
        """MONAI Label's auth: POST /auth/token (OAuth2 password form); keeps the bearer token."""
        body = urllib.parse.urlencode({"username": username, "password": password}).encode()
        obj = self._json("POST", "/auth/token", body=body, content_type="application/x-www-form-urlencoded")
        self.token = obj["access_token"]
        return self.token

    def info(self, ctx: Optional[JobContext] = None) -> dict:
        return self._json("GET", "/info/", ctx=ctx, label="info")

    def models(self, info: Optional[dict] = None) -> dict[str, ModelInfo]:
        """Every model the server serves, detectors and segmenters alike (none hidden by type)."""
        info = self.info() if info is None else info
        return {name: ModelInfo.from_info(name, d or {}) for name, d in sorted((info.get("models") or {}).items())}

    def strategies(self, info: Optional[dict] = None) -> list[str]:
        info = self.info() if info is None else info
        return sorted(info.get("strategies") or {})

    def datastore(self, output: str = "all", ctx=None) -> dict:
        return self._json("GET", "/datastore/", {"output": output}, ctx=ctx, label="datastore")

    def images(self) -> list[str]:
        return sorted((self.datastore("all").get("objects") or {}))

    def download_image(self, image: str, ctx: Optional[JobContext] = None) -> tuple[str, bytes]:
        """(file name, bytes) of a datastore image."""
        _, headers, data = self.request("GET", "/datastore/image", {"image": image}, ctx=ctx,
                                        timeout=self.infer_timeout, label="download")
        name = multipart._disposition_param(headers.get("content-disposition", ""), "filename") or f"{image}.nii.gz"
        name = urllib.parse.unquote(name.split("''", 1)[-1]) if "''" in name else name
        return os.path.basename(name), data

    def create_session(self, files: Mapping[str, Union[bytes, str, os.PathLike]], expiry: int = 0,
                       ctx: Optional[JobContext] = None) -> str:
        """PUT /session/: upload one or more volumes (file name -> bytes or path); the session id."""
        parts = []
        for name, data in files.items():
            if not isinstance(data, (bytes, bytearray)):
                data = Path(data).read_bytes()
            parts.append(("files", multipart.FilePart(os.path.basename(name), bytes(data), "application/gzip")))
        body, ct = multipart.encode(parts)
        obj = self._json("PUT", "/session/", {"expiry": expiry or None}, body, ct, ctx, self.infer_timeout,
                         label="session upload")
        return obj["session_id"]

    def remove_session(self, session_id: str) -> dict:
        return self._json("DELETE", f"/session/{urllib.parse.quote(session_id)}")

    def infer(self, model: str, image: Optional[str] = None, session_id: Optional[str] = None,
              file: Optional[Union[bytes, str, os.PathLike]] = None, file_name: str = "scan_FLAIR.nii.gz",
              params: Optional[dict] = None, output: Optional[str] = None,
              ctx: Optional[JobContext] = None) -> InferResult:
        """POST /infer/{model}: the float map (never cast), the mask and the JSON info.

        Give exactly one of `image` (datastore id), `session_id` (a PUT /session/ upload) or `file`
        (bytes or path, uploaded with the request). `output`: None (all), 'json' or 'image'."""
        given = [x is not None for x in (image, session_id, file)]
        if sum(given) != 1:
            raise ValueError("infer: give exactly one of image, session_id, file")
        fields: list = [("params", json.dumps(params or {}))]
        if file is not None:
            if not isinstance(file, (bytes, bytearray)):
                file_name = os.path.basename(str(file))
                file = Path(file).read_bytes()
            fields.append(("file", multipart.FilePart(file_name, bytes(file), "application/gzip")))
        body, ct = multipart.encode(fields)
        query = {"image": image, "session_id": session_id, "output": output}
        t = time.time()
        _, headers, data = self.request("POST", f"/infer/{urllib.parse.quote(model)}", query, body, ct, ctx,
                                        self.infer_timeout, label=f"infer {model}")
        if ctx:
            ctx.progress(1.0, f"infer {model}: decoding")
        result = decode_infer_response(model, data, headers.get("content-type", ""))
        result.info.setdefault("client_seconds", round(time.time() - t, 3))
        return result

    def save_label(self, image: str, label: Union[bytes, str, os.PathLike, nifti.NiftiImage], tag: str = "final",
                   params: Optional[dict] = None, ctx: Optional[JobContext] = None) -> dict:
        """PUT /datastore/label?image=ID&tag=TAG with the label file (form field `label`)."""
        if isinstance(label, nifti.NiftiImage):
            label = nifti.to_bytes(label, dtype="uint8")
        elif not isinstance(label, (bytes, bytearray)):
            label = Path(label).read_bytes()
        part = multipart.FilePart(f"{image}.nii.gz", bytes(label), "application/gzip")
        body, ct = multipart.encode([("params", json.dumps(params or {})), ("label", part)])
        return self._json("PUT", "/datastore/label", {"image": image, "tag": tag}, body, ct, ctx, self.infer_timeout,
                          label="save label")

    def download_label(self, image: str, tag: str = "final") -> bytes:
        return self.request("GET", "/datastore/label", {"label": image, "tag": tag}, timeout=self.infer_timeout)[2]

    def next_sample(self, strategy: str = "random", params: Optional[dict] = None, ctx=None) -> dict:
        """POST /activelearning/{strategy}: the next image to review ({} when none is left)."""
        body = json.dumps(params or {}).encode()
        return self._json("POST", f"/activelearning/{urllib.parse.quote(strategy)}", body=body,
                          content_type="application/json", ctx=ctx, timeout=self.infer_timeout, label="next case")

    def train(self, model: str, params: Optional[dict] = None, ctx=None, check: bool = True) -> Any:
        """POST /train/{model}; the server's 4xx/5xx -> ServerError with its message.

        With `check`, first ask /info/ whether the server has a trainer of that name: MONAI Label
        0.8 queues a training task for any name and it only fails later in the background."""
        if check:
            trainers = sorted((self.info(ctx).get("trainers") or {}))
            if model not in trainers:
                raise ServerError(404, f"the server has no trainer for {model!r} (trainers: {trainers})",
                                  "POST", f"/train/{model}")
        body = json.dumps(params or {}).encode()
        return self._json("POST", f"/train/{urllib.parse.quote(model)}", body=body, content_type="application/json",
                          ctx=ctx, label="train")

    def train_status(self) -> Any:
        return self._json("GET", "/train/")


def _abort(conn: http.client.HTTPConnection) -> None:
    """Unblock a thread waiting on this connection (called from another thread)."""
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
