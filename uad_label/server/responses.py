"""What the server sends back: JSON errors without server internals, and infer results encoded in
memory (no temporary files)."""
from __future__ import annotations

import json
import os
import re
import tempfile

from fastapi.responses import JSONResponse, Response
from requests_toolbelt import MultipartEncoder

from .encode import MEDIA_TYPES, encode_image
from .tasks import IN_MEMORY, result_format, stock_result

# an absolute POSIX path inside a message (quotes, spaces, colons and commas end it)
_ABS_PATH = re.compile(r"(?<![\w.])/(?:[^\s'\":,;()\[\]]+/)+([^\s'\":,;()\[\]]+)")


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": message, "status": status})


def public_message(message: str, names: dict[str, str] | None = None) -> str:
    """`message` as a client may see it: known paths replaced by what the client called them
    (image id, upload field), any other absolute path by its last part."""
    text = str(message)
    for path, name in sorted((names or {}).items(), key=lambda kv: -len(kv[0])):
        if path:
            text = text.replace(str(path), name)
    text = text.replace(tempfile.gettempdir() + os.sep, "")
    return _ABS_PATH.sub(lambda m: m.group(1), text)


def infer_response(result: dict, request: dict, output: str | None) -> Response:
    """MONAI Label's response shapes from an in-memory result: `output=json` the JSON, `output=image`
    the image alone, otherwise multipart (params, image, and for uad-label clients mask, extra maps
    and brain). The image is the float map unless the request asked for a label (integer dtype) or
    `result=mask`."""
    info = dict(result.get("params") or {})
    images = info.pop(IN_MEMORY, {})
    if output == "json":
        return JSONResponse(info)
    _, ext, dtype = result_format(request)
    compress = request.get("result_compress", True) is not False
    name = "mask" if dtype is not None and dtype.kind in "iu" or request.get("result") == "mask" else "map"
    main = encode_image(images["image"], ext, dtype, compress)
    if output == "image":
        return Response(main, media_type=MEDIA_TYPES[ext],
                        headers={"Content-Disposition": f'attachment; filename="{name}{ext}"'})
    fields = {"params": (None, json.dumps(info), "application/json"),
              "image": (f"{name}{ext}", main, MEDIA_TYPES[ext])}
    if not stock_result(request):
        for key, img in images.items():
            if key != "image":
                fields[key] = (f"{key}.nii.gz", encode_image(img), MEDIA_TYPES[".nii.gz"])
    encoder = MultipartEncoder(fields=fields)
    return Response(content=encoder.to_string(), media_type=encoder.content_type)
