"""What the server accepts from a client before anything is stored: ids and file names that stay
inside the studies folder, bodies under the size limit, images that are readable 3D volumes of a
sane size, labels that fit their image. Uploads are spooled into one temporary folder per request
that is removed on every path (success, refusal, server fault, client disconnect)."""
from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator

from ..errors import InputError
from ..io import SUPPORTED_EXTENSIONS, load_image

MAX_UPLOAD_BYTES = int(float(os.environ.get("UAD_MAX_UPLOAD_MB", "1024")) * (1 << 20))
# a header may declare any size: refuse before SimpleITK allocates it (2^29 voxels = 2 GB of float32,
# a 0.4 mm whole-head scan is about a tenth of that)
MAX_VOXELS = int(float(os.environ.get("UAD_MAX_VOXELS", str(1 << 29))))
# single-file image formats (.nhdr/.mhd name a second file; .dcm only inside a session folder)
UPLOAD_SUFFIXES = tuple(e for e in SUPPORTED_EXTENSIONS if e not in (".nhdr", ".mhd", ".dcm"))
_ID_FORBIDDEN = ("/", "\\", "\x00", "..")


def check_id(value: str, what: str) -> str:
    """Image ids, label tags and upload names must stay inside the studies folder: no separators,
    no '..', no leading dot; anything else is refused with 400."""
    if not value or any(f in value for f in _ID_FORBIDDEN) or value.startswith(".") or len(value) > 255 \
            or os.path.isabs(value):
        raise InputError(f"{what}: refused {value!r} (path separators, '..' and leading dots are not allowed)", 400)
    return value


def inside(root: str, path: str) -> bool:
    root = os.path.realpath(root)
    return os.path.commonpath([root, os.path.realpath(path)]) == root


def upload_suffix(filename: str | None, what: str, allowed=UPLOAD_SUFFIXES) -> str:
    """The file type of an upload from its name (clients send a path or a bare name; only the
    name's ending is used), or 415 naming the types accepted."""
    name = os.path.basename((filename or "").replace("\\", "/"))
    suffix = next((s for s in allowed if name.lower().endswith(s)), None)
    if suffix is None:
        ext = "".join(pathlib.Path(name).suffixes) or "(none)"
        raise InputError(f"{what}: unsupported file type {ext!r} of {name!r}; expected one of {list(allowed)}", 415)
    return suffix


@contextmanager
def request_folder() -> Iterator[pathlib.Path]:
    """A private temporary folder for one request's uploads, removed however the request ends."""
    folder = tempfile.mkdtemp(prefix="uad_req_")
    try:
        yield pathlib.Path(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def spool(upload, folder: pathlib.Path, name: str) -> pathlib.Path:
    """Copy an UploadFile into `folder/name` in 1 MB chunks; an empty body is refused (415)."""
    path = folder / name
    size = 0
    with open(path, "wb") as out:
        while chunk := await upload.read(1 << 20):
            size += len(chunk)
            out.write(chunk)
    if size == 0:
        raise InputError(f"{name.split('.')[0]}: the uploaded file is empty", 415)
    return path


def check_upload(path: str | os.PathLike, what: str):
    """The uploaded image, loaded, or InputError: 415 when it is no medical image, 422 when it is
    one we cannot use (2D, 4D, NaN, a header declaring more than MAX_VOXELS voxels). Messages name
    `what` (the form field), never the temporary path."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(f"{what}: could not read the uploaded file as a medical image "
                         f"(expected one of {list(UPLOAD_SUFFIXES)})", 415) from None
    size = reader.GetSize()
    n = 1
    for s in size:
        n *= int(s)
    if n > MAX_VOXELS:
        raise InputError(f"{what}: the header declares {'x'.join(map(str, size))} voxels, over the limit of "
                         f"{MAX_VOXELS} (UAD_MAX_VOXELS)")
    try:
        image = load_image(path)
    except InputError as exc:  # an image, but not one we can use (2D, 4D, NaN, ...)
        raise InputError(f"{what}: {str(exc).replace(f'{path}: ', '').replace(str(path), 'the upload')}") from None
    except RuntimeError:  # the header read but the voxels did not (truncated file)
        raise InputError(f"{what}: the uploaded image is truncated or corrupt (its voxels could not be read)",
                         415) from None
    import numpy as np

    if not np.isfinite(sitk.GetArrayViewFromImage(image)).all():
        raise InputError(f"{what}: expected finite intensities, received NaN or infinity")
    return image


def check_label(path: str | os.PathLike, image_path: str | None) -> dict:
    """A final label must be a 3D image with non-negative integer labels in the grid of its image."""
    import numpy as np
    import SimpleITK as sitk

    label = check_upload(path, "label")
    arr = sitk.GetArrayViewFromImage(label)
    if not np.isfinite(arr).all() or not np.all(np.mod(arr, 1) == 0) or arr.min() < 0:
        raise InputError("label: expected non-negative integer labels (a mask), received non-integer values")
    if image_path and os.path.isfile(image_path):
        reader = sitk.ImageFileReader()
        reader.SetFileName(image_path)
        reader.ReadImageInformation()
        if tuple(reader.GetSize()) != tuple(label.GetSize()):
            raise InputError(f"label: size {label.GetSize()} differs from the image's {reader.GetSize()}")
        if not np.allclose(reader.GetSpacing(), label.GetSpacing(), rtol=1e-3, atol=1e-3) or \
                not np.allclose(reader.GetOrigin(), label.GetOrigin(), atol=1e-2) or \
                not np.allclose(reader.GetDirection(), label.GetDirection(), atol=1e-3):
            raise InputError("label: geometry (spacing, origin or direction) differs from the image's")
    return {"voxels": int((np.asarray(arr) > 0).sum())}


class UploadLimit:
    """ASGI middleware: bodies larger than MAX_UPLOAD_BYTES get 413 (by Content-Length up front, or
    while a chunked body streams in)."""

    def __init__(self, app, max_bytes: int | None = None):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        from .responses import error_response

        limit = self.max_bytes if self.max_bytes is not None else MAX_UPLOAD_BYTES
        if scope["type"] != "http" or limit <= 0:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await error_response(413, f"upload: {int(length)} bytes is over the limit of {limit} bytes "
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
            await error_response(413, f"upload: body over the limit of {limit} bytes (UAD_MAX_UPLOAD_MB)")(
                scope, receive, send)
