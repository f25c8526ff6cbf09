"""`uad train NAME --nproc N` (torchrun, DistributedDataParallel, gloo on CPU): 2 processes with per-process
batch B train like 1 process with batch 2B from the same seed, and rank 0 alone writes one weights file."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from phantoms import brain_phantom

from uad_label.cli.main import main
from uad_label.training import TrainRequest, get_trainer
from uad_label.training.distributed import supports

# Tolerances (measured on this CPU: training losses within 3e-8 relative, validation losses within 1.1e-4 after
# 3 epochs). Training losses differ only by float32 sums over another split (2 x B vs 2B) and the global batch
# norm's E[x^2] - E[x]^2 variance. Validation runs in eval mode, on the running means, which also carry the conv
# biases in front of each batch norm: their true gradient is 0 (the norm removes them), so Adam turns float
# noise into steps that differ between the two runs; the training output never sees them.
RTOL_TRAIN = 1e-5
RTOL_EVAL = 2e-3
TINY = {"network": {"channels": [4, 8], "latent_channels": 2, "kernel_size": 3}, "canvas": [16, 16, 16],
        "factor": 2, "epochs": 2}


def _healthy(path, n=5):
    path.mkdir()
    for i in range(n):  # 5 cases: 1 validation, 4 training = 2 steps of 2 per epoch
        img = brain_phantom(shape=(40, 44, 36), seed=i, lesion=False)[0]
        sitk.WriteImage(img, str(path / f"sub-{i:03d}_FLAIR.nii.gz"))
    cases = [{"id": f"sub-{i:03d}", "healthy": True} for i in range(n)]
    (path / "manifest.json").write_text(json.dumps({"geometry": "template", "cases": cases}))
    return path


def test_two_processes_with_batch_b_train_like_one_with_batch_2b(tmp_path, monkeypatch):
    monkeypatch.setenv("UAD_WEIGHTS_DIR", str(tmp_path / "unused"))
    ds = _healthy(tmp_path / "healthy")
    one, two = tmp_path / "one", tmp_path / "two"
    get_trainer("baur_ae")(TrainRequest([ds], "cpu", one, "cpu", {**TINY, "batch_size": 2}))
    sets = [f"{k}={json.dumps(v)}" for k, v in {**TINY, "batch_size": 1}.items()]
    rc = main(["train", "baur_ae", "--data", str(ds), "--out", str(two), "--device", "cpu", "--nproc", "2",
               *[a for s in sets for a in ("--set", s)]])
    assert rc == 0
    assert sorted(p.name for p in two.iterdir()) == ["baur_ae.json", "baur_ae.pt"]  # one weights file, no temp
    c1, c2 = (json.loads((d / "baur_ae.json").read_text(encoding="utf-8")) for d in (one, two))
    assert c1["distributed"] == {"world_size": 1, "backend": None, "batch_size_per_process": 2, "global_batch_size": 2}
    assert c2["distributed"] == {"world_size": 2, "backend": "gloo", "batch_size_per_process": 1,
                                 "global_batch_size": 2}
    assert c1["steps"] == c2["steps"] == 4  # 2 epochs x 2 global batches
    for key, rtol in (("train_loss", RTOL_TRAIN), ("val_loss", RTOL_EVAL)):
        a = np.array([h[key] for h in c1["history"]])
        b = np.array([h[key] for h in c2["history"]])
        np.testing.assert_allclose(b, a, rtol=rtol, err_msg=key)
    assert c1["history"][0]["train_loss"] != c1["history"][1]["train_loss"]  # it trained: the losses moved
    np.testing.assert_allclose(list(c2["thresholds"].values()), list(c1["thresholds"].values()), rtol=RTOL_EVAL)


def test_every_trainer_supports_nproc_and_a_bad_nproc_is_refused(tmp_path, monkeypatch):
    from uad_label.training import distributed, trainers

    assert [n for n in trainers() if not supports(n)] == []
    assert main(["train", "ppr", "--data", str(tmp_path), "--nproc", "0"]) == 2
    monkeypatch.setattr(distributed, "supports", lambda name: name != "ppr")  # a trainer without DISTRIBUTED
    with pytest.raises(ValueError, match="nproc: the ppr trainer runs in one process only"):
        distributed.launch(2, ["train", "ppr", "--data", str(tmp_path)], "ppr", "cpu")
