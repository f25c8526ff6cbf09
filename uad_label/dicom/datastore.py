"""MONAI Label's DICOMweb datastore for a PACS (Orthanc, ...), with three changes:

- QIDO search filtered to MR (`{"Modality": "MR"}`; stock default: CT) - override with the
  MONAI_LABEL_DICOMWEB_SEARCH_FILTER setting only if it names a modality other than CT;
- approved (final) labels are written back as DICOM SEG with pydicom-seg (uad_label.dicom.convert)
  and stored with STOW-RS; stock monailabel 0.8.5 downloads dcmqi from GitHub at start-up, which
  cannot work offline - this datastore never calls that download;
- the local cache is a SafeLocalDatastore (atomic JSON, locked updates).
"""
from __future__ import annotations

import logging
import os
import tempfile

from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore
from monailabel.datastore.utils.dicom import dicom_web_upload_dcm

from ..active.datastore import SafeLocalDatastore
from .convert import mask_to_dicom_seg

log = logging.getLogger(__name__)
MR_FILTER = {"Modality": "MR"}


class UADDICOMWebDatastore(DICOMWebDatastore, SafeLocalDatastore):
    def save_label(self, image_id, label_filename, label_tag, label_info, label_id=""):
        label_info = dict(label_info or {})
        if label_tag == "final":
            self.get_image_uri(image_id)  # the series is in the cache
            series_dir = os.path.realpath(os.path.join(self._datastore.image_path(), image_id))
            fd, seg_file = tempfile.mkstemp(suffix=".dcm", prefix="uad_seg_")
            os.close(fd)
            try:
                mask_to_dicom_seg(series_dir, label_filename, seg_file)
                seg_series = dicom_web_upload_dcm(seg_file, self._client)
            finally:
                os.unlink(seg_file)
            info = self.get_image_info(image_id)
            label_info.update({"SeriesInstanceUID": seg_series, "Modality": "SEG",
                               "ReferencedSeriesInstanceUID": image_id,
                               "PatientID": info.get("PatientID"), "StudyInstanceUID": info.get("StudyInstanceUID")})
            log.info("label of %s stored in the PACS as DICOM SEG series %s", image_id, seg_series)
            self._clear_caches()
        return SafeLocalDatastore.save_label(self, image_id, label_filename, label_tag, label_info)

    def _clear_caches(self):
        for name in ("list_images", "get_labeled_images"):
            fn = getattr(type(self), name, None)
            cache = getattr(fn, "cache", None)
            if cache is not None:
                cache.clear()

    def get_labels_by_image_id(self, image_id):
        labels = SafeLocalDatastore.get_labels_by_image_id(self, image_id)
        if "final" not in labels and image_id in set(self.get_labeled_images()):
            labels = {**labels, "final": image_id}
        return labels


def search_filter() -> dict:
    configured = dict(settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER or {})
    if not configured or configured == {"Modality": "CT"}:  # the stock default is CT: brain MRI wants MR
        return dict(MR_FILTER)
    return configured


def init_dicomweb_datastore(url: str, cache_path: str | None = None) -> UADDICOMWebDatastore:
    session = None
    if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
        from dicomweb_client.session_utils import create_session_from_user_pass

        session = create_session_from_user_pass(settings.MONAI_LABEL_DICOMWEB_USERNAME,
                                                settings.MONAI_LABEL_DICOMWEB_PASSWORD)
    client = DICOMwebClientX(url=url, session=session, qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
                             wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
                             stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX)
    cache = cache_path or (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip() or None
    return UADDICOMWebDatastore(client=client, search_filter=search_filter(), cache_path=cache,
                                fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
                                convert_to_nifti=True)
