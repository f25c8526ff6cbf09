"""`uad batch --engine ray` on a local Ray cluster (127.0.0.1, 2 CPUs, started and shut down here): same files
as the local engine, a manifest as input, a failing case recorded, a worker killed mid-run replaced with its
case retried and no finished case redone, resume by outputs, Ctrl-C leaves only complete cases."""
from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from phantoms import brain_phantom

ray = pytest.importorskip("ray", reason="the `ray` extra is not installed (pip install 'uad-label[ray]')")

from uad_label.batch.ray_engine import run_batch_ray  # noqa: E402
from uad_label.batch.runner import run_batch  # noqa: E402
from uad_label.cli.main import main  # noqa: E402

PARAMS = {"preprocessed": True}
TIMING_KEYS = {"batch_seconds", "latency", "latencies", "seconds", "timings"}


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             object_store_memory=200 * 2 ** 20, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _cases(folder: Path, n: int, bad: bool = False) -> Path:
    folder.mkdir()
    for i in range(n):
        img, _ = brain_phantom(shape=(32, 36, 28), seed=i, lesion=i % 2 == 0)
        sitk.WriteImage(img, str(folder / f"c{i}_FLAIR.nii.gz"))
    if bad:  # an empty volume: the detector refuses it (no brain)
        sitk.WriteImage(sitk.Image(16, 16, 16, sitk.sitkFloat32), str(folder / "bad_FLAIR.nii.gz"))
    return folder


def _case_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir())


def _without_timing(obj):
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


def test_ray_engine_writes_the_local_engines_files_from_a_manifest(tmp_path, cluster):
    src = _cases(tmp_path / "in", 3, bad=True)
    manifest = tmp_path / "archive.csv"
    with open(manifest, "w", newline="") as f:  # relative paths, the manifest's folder as base
        w = csv.writer(f)
        w.writerow(["id", "FLAIR"])
        for name in ("bad", "c0", "c1", "c2"):
            w.writerow([name, f"in/{name}_FLAIR.nii.gz"])
    local, dist = tmp_path / "local", tmp_path / "ray"
    run_batch("flair_threshold", src, local, PARAMS)
    rows = run_batch_ray("flair_threshold", manifest, dist, PARAMS, workers=2)
    assert {r["case"]: r["status"] for r in rows} == {"c0": "ok", "c1": "ok", "c2": "ok", "bad": "failed"}
    assert len({r["worker_pid"] for r in rows}) == 2  # both actors worked
    assert [p.name for p in _case_dirs(local)] == [p.name for p in _case_dirs(dist)] == ["bad", "c0", "c1", "c2"]
    for a in _case_dirs(local):
        b = dist / a.name
        assert sorted(f.name for f in a.iterdir()) == sorted(f.name for f in b.iterdir()), a.name
        for f in a.glob("*.nii.gz"):
            ia, ib = sitk.ReadImage(str(f)), sitk.ReadImage(str(b / f.name))
            assert np.array_equal(sitk.GetArrayFromImage(ia), sitk.GetArrayFromImage(ib)), (a.name, f.name)
            assert ia.GetOrigin() == ib.GetOrigin() and ia.GetSpacing() == ib.GetSpacing()
        if (a / "result.json").exists():
            ra, rb = (json.loads((d / "result.json").read_text(encoding="utf-8")) for d in (a, b))
            ra["inputs"] = {m: Path(p).name for m, p in ra["inputs"].items()}
            rb["inputs"] = {m: Path(p).name for m, p in rb["inputs"].items()}
            assert _without_timing(ra) == _without_timing(rb), a.name
            assert (a / "report.png").read_bytes() == (b / "report.png").read_bytes(), a.name
        else:
            ea, eb = (json.loads((d / "error.json").read_text(encoding="utf-8")) for d in (a, b))
            assert ea["error"] == eb["error"] and "brain" in ea["error"]
    sa, sb = (list(csv.DictReader(open(d / "summary.csv"))) for d in (local, dist))
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in sa] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in sb]
    assert (dist / "overview.png").read_bytes() == (local / "overview.png").read_bytes()
    assert (dist / "index.html").is_file()
    info = json.loads((dist / "batch.json").read_text(encoding="utf-8"))
    assert info["engine"] == "ray" and info["workers"] == 2 and info["cases_run"] == 4 and info["cases_per_min"] > 0
    assert info["failed"] == 1 and len(info["worker_peak_rss_mb"]) == 2
    assert json.loads((local / "batch.json").read_text(encoding="utf-8"))["engine"] == "local"


def test_killed_worker_is_replaced_its_case_retried_and_resume_redoes_nothing(tmp_path, cluster):
    src = _cases(tmp_path / "in", 6)
    out = tmp_path / "out"
    seen = {}

    def kill_the_other_worker(row, state):
        if seen:
            return
        done_pid = row["worker_pid"]
        other = next(i for i, pid in enumerate(state.pids) if pid != done_pid)
        victims = [c for c, i in state.inflight.items() if i == other]
        assert victims, "the other worker has a case in flight"
        seen.update(first=row["case"], first_mtime=(out / row["case"] / "result.json").stat().st_mtime_ns,
                    victims=victims, killed=state.pids[other])
        os.kill(state.pids[other], signal.SIGKILL)

    rows = run_batch_ray("flair_threshold", src, out, PARAMS, workers=2, on_result=kill_the_other_worker)
    by_case = {r["case"]: r for r in rows}
    assert sorted(by_case) == [f"c{i}" for i in range(6)] and all(r["status"] == "ok" for r in rows)
    # the killed worker's cases were retried by its replacement (a new process)
    assert seen["killed"] not in {r["worker_pid"] for r in rows if r["case"] in seen["victims"]}
    assert (out / seen["first"] / "result.json").stat().st_mtime_ns == seen["first_mtime"]  # not redone
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.is_dir()]  # no staging left
    mtimes = {c: (out / c / "result.json").stat().st_mtime_ns for c in by_case}
    # resume (through the CLI): everything finished is skipped, checked by outputs
    rc = main(["batch", "flair_threshold", str(src), "--preprocessed", "--out", str(out), "--engine", "ray",
               "--workers", "1"])
    assert rc == 0
    assert {c: (out / c / "result.json").stat().st_mtime_ns for c in by_case} == mtimes
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert len(summary) == 6 and all(r["skipped"] == "1" for r in summary)


@pytest.fixture()
def ctrl_c():
    """Python's Ctrl-C handler even where the suite was started in the background (a shell's `&` sets SIGINT to
    ignored, and Python then raises no KeyboardInterrupt)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


# a child process with Python's Ctrl-C handler whatever SIGINT disposition it inherits (see ctrl_c)
WITH_CTRL_C = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "sys.argv = ['uad'] + sys.argv[1:]; runpy.run_module('uad_label.cli.main', run_name='__main__')")


def test_ctrl_c_leaves_only_complete_cases_and_a_rerun_finishes(tmp_path, cluster, ctrl_c):
    src = _cases(tmp_path / "in", 6)
    out = tmp_path / "out"

    def interrupt(row, state):
        os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: KeyboardInterrupt in the driver

    with pytest.raises(KeyboardInterrupt):
        run_batch_ray("flair_threshold", src, out, PARAMS, workers=2, on_result=interrupt)
    dirs = [p for p in out.iterdir() if p.is_dir()]
    assert not [p for p in dirs if p.name.startswith(".")]  # no staging folder
    complete = [p.name for p in dirs if (p / "result.json").is_file() and (p / "report.png").is_file()]
    assert len(dirs) == len(complete) and 1 <= len(complete) < 6
    rows = run_batch_ray("flair_threshold", src, out, PARAMS, workers=2)
    assert all(r["status"] == "ok" for r in rows) and len(rows) == 6
    assert {r["case"] for r in rows if r["skipped"]} == set(complete)


def test_bad_engine_options_are_refused(tmp_path, cluster):
    src = _cases(tmp_path / "in", 1)
    assert main(["batch", "flair_threshold", str(src), "--out", str(tmp_path / "o"), "--workers", "2"]) == 2
    with pytest.raises(ValueError, match="workers"):
        run_batch_ray("flair_threshold", src, tmp_path / "o", PARAMS, workers=0)
    with pytest.raises(ValueError, match="3 worker.*need 3 CPU.*has 2"):  # would wait forever for a third CPU
        run_batch_ray("flair_threshold", src, tmp_path / "o", PARAMS, workers=3)
    with pytest.raises(ValueError, match="need 2 GPU.*has 0"):
        run_batch_ray("flair_threshold", src, tmp_path / "o", PARAMS, workers=2, gpus_per_worker=1)
    (tmp_path / "m.csv").write_text("id,colour\nx,red\n")
    with pytest.raises(ValueError, match="colour"):
        run_batch("flair_threshold", tmp_path / "m.csv", tmp_path / "o", PARAMS)


def test_server_batch_task_runs_its_cases_on_ray_with_ray_address(tmp_path, cluster):
    from uad_label.active.datastore import SafeLocalDatastore
    from uad_label.batch.server import DetectorBatchInfer

    store = _cases(tmp_path / "store", 2, bad=True)
    ds = SafeLocalDatastore(str(store), extensions=["*.nii.gz"])
    task = DetectorBatchInfer({"preprocessed": True}, primary="flair_threshold", ray_address=cluster)

    def infer(request, datastore):
        raise AssertionError("with ray_address the cases run on Ray, not through the in-process infer")

    result = task({"model": "flair_threshold", "images": "all"}, ds, infer)
    assert sorted(result) == ["bad_FLAIR", "c0_FLAIR", "c1_FLAIR"]
    assert "brain" in result["bad_FLAIR"]["error"]
    for image_id in ("c0_FLAIR", "c1_FLAIR"):
        assert "original" in ds.get_labels_by_image_id(image_id)
        assert ds.get_image_info(image_id)["anomaly_score"] == result[image_id]["image_score"]
    assert result["c0_FLAIR"]["image_score"] > result["c1_FLAIR"]["image_score"]  # c0 has the lesion


def test_cli_joins_a_running_cluster_by_address_and_ctrl_c_exits_130(tmp_path, cluster):
    import subprocess
    import sys
    import time

    src = _cases(tmp_path / "in", 10)
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", WITH_CTRL_C, "batch", "flair_threshold", str(src), "--preprocessed",
           "--out", str(out), "--engine", "ray", "--address", cluster, "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8")
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("*/result.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        text = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, text[-3000:]
    assert "interrupted: finished cases are kept" in text
    dirs = [p for p in out.iterdir() if p.is_dir()]
    assert not [p for p in dirs if p.name.startswith(".")]
    assert dirs and all((p / "result.json").is_file() and (p / "report.png").is_file() for p in dirs)
    assert len(dirs) < 10


def test_pseudo_labels_on_ray_equal_the_local_engines(tmp_path, cluster):
    from uad_label.batch.pseudo_label import pseudo_label

    local, on_ray = _cases(tmp_path / "local", 3, bad=True), tmp_path / "ray"
    import shutil

    shutil.copytree(local, on_ray)
    a = pseudo_label("flair_threshold", local, tmp_path / "out_local", PARAMS, tag="pl")
    b = pseudo_label("flair_threshold", on_ray, tmp_path / "out_ray", PARAMS, tag="pl", engine="ray",
                     address=cluster, workers=2)
    assert a["labelled"] == b["labelled"] == ["c0_FLAIR", "c1_FLAIR", "c2_FLAIR"]
    assert [f["case"] for f in b["failed"]] == ["bad"]
    for name in a["labelled"]:
        ma = sitk.GetArrayFromImage(sitk.ReadImage(str(local / "labels" / "pl" / f"{name}.nii.gz")))
        mb = sitk.GetArrayFromImage(sitk.ReadImage(str(on_ray / "labels" / "pl" / f"{name}.nii.gz")))
        assert np.array_equal(ma, mb)
