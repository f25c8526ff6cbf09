"""multipart/form-data encoding and decoding on bytes (no `cgi`, no requests_toolbelt)."""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Union


class MultipartError(ValueError):
    pass


@dataclass
class FilePart:
    filename: str
    data: bytes
    content_type: str = "application/octet-stream"


FieldValue = Union[str, bytes, FilePart]


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")


def encode(fields: Union[Mapping[str, FieldValue], Iterable[tuple[str, FieldValue]]],
           boundary: Optional[str] = None) -> tuple[bytes, str]:
    """(body, content type). A field repeated (as for MONAI Label's `files` list) is given as
    several (name, value) pairs."""
    items = list(fields.items()) if isinstance(fields, Mapping) else list(fields)
    boundary = boundary or "----AnomalyReview" + uuid.uuid4().hex
    b = boundary.encode("ascii")
    out = bytearray()
    for name, value in items:
        out += b"--" + b + b"\r\n"
        if isinstance(value, FilePart):
            out += (f'Content-Disposition: form-data; name="{_quote(name)}"; '
                    f'filename="{_quote(value.filename)}"\r\n').encode("utf-8")
            out += f"Content-Type: {value.content_type}\r\n\r\n".encode("ascii")
            data = value.data
        else:
            out += f'Content-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'.encode("utf-8")
            data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        if b"\r\n--" + b in data:
            raise MultipartError("boundary occurs in a field's data; choose another boundary")
        out += data + b"\r\n"
    out += b"--" + b + b"--\r\n"
    return bytes(out), f"multipart/form-data; boundary={boundary}"


@dataclass
class Part:
    headers: dict = field(default_factory=dict)  # lower-case names
    data: bytes = b""

    @property
    def name(self) -> Optional[str]:
        return _disposition_param(self.headers.get("content-disposition", ""), "name")

    @property
    def filename(self) -> Optional[str]:
        return _disposition_param(self.headers.get("content-disposition", ""), "filename")

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "text/plain")


def _disposition_param(header: str, key: str) -> Optional[str]:
    m = re.search(r'(?:^|;)\s*' + key + r'\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))', header, re.IGNORECASE)
    if not m:
        return None
    if m.group(1) is not None:
        return re.sub(r"\\(.)", r"\1", m.group(1))
    return m.group(2)


def boundary_of(content_type: str) -> str:
    if not content_type.lower().startswith("multipart/"):
        raise MultipartError(f"content type: expected multipart/*, received {content_type!r}")
    m = re.search(r'boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', content_type, re.IGNORECASE)
    if not m:
        raise MultipartError(f"content type: no boundary in {content_type!r}")
    return m.group(1) or m.group(2)


def decode(body: bytes, content_type: str) -> list[Part]:
    """The parts of a multipart body, in order."""
    delim = b"--" + boundary_of(content_type).encode("latin-1")
    start = body.find(delim)
    if start < 0:
        raise MultipartError("multipart body: boundary not found")
    parts = []
    pos = start + len(delim)
    while True:
        if body[pos:pos + 2] == b"--":  # closing delimiter
            return parts
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            raise MultipartError("multipart body: truncated after a boundary")
        pos = eol + 2
        head_end = body.find(b"\r\n\r\n", pos)
        if head_end < 0:
            if body.startswith(b"\r\n", pos):  # a part with no headers
                head_end = pos - 2
            else:
                raise MultipartError("multipart body: part headers not terminated")
        headers = {}
        for line in body[pos:head_end].split(b"\r\n"):
            if b":" in line:
                k, v = line.split(b":", 1)
                headers[k.strip().decode("latin-1").lower()] = v.strip().decode("utf-8", "replace")
        data_start = head_end + 4
        nxt = body.find(b"\r\n" + delim, data_start)
        if nxt < 0:
            raise MultipartError("multipart body: missing closing boundary")
        parts.append(Part(headers, body[data_start:nxt]))
        pos = nxt + 2 + len(delim)


def decode_fields(body: bytes, content_type: str) -> dict[str, Part]:
    """Parts by field name (the last one wins when a name repeats)."""
    return {p.name: p for p in decode(body, content_type) if p.name is not None}
