"""Image I/O at the SimpleITK boundary: load / save volumes (which files make a case: uad_label.cases).

Supported formats: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage
(``.mha``, ``.mhd``) and DICOM (a series directory, or one ``.dcm`` file of a series).

Everything here returns / takes :class:`SimpleITK.Image` (physical LPS geometry). Conversion to
the package's (x, y, z) RAS+ work arrays happens in :mod:`uad_label.preprocess`.
"""
from __future__ import annotations

import os
from pathlib import Path

import SimpleITK as sitk

from ..errors import InputError

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "load_image",
    "save_image",
    "is_dicom_dir",
    "image_extension",
]

#: File name endings understood by :func:`load_image` / :func:`save_image` (lower case).
SUPPORTED_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")

def image_extension(path: str | os.PathLike) -> str | None:
    """The supported extension ``path`` ends with (lower case, e.g. ``'.nii.gz'``), or None."""
    name = Path(path).name.lower()
    for ext in SUPPORTED_EXTENSIONS:
        if name.endswith(ext):
            return ext
    return None


def _read_dicom_series(directory: Path, series_id: str | None = None,
                       file_in_series: Path | None = None) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    try:
        ids = list(reader.GetGDCMSeriesIDs(str(directory)))
    except RuntimeError as exc:  # pragma: no cover - GDCM scanning errors are rare
        raise InputError(f"cannot scan {directory} for DICOM series: {exc}") from exc
    if not ids:
        raise ValueError(
            f"{directory} is a directory but holds no DICOM series (no readable DICOM files); "
            f"give an image file ({', '.join(SUPPORTED_EXTENSIONS)}) or a DICOM series folder")
    files_by_id = {sid: list(reader.GetGDCMSeriesFileNames(str(directory), sid)) for sid in ids}
    if series_id is None and file_in_series is not None:
        target = os.path.realpath(file_in_series)
        for sid, files in files_by_id.items():
            if any(os.path.realpath(f) == target for f in files):
                series_id = sid
                break
    if series_id is None:
        if len(ids) > 1:
            sizes = {sid: len(f) for sid, f in files_by_id.items()}
            raise ValueError(
                f"{directory} holds {len(ids)} DICOM series {sizes}; put each series in its own "
                f"folder or pass series_id=")
        series_id = ids[0]
    if series_id not in files_by_id:
        raise InputError(f"DICOM series {series_id!r} not found in {directory}; found {ids}")
    reader.SetFileNames(files_by_id[series_id])
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read DICOM series {series_id} in {directory}: {exc}") from exc


def load_image(path: str | os.PathLike, series_id: str | None = None) -> sitk.Image:
    """Load a 3D volume as a :class:`SimpleITK.Image` (pixel type as stored).

    ``path`` is an image file (NIfTI, NRRD, MHA/MHD, DICOM ``.dcm``) or a directory holding one
    DICOM series (``series_id`` picks one when a directory holds several). A single-component 4D
    image with one volume (size 1 on the 4th axis) is squeezed to 3D.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a supported / readable image, is not 3D, or has several
            components per voxel; the message names the path and the problem.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image not found: {p}")
    if p.is_dir():
        image = _read_dicom_series(p, series_id)
    else:
        ext = image_extension(p)
        if ext is None:
            raise ValueError(
                f"{p}: unsupported file type; supported: {', '.join(SUPPORTED_EXTENSIONS)} "
                f"or a DICOM series directory")
        if ext == ".dcm":
            image = _read_dicom_series(p.parent, series_id, file_in_series=p)
        elif ext in (".nii", ".nii.gz"):
            image = _read_nifti(p, ext)
        else:
            image = _itk_read(p, ext)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{p}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            f"a scalar 3D volume is needed")
    dim = image.GetDimension()
    if dim == 4 and image.GetSize()[3] == 1:
        size = list(image.GetSize())
        image = sitk.Extract(image, size[:3] + [0], [0, 0, 0, 0])
        dim = 3
    if dim != 3:
        raise InputError(f"{p}: image is {dim}D with size {image.GetSize()}; a 3D volume is needed")
    if min(image.GetSize()) < 2:
        raise InputError(f"{p}: image size {image.GetSize()} is a single slice; a 3D volume is needed")
    return image


def _unreadable(p: Path, ext: str, exc: RuntimeError) -> InputError:
    first = str(exc).strip().splitlines()
    detail = next((line for line in first if "rror" in line or "annot" in line), first[-1] if first else "")
    return InputError(f"{p}: unreadable {ext} image ({detail.strip()})")


def _itk_read(p: Path, ext: str, reader: sitk.ImageFileReader | None = None) -> sitk.Image:
    try:
        if reader is None:
            return sitk.ReadImage(str(p))
        return reader.Execute()
    except RuntimeError as exc:
        raise _unreadable(p, ext, exc) from exc


def _read_nifti(p: Path, ext: str) -> sitk.Image:
    """A NIfTI file, its voxels decompressed once. ITK's NIfTI reader turns NaN voxels into 0 without a word
    (nifti1_io replaces every non-finite float by 0); a scan with NaN is broken input and is refused. Only
    float files can hold NaN: integer ones are ITK's read alone. A float file is decompressed here, checked,
    and becomes the SimpleITK image with the geometry and metadata of ITK's own reading of its header
    (`_float_nifti_once`); a header that path does not cover (scaled, 4D, NIfTI-2) is read by ITK and
    checked by a second, nibabel, reading (`_refuse_nifti_nan`)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _unreadable(p, ext, exc) from exc
    if reader.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        return _itk_read(p, ext, reader)
    image = _float_nifti_once(p, reader)
    if image is None:
        image = _itk_read(p, ext, reader)
        _refuse_nifti_nan(p)
    return image


def _nan_error(path: Path, n: int) -> InputError:
    return InputError(f"{path}: {n} voxel(s) are NaN; expected finite intensities (fix or mask the scan)")


def _float_nifti_once(p: Path, reader: sitk.ImageFileReader) -> sitk.Image | None:
    """ITK's image of a 3D, unscaled float32/float64 NIfTI-1 file from one decompression (None for any other
    header): nibabel parses the header, the voxels (stored x fastest, ITK's buffer order) are checked for
    NaN, infinities become 0 as ITK's reader makes them, and origin, spacing, direction and metadata are those
    of ITK's reading of the header (`reader`, after ReadImageInformation)."""
    import gzip
    import io
    import zlib

    import nibabel as nib
    import numpy as np

    data = p.read_bytes()
    try:
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(data))
    except (OSError, EOFError, zlib.error, nib.spatialimages.HeaderDataError, ValueError):
        return None
    dtype = hdr.get_data_dtype()
    slope, inter = hdr.get_slope_inter()
    shape = tuple(int(n) for n in hdr.get_data_shape())
    offset = int(hdr.get_data_offset())
    count = int(np.prod(shape)) if shape else 0
    if (hdr["magic"] != b"n+1" or int(hdr["dim"][0]) != 3 or len(shape) != 3 or dtype.kind != "f"
            or dtype.itemsize not in (4, 8) or slope not in (None, 1.0) or inter not in (None, 0.0)
            or offset + count * dtype.itemsize > len(data) or shape != tuple(reader.GetSize())):
        return None
    voxels = np.frombuffer(data, dtype, count=count, offset=offset).reshape(shape[::-1])
    if not np.isfinite(voxels).all():
        n = int(np.isnan(voxels).sum())
        if n:
            raise _nan_error(p, n)
        voxels = np.where(np.isinf(voxels), 0, voxels)
    image = sitk.GetImageFromArray(voxels.astype(dtype.newbyteorder("="), copy=False))
    if image.GetPixelID() != reader.GetPixelID():
        return None
    image.SetOrigin(reader.GetOrigin())
    image.SetSpacing(reader.GetSpacing())
    image.SetDirection(reader.GetDirection())
    for key in reader.GetMetaDataKeys():
        image.SetMetaData(key, reader.GetMetaData(key))
    return image


def _refuse_nifti_nan(path: Path) -> None:
    """The second reading of a float NIfTI file that `_float_nifti_once` does not cover: NaN refused."""
    import nibabel as nib
    import numpy as np

    img = nib.load(str(path))
    if not np.issubdtype(img.get_data_dtype(), np.floating):
        return
    n = int(np.isnan(np.asarray(img.dataobj)).sum())
    if n:
        raise _nan_error(path, n)


def save_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write ``image`` to ``path`` atomically (temporary file in the same folder + os.replace).

    The format follows the extension (NIfTI, NRRD, MHA/MHD). Parent folders are created.
    Returns the final path.
    """
    p = Path(path)
    ext = image_extension(p)
    if ext is None or ext == ".dcm":
        raise ValueError(f"{p}: cannot write this file type; use one of .nii.gz, .nii, .nrrd, .mha")
    if not isinstance(image, sitk.Image):
        raise TypeError(f"save_image needs a SimpleITK.Image, got {type(image).__name__}")
    if ext == ".mhd":
        raise ValueError(f"{p}: .mhd writes two files and cannot be atomic; use .mha")
    from ..atomic import atomic_path

    with atomic_path(p, suffix=ext) as tmp:
        sitk.WriteImage(image, str(tmp), compress and ext in (".nii.gz", ".nrrd", ".mha"))
    return p


def is_dicom_dir(p: Path) -> bool:
    """Whether folder ``p`` holds at least one DICOM series."""
    try:
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p)))
    except RuntimeError:  # pragma: no cover
        return False
