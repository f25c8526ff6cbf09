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
    try:
        p = json.loads(params) if params else {}
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"params: expected a JSON object, received invalid JSON ({exc.msg})") from None
    if not isinstance(p, dict):
        raise RequestError(400, f"params: expected a JSON object, received {type(p).__name__}")
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
    except ValueError as exc:  # the detector refused the input (empty brain, wrong modality, ...)
        raise RequestError(422, str(exc)) from None
    return _respond(result, output, background_tasks)


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


_install(router)
