"""The ASGI app `uad serve` runs: MONAI Label's own FastAPI app, passed to uvicorn through MONAI
Label's `--uvicorn_app` option, with three fixes:

- bad requests get 4xx with a JSON message saying what was wrong (stock: HTTP 500);
- inference runs in a worker thread, so /info and /datastore answer while a volume is inferred
  (stock: the infer route runs on the event loop and everything stalls);
- the infer response carries the float map, the mask and the JSON together.
A failed inference writes nothing into the datastore: results go to temporary files that are
removed, and MONAI Label only saves a label after a successful run.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import tempfile

from fastapi import APIRouter, BackgroundTasks, Depends, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from monailabel.app import app
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.utils.app import app_instance
from requests_toolbelt import MultipartEncoder

from ..io import load_image
from ..weights import UntrainedError
from .tasks import split_request

log = logging.getLogger("uad_label.server")

OUTPUTS = ("image", "json", "all")
_CLIENT_ERRORS = {MONAILabelError.INVALID_INPUT: 422, MONAILabelError.APP_ERROR: 404}


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": message, "status": status})


@app.exception_handler(RequestError)
async def _request_error(_: Request, exc: RequestError):
    return _error(exc.status, exc.message)


@app.exception_handler(MONAILabelException)
async def _monailabel_error(_: Request, exc: MONAILabelException):
    status = _CLIENT_ERRORS.get(exc.error, 500)
    return _error(status, f"{exc.error.value}: {exc.msg}")


@app.exception_handler(ValueError)
async def _value_error(_: Request, exc: ValueError):
    return _error(422, str(exc))


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _check_upload(path: str, what: str) -> None:
    import SimpleITK as sitk

    try:
        image = load_image(path)
    except Exception as exc:
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        try:
            reader.ReadImageInformation()
        except Exception:  # not an image format at all: unsupported media
            raise RequestError(415, f"{what}: could not read the uploaded file as a medical image ({exc})") from None
        raise RequestError(422, f"{what}: {exc}") from None  # an image, but not one we can use (2D, ...)
    if image.GetDimension() != 3:
        raise RequestError(422, f"{what}: expected a 3D volume, received a {image.GetDimension()}D image")


def _params_object(params: str) -> dict:
    """The `params` form field: a JSON object, or 400 saying what it was instead."""
    try:
        p = json.loads(params) if params else {}
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"params: expected a JSON object, received invalid JSON ({exc.msg})") from None
    if not isinstance(p, dict):
        raise RequestError(400, f"params: expected a JSON object, received {type(p).__name__}")
    return p


router = APIRouter()


@router.post("/infer/{model}", summary="Run a detector (uad-label: 4xx on bad input, inference off the event loop)")
async def infer(
    background_tasks: BackgroundTasks,
    model: str,
    image: str = "",
    session_id: str = "",
    params: str = Form("{}"),
    file: UploadFile = File(None),
    label: UploadFile = File(None),
    output: str | None = None,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
):
    instance = app_instance()
    models = sorted(instance.info().get("models", {}))
    if model not in models:
        raise RequestError(404, f"model: unknown model {model!r}; available: {models}")
    if output is not None and output not in OUTPUTS:
        raise RequestError(422, f"output: expected one of {list(OUTPUTS)}, received {output!r}")
    p = _params_object(params)
    try:
        split_request(model, p)
    except ValueError as exc:
        raise RequestError(422, str(exc)) from None

    request = {"model": model, **p}
    if file is not None:
        suffix = "".join(pathlib.Path(file.filename or "upload.nii.gz").suffixes) or ".nii.gz"
        fd, upload = tempfile.mkstemp(prefix="uad_upload_", suffix=suffix)
        background_tasks.add_task(_remove, upload)
        with os.fdopen(fd, "wb") as out:
            while chunk := await file.read(1 << 20):
                out.write(chunk)
        await run_in_threadpool(_check_upload, upload, "file")
        request["image"] = upload
    elif session_id:
        session = instance.sessions().get_session(session_id)
        if not session:
            raise RequestError(404, f"session_id: no session {session_id!r} (expired or never created)")
        request["image"] = session.image
    elif image:
        if not instance.datastore().get_image_uri(image):
            raise RequestError(404, f"image: no image {image!r} in the datastore")
        request["image"] = image
    else:
        raise RequestError(422, "image: give an image id of the datastore, an uploaded file, or a session_id")
    if label is not None:
        raise RequestError(422, "label: anomaly detectors take no input label")

    request["_uad_return_mask"] = output in (None, "all")
    try:
        result = await run_in_threadpool(instance.infer, request)
    except UntrainedError as exc:  # a learned detector without weights says so
        raise RequestError(409, str(exc)) from None
    except ValueError as exc:  # the detector refused the input (empty brain, wrong modality, ...)
        raise RequestError(422, str(exc)) from None
    return _respond(result, output, background_tasks)


@router.post("/train/{model}", summary="Run a training task (uad-label: 404 for a model without a trainer)")
async def train(model: str, params: dict | None = None, run_sync: bool = False, enqueue: bool = False,
                user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
    from monailabel.endpoints.train import run_model

    trainers = sorted(app_instance().info().get("trainers", {}))
    if model not in trainers:
        raise RequestError(404, f"model: no trainer for {model!r}; trainable: {trainers}")
    if run_sync:
        return await run_in_threadpool(run_model, model, params, run_sync, enqueue)
    return run_model(model, params, run_sync, enqueue)


def _respond(result: dict, output: str | None, background_tasks: BackgroundTasks):
    info = dict(result.get("params") or {})
    files = info.pop("_files", {})
    main = result.get("file")
    for path in [main, *files.values()]:
        if path and os.path.exists(path):
            background_tasks.add_task(_remove, path)
    if output == "json":
        return JSONResponse(info)
    if output == "image":
        return FileResponse(main, media_type="application/gzip", filename="map.nii.gz")
    fields = {"params": (None, json.dumps(info), "application/json"),
              "image": ("map.nii.gz", open(main, "rb"), "application/gzip")}
    for name, path in files.items():
        fields[name] = (f"{name}.nii.gz", open(path, "rb"), "application/gzip")
    encoder = MultipartEncoder(fields=fields)
    body = encoder.to_string()
    for _, f, _ in [v for v in fields.values() if v[0]]:
        f.close()
    return Response(content=body, media_type=encoder.content_type)


def _install(router: APIRouter) -> None:
    """Put our routes in front of MONAI Label's: Starlette serves the first route that matches, so
    ours shadow the stock ones with the same path and method (whether FastAPI keeps included
    routers flat or nested)."""
    routes = app.router.routes
    n_before = len(routes)
    app.include_router(router, prefix=settings.MONAI_LABEL_API_STR)
    added = routes[n_before:]
    del routes[n_before:]
    routes[0:0] = added


# --- uploads, ids and labels (issue 9) -------------------------------------------------------------
MAX_UPLOAD_BYTES = int(float(os.environ.get("UAD_MAX_UPLOAD_MB", "1024")) * (1 << 20))
_ID_FORBIDDEN = ("/", "\\", "\x00", "..")


def check_id(value: str, what: str) -> str:
    """Image ids, label tags and upload names must stay inside the studies folder: no separators,
    no '..', no leading dot; anything else is refused with 400."""
    if not value or any(f in value for f in _ID_FORBIDDEN) or value.startswith(".") or len(value) > 255 \
            or os.path.isabs(value):
        raise RequestError(400, f"{what}: refused {value!r} (path separators, '..' and leading dots are not allowed)")
    return value


def _inside(root: str, path: str) -> bool:
    root = os.path.realpath(root)
    return os.path.commonpath([root, os.path.realpath(path)]) == root


class UploadLimit:
    """ASGI middleware: bodies larger than MAX_UPLOAD_BYTES get 413 (by Content-Length up front, or
    while a chunked body streams in)."""

    def __init__(self, app, max_bytes: int | None = None):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        limit = self.max_bytes if self.max_bytes is not None else MAX_UPLOAD_BYTES
        if scope["type"] != "http" or limit <= 0:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _error(413, f"upload: {int(length)} bytes is over the limit of {limit} bytes "
                                     "(UAD_MAX_UPLOAD_MB)")(scope, receive, send)
        seen = 0
        started = False
        too_large = False

        async def counting_receive():
            nonlocal seen, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # stop feeding the app: an exception here would be swallowed by the form parser
                    # and answered with 400, so the app sees a disconnect and we answer 413 instead
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if too_large:
                return  # whatever the app answers to the cut-off body is replaced by the 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not started:
            await _error(413, f"upload: body over the limit of {limit} bytes (UAD_MAX_UPLOAD_MB)")(scope, receive, send)


def _check_label(path: str, image_path: str | None) -> dict:
    """A final label must be a 3D image with integer labels in the grid of its image."""
    import numpy as np
    import SimpleITK as sitk

    _check_upload(path, "label")
    label = load_image(path)
    arr = sitk.GetArrayViewFromImage(label)
    if not np.isfinite(arr).all() or not np.all(np.mod(arr, 1) == 0) or arr.min() < 0:
        raise RequestError(422, "label: expected non-negative integer labels (a mask), received non-integer values")
    if image_path and os.path.isfile(image_path):
        reader = sitk.ImageFileReader()
        reader.SetFileName(image_path)
        reader.ReadImageInformation()
        if tuple(reader.GetSize()) != tuple(label.GetSize()):
            raise RequestError(422, f"label: size {label.GetSize()} differs from the image's {reader.GetSize()}")
        if not np.allclose(reader.GetSpacing(), label.GetSpacing(), rtol=1e-3, atol=1e-3) or \
                not np.allclose(reader.GetOrigin(), label.GetOrigin(), atol=1e-2) or \
                not np.allclose(reader.GetDirection(), label.GetDirection(), atol=1e-3):
            raise RequestError(422, "label: geometry (spacing, origin or direction) differs from the image's")
    return {"voxels": int((np.asarray(arr) > 0).sum())}


@router.put("/datastore/label", summary="Save a finished label (uad-label: validated, ids checked, atomic)")
async def save_label(
    background_tasks: BackgroundTasks,
    image: str,
    params: str = Form("{}"),
    tag: str = "final",
    label: UploadFile = File(...),
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
):
    check_id(image, "image")
    tag = check_id(tag or "final", "tag")
    instance = app_instance()
    ds = instance.datastore()
    image_uri = ds.get_image_uri(image)
    if not image_uri:
        raise RequestError(404, f"image: no image {image!r} in the datastore")
    name = os.path.basename(label.filename or "label.nii.gz")
    suffix = "".join(pathlib.Path(name).suffixes) or ".nii.gz"
    if suffix.lower() not in (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha"):
        raise RequestError(415, f"label: unsupported file type {suffix!r} (NIfTI, NRRD or MHA)")
    p = _params_object(params)
    fd, upload = tempfile.mkstemp(prefix="uad_label_", suffix=suffix)
    background_tasks.add_task(_remove, upload)
    with os.fdopen(fd, "wb") as out:
        while chunk := await label.read(1 << 20):
            out.write(chunk)
    local = image_uri if not str(image_uri).startswith(("http://", "https://")) else None
    stats = await run_in_threadpool(_check_label, upload, local)
    if user and user.username:
        p["user"] = user.username
    p.update(stats)
    label_id = await run_in_threadpool(ds.save_label, image, upload, tag, p)
    hook = instance.on_save_label
    import inspect

    if "tag" in inspect.signature(hook).parameters:  # our app's hook also takes the tag
        res = await run_in_threadpool(hook, image, label_id, tag=tag)
    else:
        res = await run_in_threadpool(hook, image, label_id)
    res = dict(res) if isinstance(res, dict) else {}
    res.update({"image": image, "label": label_id, "tag": tag})
    return res


@router.put("/datastore/image", summary="Upload a new image (uad-label: ids and file names checked)")
async def add_image(
    background_tasks: BackgroundTasks,
    image: str | None = None,
    params: str = Form("{}"),
    file: UploadFile = File(...),
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
):
    raw_name = file.filename or "image.nii.gz"
    if raw_name != os.path.basename(raw_name) or "\\" in raw_name:
        raise RequestError(400, f"file: refused file name {raw_name!r} (no folders allowed)")
    check_id(raw_name, "file name")
    suffix = "".join(pathlib.Path(raw_name).suffixes) or ".nii.gz"
    image_id = check_id(image if image else raw_name[: -len(suffix)] if raw_name.endswith(suffix) else raw_name, "image")
    instance = app_instance()
    ds = instance.datastore()
    root = getattr(ds, "_datastore_path", None)
    if root and not _inside(root, os.path.join(root, image_id + suffix)):
        raise RequestError(400, f"image: refused {image_id!r} (outside the studies folder)")
    try:
        p = json.loads(params) if params else {}
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"params: invalid JSON ({exc.msg})") from None
    fd, upload = tempfile.mkstemp(prefix="uad_image_", suffix=suffix)
    background_tasks.add_task(_remove, upload)
    with os.fdopen(fd, "wb") as out:
        while chunk := await file.read(1 << 20):
            out.write(chunk)
    await run_in_threadpool(_check_upload, upload, "file")
    if user and user.username:
        p["user"] = user.username
    return {"image": await run_in_threadpool(ds.add_image, image_id, upload, p)}


@router.post("/batch/infer/{model}", summary="Run batch inference (uad-label: run_sync off the event loop)")
async def batch_infer(
    model: str,
    images: str = "all",
    params: dict | None = None,
    run_sync: bool = False,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
):
    from monailabel.endpoints.batch_infer import run as stock_run

    instance = app_instance()
    models = sorted(instance.info().get("models", {}))
    if model not in models:
        raise RequestError(404, f"model: unknown model {model!r}; available: {models}")
    if images not in ("all", "labeled", "unlabeled"):
        raise RequestError(422, f"images: expected all, labeled or unlabeled, received {images!r}")
    if run_sync:
        return await run_in_threadpool(stock_run, model, images, params, True)
    return stock_run(model, images, params, False)


app.add_middleware(UploadLimit)


_install(router)
