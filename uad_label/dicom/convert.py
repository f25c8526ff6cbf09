"""NIfTI <-> DICOM without dcmqi: MR series from a volume (tests, demos), DICOM SEG from a mask.

monailabel 0.8.5 writes DICOM SEG with dcmqi's `itkimage2segimage`, which it downloads from GitHub
at start-up; nothing may download at run time here, so `mask_to_dicom_seg` writes the SEG with
pydicom-seg (installed from PyPI), referencing the source series' instances.
"""
from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import generate_uid

log = logging.getLogger(__name__)
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def volume_to_mr_series(image: sitk.Image | str | os.PathLike, out_dir: str | os.PathLike, patient_id: str = "UAD0001",
                        patient_name: str = "UAD^TEST", series_description: str = "FLAIR",
                        study_uid: str | None = None, series_uid: str | None = None) -> dict:
    """Write a 3D volume as a DICOM MR series (one file per slice, int16 with rescale slope), with the
    volume's geometry (ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness).
    Returns {"study_uid", "series_uid", "files"}."""
    img = image if isinstance(image, sitk.Image) else sitk.ReadImage(str(image))
    img = sitk.DICOMOrient(img, "LPS") if img.GetDimension() == 3 else img
    arr = sitk.GetArrayFromImage(img).astype(np.float64)  # (z, y, x)
    lo, hi = float(arr.min()), float(arr.max())
    slope = (hi - lo) / 4095.0 if hi > lo else 1.0
    stored = np.round((arr - lo) / slope).astype(np.int16)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    now = datetime.datetime.now()
    direction = np.array(img.GetDirection()).reshape(3, 3)
    orientation = [*direction[:, 0], *direction[:, 1]]
    sx, sy, sz = img.GetSpacing()
    files = []
    for k in range(stored.shape[0]):
        pos = img.TransformIndexToPhysicalPoint((0, 0, k))
        ds = pydicom.Dataset()
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        sop_uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, sop_uid
        ds.Modality = "MR"
        ds.PatientID, ds.PatientName = patient_id, patient_name
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, k + 1
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.Manufacturer = "uad-label"
        ds.SeriesDescription = series_description
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "3D"
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]  # row spacing, column spacing
        ds.SliceThickness = f"{sz:.6f}"
        ds.SpacingBetweenSlices = f"{sz:.6f}"
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:.10g}", f"{lo:.10g}", "US"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        ds.is_little_endian, ds.is_implicit_VR = True, False
        path = out / f"slice_{k:04d}.dcm"
        ds.save_as(str(path), write_like_original=False)
        files.append(path)
    return {"study_uid": study_uid, "series_uid": series_uid, "files": files}


def mask_to_dicom_seg(series_dir: str | os.PathLike, mask: sitk.Image | str | os.PathLike, out_file: str | os.PathLike,
                      segment_label: str = "anomaly", description: str = "uad-label anomaly (approved)",
                      algorithm: str = "uad-label") -> Path:
    """DICOM SEG (binary, one segment per label value) of `mask`, referencing the instances of the MR
    series in `series_dir`; written with pydicom-seg (no dcmqi)."""
    import pydicom_seg

    files = sorted(p for p in Path(series_dir).iterdir() if p.is_file())
    sources = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    sources = [s for s in sources if getattr(s, "Modality", "") != "SEG"]
    if not sources:
        raise ValueError(f"mask_to_dicom_seg: no source DICOM instances in {series_dir}")
    m = mask if isinstance(mask, sitk.Image) else sitk.ReadImage(str(mask))
    m = sitk.Cast(m, sitk.sitkUInt16)
    values = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(m)) if v != 0] or [1]
    segments = [{
        "labelID": v, "SegmentLabel": segment_label if len(values) == 1 else f"{segment_label} {v}",
        "SegmentDescription": description, "SegmentAlgorithmType": "SEMIAUTOMATIC",
        "SegmentAlgorithmName": algorithm,
        "SegmentedPropertyCategoryCodeSequence": {"CodeValue": "49755003", "CodingSchemeDesignator": "SCT",
                                                  "CodeMeaning": "Morphologically Altered Structure"},
        "SegmentedPropertyTypeCodeSequence": {"CodeValue": "52988006", "CodingSchemeDesignator": "SCT",
                                              "CodeMeaning": "Lesion"},
        "recommendedDisplayRGBValue": [255, 64, 0],
    } for v in values]
    template = pydicom_seg.template.from_dcmqi_metainfo({
        "ContentCreatorName": "uad-label", "ClinicalTrialSeriesID": "1", "ClinicalTrialTimePointID": "1",
        "SeriesDescription": "uad-label SEG", "SeriesNumber": "300", "InstanceNumber": "1",
        "segmentAttributes": [segments], "ContentLabel": "ANOMALY", "ContentDescription": description,
        "ClinicalTrialCoordinatingCenterName": "uad-label", "BodyPartExamined": "BRAIN",
    })
    writer = pydicom_seg.MultiClassWriter(template=template, inplane_cropping=False, skip_empty_slices=False,
                                          skip_missing_segment=False)
    dcm = writer.write(m, sources)
    out = Path(out_file)
    dcm.save_as(str(out))
    return out
