"""Small template-space datastores from `uad sample-data` (FLAIR/T1/T2 at 3 mm, ground truth) for tests."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def template_datastore(folder: Path, n_healthy: int, n_lesion: int) -> Path:
    subprocess.run([sys.executable, "-m", "uad_label.cli.main", "sample-data", str(folder), "--n-healthy",
                    str(n_healthy), "--n-lesion", str(n_lesion), "--geometry", "template", "--downsample", "3",
                    "--no-progress"], cwd=ROOT, check=True, capture_output=True)
    return folder
