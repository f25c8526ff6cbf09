"""Raw clinical FLAIR to map, in-process and through HTTP, on every raw scan; and the preprocessing
defaults before / after issue 16, interleaved in the same run (issue 16).

    .venv/bin/python benchmarks/load/latency.py [--data ../shared/data/raw_clinical] [--repeats 3]
        [--detector flair_threshold] [--no-compare] [--compare-repeats 3] [--out benchmarks/load]

Every ``<patient>/<study>_FLAIR.nii.gz`` of --data goes into one datastore of a real server on a loopback
port. After one warm-up of each side (template, caches, imports), per scan and repeat: in-process
``detect`` and ``POST /infer`` (the default multipart answer: float map, mask, brain, JSON; what the Slicer
module receives) alternate. Wall seconds, CPU seconds (this process for in-process, the server process
for HTTP) and the 1-minute load average are recorded. Scans that fail the registration quality check
are refused with 422 by both sides (that is recorded, not timed).

Then (unless --no-compare) the preprocessing of each scan --compare-repeats times (``on_registration_failure=
"warn"``: the metrics of refused scans too): CPU and wall seconds and the registration metrics (Mattes MI, brain
in head, FOV coverage, passed) as median and range (ITK's threaded metric varies from run to run), next to the
same measure of the code before this session's changes (``latency_before.json``, commit 69ad0ad).
Prints the tables and writes latency.json and latency.md in --out.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE.parent), str(ROOT / "tests"), str(ROOT)]
from common import environment  # noqa: E402
from server_fixture import Server  # noqa: E402

from uad_label.runtime import ENV_REPRODUCIBLE  # noqa: E402

RAW = ROOT.parent / "shared" / "data" / "raw_clinical"
BEFORE_FILE = HERE / "latency_before.json"  # the registration before this session's changes (commit 69ad0ad)
BEFORE = json.loads(BEFORE_FILE.read_text())["runs"] if BEFORE_FILE.exists() else {}
NOTES = "<!-- notes: kept by latency.py -->"
METRICS = ("mutual_information", "brain_in_head", "fov_coverage", "passed")


def scans_of(data: Path) -> dict[str, Path]:
    return {f"{p.parent.name}_{p.name.split('_')[0]}": p for p in sorted(data.glob("patient*/study*_FLAIR.nii.gz"))}


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def timed_local(det, path: Path) -> dict:
    from uad_label.errors import InputError

    c, t = time.process_time(), time.perf_counter()
    try:
        r = det.detect({"FLAIR": path}, {})
        ok, reg = True, r.info["preprocessing"]
    except InputError:
        ok, reg = False, {}
    return {"wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c, "ok": ok, "load": load1(),
            "registration": {k: reg.get(k) for k in METRICS}}


def latency_run(det, paths: dict[str, Path], detector: str, repeats: int, reproducible: bool) -> dict:
    """In-process and HTTP alternating on every scan, after one warm-up of each; `reproducible`: both sides
    with UAD_REPRODUCIBLE_REGISTRATION=1 (the server process and this one)."""
    import psutil

    env = {ENV_REPRODUCIBLE: "1" if reproducible else "0"}
    saved = os.environ.get(ENV_REPRODUCIBLE)
    os.environ.update(env)
    tmp = Path(tempfile.mkdtemp(prefix="uad_latency_"))
    studies = tmp / "studies"
    studies.mkdir()
    for name, p in paths.items():
        shutil.copy(p, studies / f"{name}_FLAIR.nii.gz")
    server = Server(studies, tmp / "server.log", env=env)
    out = {}
    try:
        proc = psutil.Process(server.proc.pid)
        first = next(iter(paths))
        timed_local(det, studies / f"{first}_FLAIR.nii.gz"), timed_http(server, proc, detector, f"{first}_FLAIR")
        for name in paths:
            row = {"in_process": [], "http": []}
            for _ in range(repeats):
                row["in_process"].append(timed_local(det, studies / f"{name}_FLAIR.nii.gz"))
                row["http"].append(timed_http(server, proc, detector, f"{name}_FLAIR"))
            out[name] = row
            print("reproducible" if reproducible else "default", name,
                  json.dumps({k: [round(x["wall_s"], 3) for x in v] for k, v in row.items()}), flush=True)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        if saved is None:
            os.environ.pop(ENV_REPRODUCIBLE, None)
        else:
            os.environ[ENV_REPRODUCIBLE] = saved
    return out


def timed_http(server: Server, proc, detector: str, image_id: str) -> dict:
    from requests_toolbelt import MultipartDecoder

    cpu = lambda: sum(proc.cpu_times()[:2])  # noqa: E731  (user + system of the server process)
    c, t = cpu(), time.perf_counter()
    r = requests.post(server.url + f"/infer/{detector}", params={"image": image_id}, data={"params": "{}"},
                      timeout=900)
    out = {"wall_s": time.perf_counter() - t, "cpu_s": cpu() - c, "status": r.status_code, "load": load1(),
           "bytes": len(r.content)}
    if r.status_code == 200:
        parts = MultipartDecoder(r.content, r.headers["content-type"]).parts
        info = json.loads(parts[0].content)
        out["detector_total_s"] = info["latencies"]["total"]
    return out


def registration_runs(paths: dict[str, Path], repeats: int) -> dict:
    """The preprocessing of each scan `repeats` times (``on_registration_failure="warn"``: the metrics of refused
    scans too): CPU and wall seconds, stage times and the registration metrics."""
    import SimpleITK as sitk

    from uad_label.preprocess import PreprocessOptions, preprocess

    opts = PreprocessOptions(on_registration_failure="warn")
    out = {}
    for name, path in paths.items():
        img = sitk.ReadImage(str(path))
        runs = []
        for _ in range(repeats):
            c, w = time.process_time(), time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                case = preprocess({"FLAIR": img}, opts)
            runs.append({"cpu_s": round(time.process_time() - c, 3), "wall_s": round(time.perf_counter() - w, 3),
                         "load": load1(), "wall_stages_s": {k: round(v, 3) for k, v in case.timings.items()},
                         **{k: case.registration[k] for k in METRICS}})
        out[name] = {"old": BEFORE.get(name, []), "new": runs}
        print(name, json.dumps([(round(x["mutual_information"], 4), round(x["brain_in_head"], 4), x["passed"])
                                for x in runs]), flush=True)
    return out


def old_encode(image) -> bytes:
    """The server's NIfTI encoding before issue 16 (C-contiguous transposed copy, gzip with a CRC pass)."""
    import gzip

    import nibabel as nib
    import SimpleITK as sitk

    from uad_label.preprocess.geometry import ras_affine

    nii = nib.Nifti1Image(np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0)), ras_affine(image))
    nii.set_qform(nii.affine, code=1)
    nii.set_sform(nii.affine, code=1)
    return gzip.compress(nii.to_bytes(), compresslevel=1)


def compare_encoding(det, path: Path, repeats: int = 5) -> dict:
    """CPU seconds of encoding the default multipart's three images (map, mask, brain), old and new
    alternating; the decoded voxels and affines must be equal."""
    import gzip

    import nibabel as nib

    from uad_label.server.encode import encode_image

    r = det.detect({"FLAIR": path}, {})
    images = {"map": r.anomaly_map, "mask": r.mask, "brain": r.brain}
    out = {"old_cpu_s": [], "new_cpu_s": []}
    for _ in range(repeats):
        for which, fn in (("old", old_encode), ("new", encode_image)):
            c = time.process_time()
            data = {k: fn(v) for k, v in images.items()}
            out[f"{which}_cpu_s"].append(round(time.process_time() - c, 4))
            out[f"{which}_bytes"] = {k: len(v) for k, v in data.items()}
            out[f"{which}_decoded"] = {k: nib.Nifti1Image.from_bytes(gzip.decompress(v)) for k, v in data.items()}
    out["identical_voxels_and_affine"] = all(
        np.array_equal(np.asarray(out["old_decoded"][k].dataobj), np.asarray(out["new_decoded"][k].dataobj))
        and np.allclose(out["old_decoded"][k].affine, out["new_decoded"][k].affine) for k in images)
    del out["old_decoded"], out["new_decoded"]
    out["load"] = load1()
    print("encoding", json.dumps(out), flush=True)
    return out


def latency_table(rows: dict) -> list[str]:
    lines = ["| scan | in-process median (s) | HTTP median (s) | HTTP / in-process | HTTP minus the detector's own "
             "total (s) | in-process CPU (s) | server CPU (s) | load (1 min) | outcome |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        loc, http = row["in_process"], row["http"]
        lw, hw = np.median([x["wall_s"] for x in loc]), np.median([x["wall_s"] for x in http])
        lc, hc = np.median([x["cpu_s"] for x in loc]), np.median([x["cpu_s"] for x in http])
        own = [x["wall_s"] - x["detector_total_s"] for x in http if x.get("detector_total_s") is not None]
        loads = [x["load"] for x in loc + http]
        outcome = "map" if all(x["ok"] for x in loc) else "refused (422, registration check)"
        lines.append(f"| {name} | {lw:.2f} | {hw:.2f} | {hw / lw:.3f} | "
                     f"{f'{np.median(own):.2f}' if own else '-'} | {lc:.2f} | {hc:.2f} | "
                     f"{min(loads):.1f}-{max(loads):.1f} | {outcome} |")
    return lines


def tables(res: dict) -> str:
    lines = ["Default settings (ITK's 2 threads in registration):", ""] + latency_table(res["latency"])
    if res.get("latency_reproducible"):
        lines += ["", "UAD_REPRODUCIBLE_REGISTRATION=1 on both sides (registration on 1 thread: the same work "
                  "in both paths, so the ratio is the server's overhead):", ""]
        lines += latency_table(res["latency_reproducible"])
    if res.get("compare"):
        def rng(runs, key, fmt="{:.4f}"):
            v = [x[key] for x in runs]
            return fmt.format(np.median(v)) + (f" [{fmt.format(min(v))}, {fmt.format(max(v))}]" if len(v) > 1 else "")

        lines += ["", "Median [min, max] over the repeats: old / new.", "",
                  "| scan | Mattes MI old / new | brain in head old / new | FOV coverage old / new | "
                  "passed old / new | preprocess CPU s old / new | preprocess wall s old / new | load |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, row in res["compare"].items():
            o, n = row["old"], row["new"]
            passed = " / ".join(f"{sum(x['passed'] for x in r)}/{len(r)}" for r in (o, n))
            loads = [x["load"] for x in o + n]
            lines.append(f"| {name} | {rng(o, 'mutual_information')} / {rng(n, 'mutual_information')} | "
                         f"{rng(o, 'brain_in_head')} / {rng(n, 'brain_in_head')} | {rng(o, 'fov_coverage')} / "
                         f"{rng(n, 'fov_coverage')} | {passed} | {rng(o, 'cpu_s', '{:.2f}')} / "
                         f"{rng(n, 'cpu_s', '{:.2f}')} | {rng(o, 'wall_s', '{:.2f}')} / {rng(n, 'wall_s', '{:.2f}')} | "
                         f"{min(loads):.1f}-{max(loads):.1f} |")
    if res.get("encoding"):
        e = res["encoding"]
        lines += ["", f"Encoding the multipart's three images (map, mask, brain) of {e['scan']}, CPU s, "
                  f"{len(e['old_cpu_s'])} alternating repeats: old median {np.median(e['old_cpu_s']):.3f}, new "
                  f"median {np.median(e['new_cpu_s']):.3f}; decoded voxels and affines identical: "
                  f"{e['identical_voxels_and_affine']}; bytes old {e['old_bytes']}, new {e['new_bytes']}."]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(RAW))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--detector", default="flair_threshold")
    ap.add_argument("--no-compare", action="store_true")
    ap.add_argument("--compare-repeats", type=int, default=3, help="preprocessing runs per scan for the metrics table")
    ap.add_argument("--reproducible-repeats", type=int, default=3,
                    help="repeats with UAD_REPRODUCIBLE_REGISTRATION=1 on both sides (0: skip)")
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args()
    from uad_label.detectors import get_detector

    paths = scans_of(Path(args.data))
    if not paths:
        raise SystemExit(f"no <patient>/<study>_FLAIR.nii.gz under {args.data}")
    det = get_detector(args.detector)
    res = {"detector": args.detector, "repeats": args.repeats, "before": str(BEFORE_FILE.name),
           "environment_start": environment(), "latency": {}, "latency_reproducible": {}}
    res["latency"] = latency_run(det, paths, args.detector, args.repeats, reproducible=False)
    if args.reproducible_repeats:
        res["latency_reproducible"] = latency_run(det, paths, args.detector, args.reproducible_repeats,
                                                  reproducible=True)
    if not args.no_compare:
        first = next(iter(paths))
        res["encoding"] = {"scan": first, **compare_encoding(det, paths[first])}
        res["compare"] = registration_runs(paths, args.compare_repeats)
    res["environment_end"] = environment()
    out = Path(args.out)
    (out / "latency.json").write_text(json.dumps(res, indent=2, default=float))
    env = res["environment_start"]
    table = tables(res)
    md = out / "latency.md"
    # hand-written findings below the marker survive a rerun
    notes = md.read_text(encoding="utf-8").split(NOTES, 1)[1] if md.exists() and NOTES in md.read_text(
        encoding="utf-8") else "\n"
    md.write_text(
        f"# Raw clinical FLAIR to map: latency through HTTP (issue 16)\n\n"
        f"`{args.detector}` on every raw clinical FLAIR of `{Path(args.data).name}` (full preprocessing: N4, "
        f"registration to MNI152, brain mask, map back to the native grid). Written by `latency.py` "
        f"(`.venv/bin/python benchmarks/load/latency.py`): in-process `detect` and `POST /infer` (default "
        f"multipart: float map, mask, brain, JSON) alternate, {args.repeats} repeat(s) per scan after one "
        f"warm-up of each; CPU seconds are this process's (in-process) and the server process's (HTTP). "
        f"Targets: HTTP at most 3 s, HTTP / in-process at most 1.05. Then the preprocessing of each scan "
        f"{args.compare_repeats} times (new), next to the same measure of commit 69ad0ad (old: {BEFORE_FILE.name}, "
        f"an earlier run of the same day).\n\n"
        f"{env['date']} to {res['environment_end']['date']}, {env['cpus']} CPUs, SimpleITK "
        f"{env.get('SimpleITK')}, load (1 min) {env['load_average_1min']:.1f} at the start, "
        f"{res['environment_end']['load_average_1min']:.1f} at the end.\n\n{table}\n\n{NOTES}{notes}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
