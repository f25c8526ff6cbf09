"""`--nproc` for strega, ppr, inpainting (G + D), inpainting_fast (R) and patchddm: 2 gloo processes with
per-process batch B train like 1 process with batch 2B from the same seed, and rank 0 alone writes one weights
file and card per trainer. The five 2-process runs share one torchrun start-up (tests/distributed_worker.py);
`uad train --nproc` itself (the CLI's torchrun launch) is tested with baur_ae in test_train_distributed.py.

Tolerances (measured on this CPU, 2 steps): losses of the same step agree within 7e-8 relative (float32 sums
over another split, the global batch norm's E[x^2] - E[x]^2 variance; inpainting's logged losses are rounded to
4-6 decimals, hence atol 2e-5); RTOL_TRAIN = 1e-5. Without DistributedDataParallel (each process training its
own copy on its half) the second step's losses differ by 4e-4 (ppr) to 7e-3 (strega), so the tolerance tells
the two apart. What is evaluated after training agrees within RTOL_EVAL: within 2e-7 for ppr and inpainting,
1.1e-3 for strega's validation loss, whose convolutions carry biases in front of each batch norm: their true
gradient is 0, and Adam turns the float noise of that 0 into steps of about lr that differ between the two runs
(test_train_distributed.py explains it for baur_ae)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from phantoms import brain_phantom
from test_recon import TINY as RECON_TINY
from test_recon import tissue_phantom

from uad_label.training import TrainRequest, get_trainer
from uad_label.training.distributed import command

RTOL_TRAIN = 1e-5
RTOL_EVAL = 5e-3
WORKER = Path(__file__).with_name("distributed_worker.py")


def _healthy(path: Path, modality: str, n: int, shape) -> Path:
    path.mkdir(parents=True)
    for i in range(n):
        img = tissue_phantom(shape, modality, seed=i) if modality == "T2" else \
            brain_phantom(shape=shape, seed=i, lesion=False)[0]
        sitk.WriteImage(img, str(path / f"sub-{i:03d}_{modality}.nii.gz"))
    cases = [{"id": f"sub-{i:03d}", "healthy": True} for i in range(n)]
    (path / "manifest.json").write_text(json.dumps({"geometry": "template", "cases": cases}))
    return path


def _labelled(path: Path, n: int) -> Path:
    """Synthetic lesion cases (FLAIR, T1, T2 + ground_truth/) for patchddm."""
    (path / "ground_truth").mkdir(parents=True)
    for i in range(n):
        flair, gt = brain_phantom((24, 24, 16), seed=i, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
        for mod, scale in (("FLAIR", 1.0), ("T1", 0.5), ("T2", 2.0)):
            sitk.WriteImage(sitk.Cast(flair * scale, sitk.sitkFloat32), str(path / f"sub-{i:03d}_{mod}.nii.gz"))
        sitk.WriteImage(gt, str(path / "ground_truth" / f"sub-{i:03d}.nii.gz"))
    (path / "manifest.json").write_text(json.dumps({"kind": "synthetic", "geometry": "template"}))
    return path


def _plans(root: Path) -> list[dict]:
    """(name, data, overrides without the batch size, the batch-size key, B per process) of each run."""
    inpaint = {"slice_size": 32, "scale": 2, "ngf": 4, "d_channels": 8, "steps": 2, "r_steps": 2, "box": 8,
               "val_slices": 2, "val_boxes": 4, "bn_batches": 2}
    flair = _healthy(root / "flair", "FLAIR", 3, (32, 36, 20))
    return [
        {"name": "strega", "data": _healthy(root / "t2", "T2", 3, (40, 44, 36)), "key": "batch_size", "b": 4,
         "overrides": {**RECON_TINY["strega"], "canvas": [16, 16, 16], "factor": 2, "epochs": 1, "steps": 2}},
        {"name": "ppr", "data": flair, "key": "crops", "b": 1,
         "overrides": {"steps": 2, "width": 2, "eval_every": 1, "eval_batches": 1, "crop_grid": 2,
                       "sampling": "crops", "preprocessed": True}},
        {"name": "inpainting", "data": flair, "key": "batch_size", "b": 2, "overrides": inpaint},
        {"name": "inpainting_fast", "data": flair, "key": "r_batch_size", "b": 2, "overrides": inpaint},
        {"name": "patchddm", "data": _labelled(root / "lesions", 2), "key": "batch_size", "b": 1,
         "overrides": {"steps": 2, "crop": 8, "spacing_mm": 2.0, "network": {"base_channels": 4,
                       "channel_mult": [1, 2], "num_res_blocks": 1}, "preprocessed": True}},
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    plans = _plans(root)
    spec = []
    for p in plans:
        one, two = root / "one" / p["name"], root / "two" / p["name"]
        two.mkdir(parents=True)
        if p["name"] == "inpainting_fast":  # both R runs learn from the same G: the 1-process one
            one.mkdir(parents=True)
            for d in (one, two):
                for f in ("inpainting.pt", "inpainting.json"):
                    shutil.copy(root / "one" / "inpainting" / f, d / f)
        get_trainer(p["name"])(TrainRequest([p["data"]], "cpu", one, "cpu", {**p["overrides"], p["key"]: 2 * p["b"]}))
        spec.append({"name": p["name"], "data": [str(p["data"])], "out": str(two),
                     "overrides": {**p["overrides"], p["key"]: p["b"]}})
    (root / "spec.json").write_text(json.dumps(spec))
    cmd, env = command(2, [str(WORKER), str(root / "spec.json")])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, encoding="utf-8", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, {p["name"]: p for p in plans}


def _cards(root: Path, name: str):
    return [json.loads((root / run / name / f"{name}.json").read_text(encoding="utf-8")) for run in ("one", "two")]


@pytest.mark.parametrize("name", ["strega", "ppr", "inpainting", "inpainting_fast", "patchddm"])
def test_two_processes_write_one_weights_file_and_record_the_world(runs, name):
    root, plans = runs
    b = plans[name]["b"]
    expected = {name + ".pt", name + ".json"} | ({"inpainting.pt", "inpainting.json"} if name == "inpainting_fast"
                                                  else set())
    assert {p.name for p in (root / "two" / name).iterdir()} == expected  # rank 0's files, no temporaries
    one, two = _cards(root, name)
    assert one["distributed"] == {**one["distributed"], "world_size": 1, "backend": None,
                                  "batch_size_per_process": 2 * b, "global_batch_size": 2 * b}
    assert two["distributed"] == {**two["distributed"], "world_size": 2, "backend": "gloo",
                                  "batch_size_per_process": b, "global_batch_size": 2 * b}


def _close(a, b, rtol, what):
    np.testing.assert_allclose(np.asarray(b, dtype=float), np.asarray(a, dtype=float), rtol=rtol, atol=2e-5,
                               err_msg=what)


def test_strega_losses_match(runs):
    one, two = _cards(runs[0], "strega")
    assert one["steps"] == two["steps"] == 2
    for key in ("kl", "l1", "ce", "train_loss"):
        _close([h[key] for h in one["history"]], [h[key] for h in two["history"]], RTOL_TRAIN, key)
    _close([h["val_loss"] for h in one["history"]], [h["val_loss"] for h in two["history"]], RTOL_EVAL, "val")


def test_ppr_losses_match(runs):
    one, two = _cards(runs[0], "ppr")
    assert [h["step"] for h in one["history"]] == [h["step"] for h in two["history"]] == [1, 2]
    _close([h["train_loss"] for h in one["history"]], [h["train_loss"] for h in two["history"]], RTOL_TRAIN, "loss")
    _close([h["held_out_error_mm"] for h in one["history"]], [h["held_out_error_mm"] for h in two["history"]],
           RTOL_TRAIN, "held-out error")
    assert one["history"][0]["train_loss"] != one["history"][1]["train_loss"]


def test_inpainting_generator_losses_match(runs):
    one, two = _cards(runs[0], "inpainting")
    assert one["steps"] == two["steps"] == 2
    for key in ("l1", "adv", "d", "box_l1"):  # step 1 (adv: after one synchronised D step)
        _close([h[key] for h in one["history"]], [h[key] for h in two["history"]], RTOL_TRAIN, key)
    for key in ("mean", "q95", "q99"):  # after 2 steps of G and D and the batch-norm recalibration
        _close(one["validation_box_l1"][key], two["validation_box_l1"][key], RTOL_EVAL, key)


def test_inpainting_regressor_losses_match(runs):
    one, two = _cards(runs[0], "inpainting_fast")
    assert one["steps"] == two["steps"] == 2
    for key in ("mse", "target_mean"):
        _close([h[key] for h in one["history"]], [h[key] for h in two["history"]], RTOL_TRAIN, key)
    for key in ("mae", "q99_pred", "q99_G"):
        _close(one["validation"][key], two["validation"][key], RTOL_EVAL, key)


def test_patchddm_losses_match(runs):
    one, two = _cards(runs[0], "patchddm")
    a, b = one["training"]["loss_first_10_steps"], two["training"]["loss_first_10_steps"]
    assert len(a) == len(b) == 2 and a[0] != a[1]
    _close(a, b, RTOL_TRAIN, "loss per step")


@pytest.mark.parametrize("bad", [0, -1, "two", "2", 1.5, True, None, 3])
def test_train_task_refuses_a_bad_nproc(monkeypatch, bad):
    import os
    import re

    from uad_label.errors import InputError
    from uad_label.training import request_from_params

    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # this machine's limit, whatever runs the test
    with pytest.raises(InputError, match=r"nproc: expected a whole number of processes from 1 to 2 .*received "
                       + re.escape(repr(bad)) + "$"):
        request_from_params("ppr", {"nproc": bad, "device": "cpu"}, [], None)
    assert request_from_params("ppr", {"nproc": 2, "device": "cpu"}, [], None).nproc == 2


def test_train_task_with_nproc_runs_the_cli_torchrun_in_a_child(tmp_path):
    """The MONAI Label train task with nproc 2: `uad train` in a child torchrun (2 gloo processes); the task
    returns rank 0's summary and the card records both processes."""
    from uad_server_app.lib.trainers.detector import DetectorTrain

    ds = _healthy(tmp_path / "ds", "FLAIR", 3, (32, 36, 20))
    store = type("Store", (), {"_datastore_path": str(ds)})()
    task = DetectorTrain("ppr", str(tmp_path / "w"))
    assert task.config()["nproc"] == 1
    summary = task({"nproc": 2, "device": "cpu", "steps": 1, "width": 2, "eval_every": 1, "eval_batches": 1,
                    "crops": 1, "crop_grid": 2, "preprocessed": True, "client_id": "x"}, store)
    assert summary["world_size"] == 2 and summary["global_batch_size"] == 2 and summary["steps"] == 1
    assert summary["weights"] == str(tmp_path / "w" / "ppr.pt")
    card = json.loads((tmp_path / "w" / "ppr.json").read_text(encoding="utf-8"))
    assert card["distributed"]["world_size"] == 2 and card["distributed"]["backend"] == "gloo"
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["ppr.json", "ppr.pt"]
