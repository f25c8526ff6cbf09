from __future__ import annotations

from pathlib import Path

import pytest
from shared_data import shared_path


@pytest.fixture(scope="session")
def patient26() -> Path:
    return shared_path("mslub", "patient26")
