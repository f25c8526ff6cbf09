"""AnomalyReview's pure-Python library: everything the 3D Slicer module does apart from showing
things. Imports with numpy alone (no Slicer, Qt, monailabel, SimpleITK or requests), so it is
tested outside Slicer against the real server. The `slicer_*` modules are the module-side part
(MRML calls, the Logic, the self-test): they import Slicer and are loaded by AnomalyReview.py only."""
from .client import Client, InferResult, ModelInfo, ServerError, changed_params, coerce_param
from .jobs import CANCELLED, DONE, FAILED, PENDING, RUNNING, Cancelled, Job, JobContext
from .nifti import NiftiImage
from .review import ACCEPTED, REJECTED, Review
from .workflow import ReviewCase, next_case, run_detector, save_review

__all__ = [
    "Client", "InferResult", "ModelInfo", "ServerError", "changed_params", "coerce_param",
    "Job", "JobContext", "Cancelled", "PENDING", "RUNNING", "DONE", "FAILED", "CANCELLED",
    "NiftiImage", "Review", "ACCEPTED", "REJECTED", "ReviewCase", "run_detector", "next_case", "save_review",
]
