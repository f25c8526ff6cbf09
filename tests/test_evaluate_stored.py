"""`uad evaluate --results DIR`: scoring the maps a batch run stored gives the metrics of running the detector."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sample_cases import template_datastore

from uad_label.batch.runner import run_batch
from uad_label.errors import InputError
from uad_label.evaluation.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]
PRE = {"preprocessed": True}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return template_datastore(tmp_path_factory.mktemp("ev") / "ds", 0, 2)


def test_stored_results_score_like_a_fresh_run(data, tmp_path):
    run_batch("flair_threshold", data, tmp_path / "batch", PRE)
    fresh = evaluate("flair_threshold", data, params=PRE, progress=False)
    stored = evaluate("flair_threshold", data, params=PRE, progress=False, results_dir=tmp_path / "batch")
    for key in ("dsc_upper", "auprc", "auroc", "best_threshold", "dice_default_mean"):
        assert stored[key] == pytest.approx(fresh[key], abs=1e-12), key
    assert [r["case"] for r in stored["per_case"]] == ["sub-000", "sub-001"]


def test_missing_or_foreign_results_are_refused(data, tmp_path):
    run_batch("flair_threshold", data, tmp_path / "batch", PRE)
    with pytest.raises(InputError, match="comes from 'flair_threshold', not 'tissue_outlier'"):
        evaluate("tissue_outlier", data, params=PRE, progress=False, results_dir=tmp_path / "batch")
    with pytest.raises(InputError, match="min_component_mm3: case 'sub-000' was stored with 20.0"):
        evaluate("flair_threshold", data, params={**PRE, "min_component_mm3": 5}, progress=False,
                 results_dir=tmp_path / "batch")
    shutil.rmtree(tmp_path / "batch" / "sub-001")
    with pytest.raises(InputError, match="results: no finished result of case 'sub-001'"):
        evaluate("flair_threshold", data, params=PRE, progress=False, results_dir=tmp_path / "batch")
