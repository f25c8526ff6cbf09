"""DICOM / PACS: a DICOMweb datastore (MONAI Label's, MR only, labels stored back as DICOM SEG
without dcmqi), NIfTI -> DICOM MR series conversion, and an Orthanc test harness."""
