"""Minimal NIfTI-1 reader and writer (single file, .nii or .nii.gz) on numpy only.

Enough for what the review needs: the float anomaly map and the uint8 mask the server returns,
and the final label written back in the scan's geometry. Arrays are indexed (i, j, k) like the
file's voxel order (Slicer's IJK); `affine` maps (i, j, k, 1) to RAS millimetres.

Geometry follows the NIfTI-1 rules: the sform when sform_code > 0, else the qform when
qform_code > 0, else the pixel spacing alone. scl_slope / scl_inter are applied when the slope is
neither 0 nor (1, 0).
"""
from __future__ import annotations

import gzip
import io
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HEADER_SIZE = 348

DTYPES = {  # NIfTI datatype code -> numpy dtype (native byte order decided at read time)
    2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64,
    256: np.int8, 512: np.uint16, 768: np.uint32, 1024: np.int64, 1280: np.uint64,
}
CODES = {np.dtype(v).name: k for k, v in DTYPES.items()}

# (name, struct format, offset) of the header fields used here
_FIELDS = [
    ("sizeof_hdr", "i", 0), ("dim", "8h", 40), ("intent_code", "h", 68), ("datatype", "h", 70),
    ("bitpix", "h", 72), ("pixdim", "8f", 76), ("vox_offset", "f", 108), ("scl_slope", "f", 112),
    ("scl_inter", "f", 116), ("xyzt_units", "B", 123), ("descrip", "80s", 148), ("qform_code", "h", 252),
    ("sform_code", "h", 254), ("quatern", "3f", 256), ("qoffset", "3f", 268), ("srow_x", "4f", 280),
    ("srow_y", "4f", 296), ("srow_z", "4f", 312), ("magic", "4s", 344),
]


class NiftiError(ValueError):
    pass


@dataclass
class NiftiImage:
    """A 3D (or 4D) volume: `array` indexed (i, j, k[, t]), `affine` voxel index -> RAS mm."""
    array: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    header: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def spacing(self) -> np.ndarray:
        return np.sqrt((np.asarray(self.affine)[:3, :3] ** 2).sum(axis=0))

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(np.asarray(self.affine)[:3, :3])))

    def index_to_ras(self, index) -> np.ndarray:
        """(N, 3) continuous voxel indices (i, j, k) -> (N, 3) RAS millimetres."""
        idx = np.asarray(index, np.float64).reshape(-1, 3)
        a = np.asarray(self.affine, np.float64)
        return idx @ a[:3, :3].T + a[:3, 3]

    def ras_to_index(self, ras) -> np.ndarray:
        p = np.asarray(ras, np.float64).reshape(-1, 3)
        a = np.linalg.inv(np.asarray(self.affine, np.float64))
        return p @ a[:3, :3].T + a[:3, 3]

    def with_array(self, array: np.ndarray) -> "NiftiImage":
        """Same geometry, other voxels (the label of a scan, a re-thresholded mask)."""
        array = np.asarray(array)
        if array.shape[:3] != self.shape[:3]:
            raise ValueError(f"array: expected shape {self.shape[:3]}, received {array.shape}")
        return NiftiImage(array, np.array(self.affine, np.float64))


# ----------------------------------------------------------------------------- reading

def _decompress(data: bytes) -> bytes:
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _parse_header(raw: bytes) -> tuple[dict, str]:
    if len(raw) < HEADER_SIZE:
        raise NiftiError(f"NIfTI: expected at least {HEADER_SIZE} header bytes, received {len(raw)}")
    for endian in ("<", ">"):
        if struct.unpack_from(endian + "i", raw, 0)[0] == HEADER_SIZE:
            break
    else:
        raise NiftiError("NIfTI: sizeof_hdr is not 348 in either byte order (not a NIfTI-1 file)")
    hdr = {}
    for name, fmt, off in _FIELDS:
        vals = struct.unpack_from(endian + fmt, raw, off)
        hdr[name] = vals[0] if len(vals) == 1 else list(vals)
    if hdr["magic"][:3] not in (b"n+1", b"ni1"):
        raise NiftiError(f"NIfTI: unexpected magic {hdr['magic']!r} (NIfTI-2 and Analyze are not supported)")
    if hdr["magic"][:3] == b"ni1":
        raise NiftiError("NIfTI: a .hdr/.img pair; expected a single .nii(.gz) file")
    return hdr, endian


def quaternion_to_matrix(b: float, c: float, d: float) -> np.ndarray:
    a = np.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
    return np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
    ])


def header_affine(hdr: dict) -> np.ndarray:
    pix = np.asarray(hdr["pixdim"], np.float64)
    aff = np.eye(4)
    if hdr["sform_code"] > 0:
        aff[:3] = np.array([hdr["srow_x"], hdr["srow_y"], hdr["srow_z"]], np.float64)
    elif hdr["qform_code"] > 0:
        r = quaternion_to_matrix(*hdr["quatern"])
        zooms = np.where(pix[1:4] > 0, pix[1:4], 1.0)
        qfac = -1.0 if pix[0] < 0 else 1.0
        aff[:3, :3] = r * np.array([zooms[0], zooms[1], zooms[2] * qfac])
        aff[:3, 3] = hdr["qoffset"]
    else:  # method 1 of the standard: spacing only
        aff[:3, :3] = np.diag(np.where(pix[1:4] > 0, pix[1:4], 1.0))
    return aff


def read_bytes(data: bytes) -> NiftiImage:
    raw = _decompress(data)
    hdr, endian = _parse_header(raw)
    ndim = int(hdr["dim"][0])
    if not 1 <= ndim <= 7:
        raise NiftiError(f"NIfTI: dim[0] must be in 1..7, received {ndim}")
    shape = tuple(int(n) for n in hdr["dim"][1:ndim + 1])
    if hdr["datatype"] not in DTYPES:
        raise NiftiError(f"NIfTI: unsupported datatype code {hdr['datatype']}")
    dtype = np.dtype(DTYPES[hdr["datatype"]]).newbyteorder(endian)
    offset = int(hdr["vox_offset"]) or HEADER_SIZE + 4
    count = int(np.prod(shape))
    need = offset + count * dtype.itemsize
    if len(raw) < need:
        raise NiftiError(f"NIfTI: expected {need} bytes for {shape} {dtype.name}, received {len(raw)}")
    arr = np.frombuffer(raw, dtype, count, offset).reshape(shape, order="F")
    arr = arr.astype(arr.dtype.newbyteorder("="), copy=True)
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    slope, inter = float(hdr["scl_slope"]), float(hdr["scl_inter"])
    if np.isfinite(slope) and slope != 0 and (slope, inter) != (1.0, 0.0):
        arr = arr.astype(np.float64 if arr.dtype == np.float64 else np.float32) * slope + inter
    return NiftiImage(arr, header_affine(hdr), hdr)


def read(path: str | Path) -> NiftiImage:
    return read_bytes(Path(path).read_bytes())


# ----------------------------------------------------------------------------- writing

def matrix_to_quaternion(r: np.ndarray) -> tuple[float, float, float]:
    """(b, c, d) of a proper rotation matrix (the NIfTI reference's nifti_mat44_to_quatern)."""
    r11, r12, r13 = r[0]
    r21, r22, r23 = r[1]
    r31, r32, r33 = r[2]
    a = r11 + r22 + r33 + 1.0
    if a > 0.5:
        a = 0.5 * np.sqrt(a)
        b, c, d = 0.25 * (r32 - r23) / a, 0.25 * (r13 - r31) / a, 0.25 * (r21 - r12) / a
    else:
        xd, yd, zd = 1.0 + r11 - (r22 + r33), 1.0 + r22 - (r11 + r33), 1.0 + r33 - (r11 + r22)
        if xd > 1.0:
            b = 0.5 * np.sqrt(xd)
            c, d, a = 0.25 * (r12 + r21) / b, 0.25 * (r13 + r31) / b, 0.25 * (r32 - r23) / b
        elif yd > 1.0:
            c = 0.5 * np.sqrt(yd)
            b, d, a = 0.25 * (r12 + r21) / c, 0.25 * (r23 + r32) / c, 0.25 * (r13 - r31) / c
        else:
            d = 0.5 * np.sqrt(zd)
            b, c, a = 0.25 * (r13 + r31) / d, 0.25 * (r23 + r32) / d, 0.25 * (r21 - r12) / d
        if a < 0:
            b, c, d = -b, -c, -d
    return float(b), float(c), float(d)


def to_bytes(image: NiftiImage, compress: bool = True, dtype=None) -> bytes:
    arr = np.asarray(image.array)
    if dtype is not None:
        arr = arr.astype(dtype)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.dtype.name not in CODES:
        raise NiftiError(f"NIfTI: cannot write dtype {arr.dtype}")
    aff = np.asarray(image.affine, np.float64)
    m = aff[:3, :3]
    zooms = np.sqrt((m ** 2).sum(axis=0))
    zooms = np.where(zooms > 0, zooms, 1.0)
    rot = m / zooms
    u, _, vt = np.linalg.svd(rot)  # nearest orthonormal matrix
    rot = u @ vt
    qfac = 1.0
    if np.linalg.det(rot) < 0:
        qfac = -1.0
        rot[:, 2] *= -1
    quat = matrix_to_quaternion(rot)

    hdr = bytearray(HEADER_SIZE)
    pack = lambda fmt, off, *v: struct.pack_into("<" + fmt, hdr, off, *v)  # noqa: E731
    dims = [arr.ndim, *arr.shape] + [1] * (7 - arr.ndim)
    pack("i", 0, HEADER_SIZE)
    hdr[38] = ord("r")
    pack("8h", 40, *dims)
    pack("h", 70, CODES[arr.dtype.name])
    pack("h", 72, arr.dtype.itemsize * 8)
    pack("8f", 76, qfac, *zooms, *([1.0] * 4))
    pack("f", 108, 352.0)
    pack("f", 112, 1.0)
    pack("f", 116, 0.0)
    hdr[123] = 2 | 8  # mm, s
    hdr[148:148 + 19] = b"AnomalyReview label"[:80].ljust(19, b"\0")
    pack("h", 252, 1)  # qform_code: scanner anatomical
    pack("h", 254, 1)  # sform_code: scanner anatomical
    pack("3f", 256, *quat)
    pack("3f", 268, *aff[:3, 3])
    pack("4f", 280, *aff[0])
    pack("4f", 296, *aff[1])
    pack("4f", 312, *aff[2])
    hdr[344:348] = b"n+1\0"
    body = bytes(hdr) + b"\0\0\0\0" + np.asarray(arr, arr.dtype.newbyteorder("<")).tobytes(order="F")
    if not compress:
        return body
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=4, mtime=0) as gz:
        gz.write(body)
    return buf.getvalue()


def write(image: NiftiImage, path: str | Path, dtype=None) -> Path:
    path = Path(path)
    path.write_bytes(to_bytes(image, compress=path.name.endswith(".gz"), dtype=dtype))
    return path
