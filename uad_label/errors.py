"""The one exception type for input a caller got wrong.

Detectors, preprocessing, I/O and trainers raise `InputError` when they refuse what they were given
(an unreadable or 2D file, NaN intensities, an empty brain, a scan of the wrong modality, a failed
registration, an unknown or out-of-range parameter). The server answers it with a 4xx and its
message; every other exception is a server fault (HTTP 500, traceback in the log). It subclasses
ValueError so callers that catch ValueError (the CLI, batch runs) keep working.
"""
from __future__ import annotations


class InputError(ValueError):
    """Refused input. `status` is the HTTP status the server answers with (422: understood but
    unusable; 415: not a medical image; 400: malformed request; 404: unknown id)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = int(status)
