"""DICOMweb datastore (placeholder until the PACS part lands): MONAI Label's own."""
from __future__ import annotations


def init_dicomweb_datastore(url: str):
    raise NotImplementedError("DICOMweb datastore: not wired yet")
