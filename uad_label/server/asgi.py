"""The ASGI app `uad serve` runs: MONAI Label's own FastAPI app, passed to uvicorn through MONAI
Label's `--uvicorn_app` option, with these fixes:

- refused input (uad_label.errors.InputError, raised by detectors, preprocessing, I/O and the checks
  here) gets its 4xx with a JSON message naming the image id or form field, never a server path;
  any other exception is a 500 with the traceback in the log and a JSON body without internals;
- every route that writes into the datastore or the session store (stock and ours: PUT /datastore/,
  /datastore/image, /datastore/label, the info updates, PUT /session/) validates first and stores
  nothing on failure; uploads live in one temporary folder per request, removed on every path;
- inference runs in a worker thread, so /info and /datastore answer while a volume is inferred;
- results are encoded in memory in the format and voxel type the client asks for (MONAI Label's
  `result_extension` / `result_dtype`: an integer dtype gets the binary mask); the default multipart
  carries the float map, the mask and the JSON together.
"""
from __future__ import annotations

import inspect
import json
import logging
import os

try:  # Triton loaded after TensorFlow (which MONAI Label pulls in via torch.utils.tensorboard) segfaults
    import triton  # noqa: F401
except ImportError:
    pass
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from monailabel.app import app
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.utils.app import app_instance

from ..errors import InputError
from ..weights import UntrainedError
from .responses import error_response, infer_response, public_message
from .tasks import VALIDATED, split_request
from .uploads import (
    UPLOAD_SUFFIXES,
    UploadLimit,
    check_id,
    check_label,
    check_upload,
    inside,
    request_folder,
    spool,
    upload_suffix,
)

log = logging.getLogger("uad_label.server")

OUTPUTS = ("image", "json", "all")
LABEL_SUFFIXES = (".seg.nrrd", *UPLOAD_SUFFIXES)
_CLIENT_ERRORS = {MONAILabelError.INVALID_INPUT: 422, MONAILabelError.APP_ERROR: 404}


@app.exception_handler(InputError)
async def _input_error(_: Request, exc: InputError):
    return error_response(exc.status, public_message(str(exc)))


@app.exception_handler(UntrainedError)
async def _untrained(_: Request, exc: UntrainedError):  # a learned detector without weights says so
    return error_response(409, public_message(str(exc)))


@app.exception_handler(MONAILabelException)
async def _monailabel_error(request: Request, exc: MONAILabelException):
    status = _CLIENT_ERRORS.get(exc.error, 500)
    if status == 500:
        return await _server_fault(request, exc)
    return error_response(status, public_message(f"{exc.error.value}: {exc.msg}"))


@app.exception_handler(Exception)
async def _server_fault(request: Request, exc: Exception):
    log.error("server fault on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal server error; the server log has the details")


def _params_object(params: str, what: str = "params") -> dict:
    """A JSON-object form field, or 400 saying what it was instead."""
    try:
        p = json.loads(params) if params else {}
    except json.JSONDecodeError as exc:
        raise InputError(f"{what}: expected a JSON object, received invalid JSON ({exc.msg})", 400) from None
    if not isinstance(p, dict):
        raise InputError(f"{what}: expected a JSON object, received {type(p).__name__}", 400)
    return p


def _user(user: User, p: dict) -> dict:
    if user and user.username:
        p["user"] = user.username
    return p


router = APIRouter()


@router.post("/infer/{model}", summary="Run a detector (uad-label: 4xx on bad input, inference off the event loop)")
async def infer(
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
        raise InputError(f"model: unknown model {model!r}; available: {models}", 404)
    if output is not None and output not in OUTPUTS:
        raise InputError(f"output: expected one of {list(OUTPUTS)}, received {output!r}")
    p = _params_object(params)
    validated, _ = split_request(model, p)  # refused here, before anything is spooled or queued
    if label is not None:
        raise InputError("label: anomaly detectors take no input label")
    request = {"model": model, **p, VALIDATED: validated, "_uad_in_memory": True,
               "_uad_return_mask": output in (None, "all")}
    with request_folder() as folder:
        names: dict[str, str] = {}
        if file is not None:
            upload = await spool(file, folder, "file" + upload_suffix(file.filename, "file"))
            await run_in_threadpool(check_upload, upload, "file")
            request["image"] = str(upload)
            names[str(upload)] = subject = f"the uploaded file {os.path.basename(file.filename or '')!r}"
        elif session_id:
            session = instance.sessions().get_session(session_id)
            if not session:
                raise InputError(f"session_id: no session {session_id!r} (expired or never created)", 404)
            request["image"] = session.image
            names[str(session.image)] = subject = f"session {session_id!r}"
        elif image:
            uri = instance.datastore().get_image_uri(check_id(image, "image"))
            if not uri:
                raise InputError(f"image: no image {image!r} in the datastore", 404)
            request["image"] = image
            names[str(uri)] = image
            subject = f"image {image!r}"
        else:
            raise InputError("image: give an image id of the datastore, an uploaded file, or a session_id")
        try:
            result = await run_in_threadpool(instance.infer, request)
        except (InputError, UntrainedError) as exc:  # refused input (or no weights): say which image, not where
            status = exc.status if isinstance(exc, InputError) else 409
            raise InputError(f"{subject}: {public_message(str(exc), names)}", status) from None
    return infer_response(result, request, output)


@router.post("/train/{model}", summary="Run a training task (uad-label: 404 without a trainer, 422 for bad options)")
async def train(model: str, params: dict | None = None, run_sync: bool = False, enqueue: bool = False,
                user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
    from monailabel.endpoints.train import run_model

    from ..training import request_from_params

    trainers = sorted(app_instance().info().get("trainers", {}))
    if model not in trainers:
        raise InputError(f"model: no trainer for {model!r}; trainable: {trainers}", 404)
    if params is not None and not isinstance(params, dict):
        raise InputError(f"params: expected a JSON object, received {type(params).__name__}", 400)
    request_from_params(model, dict(params or {}), [], None)  # the trainer's own validation, before queueing
    if run_sync:
        return await run_in_threadpool(run_model, model, params, run_sync, enqueue)
    return run_model(model, params, run_sync, enqueue)


@router.put("/datastore/label", summary="Save a finished label (uad-label: validated, ids checked, atomic)")
async def save_label(
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
        raise InputError(f"image: no image {image!r} in the datastore", 404)
    suffix = upload_suffix(label.filename or "label.nii.gz", "label", LABEL_SUFFIXES)
    p = _user(user, _params_object(params))
    with request_folder() as folder:
        upload = await spool(label, folder, "label" + suffix)
        local = image_uri if not str(image_uri).startswith(("http://", "https://")) else None
        p.update(await run_in_threadpool(check_label, upload, local))
        label_id = await run_in_threadpool(ds.save_label, image, str(upload), tag, p)
    hook = instance.on_save_label
    if "tag" in inspect.signature(hook).parameters:  # our app's hook also takes the tag
        res = await run_in_threadpool(hook, image, label_id, tag=tag)
    else:
        res = await run_in_threadpool(hook, image, label_id)
    res = dict(res) if isinstance(res, dict) else {}
    res.update({"image": image, "label": label_id, "tag": tag})
    return res


@router.put("/datastore/", summary="Upload a new image (stock clients' route; uad-label: validated first)")
@router.put("/datastore/image", summary="Upload a new image (uad-label: ids, file names and contents checked)")
async def add_image(
    image: str | None = None,
    params: str = Form("{}"),
    file: UploadFile = File(...),
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
):
    raw_name = file.filename or "image.nii.gz"
    if not image:  # the id comes from the file name: it must be a plain name
        if raw_name != os.path.basename(raw_name) or "\\" in raw_name:
            raise InputError(f"file: refused file name {raw_name!r} (no folders allowed)", 400)
        check_id(raw_name, "file name")
    suffix = upload_suffix(raw_name, "file")  # MONAI Label's client sends the local path: only its ending counts
    image_id = check_id(image or os.path.basename(raw_name)[: -len(suffix)], "image")
    ds = app_instance().datastore()
    root = getattr(ds, "_datastore_path", None)
    if root and not inside(root, os.path.join(root, image_id + suffix)):
        raise InputError(f"image: refused {image_id!r} (outside the studies folder)", 400)
    p = _user(user, _params_object(params))
    with request_folder() as folder:
        upload = await spool(file, folder, "file" + suffix)
        await run_in_threadpool(check_upload, upload, "file")
        return {"image": await run_in_threadpool(ds.add_image, image_id, str(upload), p)}


@router.put("/datastore/image/info", summary="Update image info (uad-label: JSON object and id checked)")
async def put_image_info(image: str, info: str = Form("{}"),
                         user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))):
    ds = app_instance().datastore()
    if not ds.get_image_uri(check_id(image, "image")):
        raise InputError(f"image: no image {image!r} in the datastore", 404)
    i = _user(user, _params_object(info, "info"))
    return await run_in_threadpool(ds.update_image_info, image, i)


@router.put("/datastore/label/info", summary="Update label info (uad-label: JSON object, id and tag checked)")
@router.put("/datastore/updatelabelinfo", include_in_schema=False)
async def put_label_info(label: str, tag: str, info: str = Form("{}"),
                         user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))):
    ds = app_instance().datastore()
    check_id(label, "label")
    check_id(tag, "tag")
    if not ds.get_label_uri(label, tag):
        raise InputError(f"label: no label {label!r} with tag {tag!r} in the datastore", 404)
    i = _user(user, _params_object(info, "info"))
    return await run_in_threadpool(ds.update_label_info, label, tag, i)


@router.put("/session/", summary="Create a session from uploaded volumes (uad-label: every file validated first)")
async def create_session(
    uncompress: bool = False,
    expiry: int = 0,
    files: list[UploadFile] = File(...),
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
):
    sessions = app_instance().sessions()
    if sessions is None:
        raise InputError("session: sessions are disabled on this server", 406)
    if uncompress:
        raise InputError("uncompress: archives are not accepted; upload the volumes (or DICOM files) themselves")
    if expiry < 0:
        raise InputError(f"expiry: expected seconds >= 0, received {expiry}")
    with request_folder() as folder:
        received = folder / "session"
        received.mkdir()
        dicom = []
        for n, f in enumerate(files):
            name = check_id(f.filename or f"volume{n}.nii.gz", "file name")  # a plain name: no folders
            suffix = upload_suffix(name, "files", (*UPLOAD_SUFFIXES, ".dcm"))
            path = await spool(f, received, name)
            if suffix == ".dcm":
                dicom.append(path)
            else:
                await run_in_threadpool(check_upload, path, f"files[{name!r}]")
        if dicom:
            if len(dicom) != len(files):
                raise InputError("files: a session holds either volumes or the DICOM files of one series, not both")
            await run_in_threadpool(check_upload, received, "files (DICOM series)")
        source = str(received) if len(files) > 1 else str(next(received.iterdir()))
        session_id, info = await run_in_threadpool(sessions.add_session, source, expiry, False)
    return {"session_id": session_id, "session_info": info.to_json()}


@router.post("/activelearning/{strategy}", summary="Next case to review (uad-label: 404 for an unknown strategy)")
async def next_sample(strategy: str, params: dict | None = None,
                      user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    from monailabel.endpoints.activelearning import sample

    strategies = sorted(app_instance().info().get("strategies", {}))
    if strategy not in strategies:
        raise InputError(f"strategy: unknown strategy {strategy!r}; available: {strategies}", 404)
    return await run_in_threadpool(sample, strategy, params, user.username if user else None)


@router.post("/scoring/{method}", summary="Run a scoring method (uad-label: 404 for an unknown method)")
async def scoring(method: str, params: dict | None = None, run_sync: bool = False,
                  user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))):
    from monailabel.endpoints.scoring import run_method

    methods = sorted(app_instance().info().get("scoring", {}))
    if method not in methods:
        raise InputError(f"method: unknown scoring method {method!r}; available: {methods}", 404)
    task = getattr(app_instance(), "_scoring_methods", {}).get(method)
    if hasattr(task, "check_request"):  # refuse bad parameters before anything is queued
        await run_in_threadpool(task.check_request, params or {})
    if run_sync:
        return await run_in_threadpool(run_method, method, params, True)
    return run_method(method, params, False)


@router.post("/batch/infer/{model}", summary="Run batch inference (uad-label: run_sync off the event loop)")
async def batch_infer(
    model: str,
    images: str = "all",
    params: dict | None = None,
    run_sync: bool = False,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
):
    from monailabel.endpoints.batch_infer import run as stock_run

    from ..batch.server import check_batch_params

    instance = app_instance()
    models = sorted(instance.info().get("models", {}))
    if model not in models:
        raise InputError(f"model: unknown model {model!r}; available: {models}", 404)
    if images not in ("all", "labeled", "unlabeled"):
        raise InputError(f"images: expected all, labeled or unlabeled, received {images!r}")
    check_batch_params(model, params or {})
    if run_sync:
        return await run_in_threadpool(stock_run, model, images, params, True)
    return stock_run(model, images, params, False)


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


app.add_middleware(UploadLimit)


_install(router)
