"""Synthetic brain MRI for the demo, tests and benchmarks, built only from package data.

Healthy subjects are made from the MNI152 2009 template and its GM/WM probability maps shipped
with nilearn (smooth random deformation, FLAIR/T1/T2-like tissue contrast, bias field, blur,
Rician noise); some get MS-like white-matter lesions or a real lesion mask pasted in.

- `make_subject(seed, lesions, geometry)` -> `Subject` (SimpleITK images, lesion mask, meta)
- `write_sample_data(out_dir, ...)` -> the demo datastore (see `uad_label.synth.datastore`)
- `import_scans(src_dir, out_dir)` -> a user's scans in the same layout
"""
from .datastore import GT_DIR, MANIFEST, MARKER, is_complete, read_manifest, write_sample_data
from .importer import import_scans
from .subject import GEOMETRIES, MODALITIES, Subject, make_subject
from .template import load_template

__all__ = ["make_subject", "Subject", "write_sample_data", "import_scans", "read_manifest", "is_complete",
           "load_template", "MODALITIES", "GEOMETRIES", "MARKER", "MANIFEST", "GT_DIR"]
