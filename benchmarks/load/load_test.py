"""Longer load test of the server: C clients x N infer requests (flair_threshold, preprocessed
phantoms or a folder you give), a label save every K requests, /info polled throughout.

    .venv/bin/python benchmarks/load/load_test.py [--clients 16] [--requests 100] [--save-every 5]
        [--shape 64 72 56] [--url http://127.0.0.1:8000 --image c0_FLAIR]

Without --url it starts `uad serve` on a temporary datastore of phantoms on a free loopback port and
stops it afterwards. Reports infers/s, infer latency p50/p95/p99, /info p50/p99/max, failures, and
checks the datastore JSON and the saved labels. Writes results.json and results.md next to this file.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE.parent), str(ROOT / "tests"), str(ROOT)]
from common import environment  # noqa: E402
from phantoms import brain_phantom  # noqa: E402
from server_fixture import Server  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--save-every", type=int, default=5)
    ap.add_argument("--shape", type=int, nargs=3, default=(64, 72, 56))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="uad_load_"))
    studies = tmp / "studies"
    studies.mkdir()
    for c in range(args.clients):
        img, _ = brain_phantom(shape=tuple(args.shape), seed=c)
        sitk.WriteImage(img, str(studies / f"c{c}_FLAIR.nii.gz"))
    ref = sitk.ReadImage(str(studies / "c0_FLAIR.nii.gz"))
    lab = sitk.Image(ref.GetSize(), sitk.sitkUInt8)
    lab.CopyInformation(ref)
    lab[3, 3, 3] = 1
    sitk.WriteImage(lab, str(tmp / "label.nii.gz"))
    label = (tmp / "label.nii.gz").read_bytes()
    server = Server(studies, tmp / "server.log")
    infer_lat, info_lat, failures, saves = [], [], [], []
    done = threading.Event()

    def client(c):
        s = requests.Session()
        for i in range(args.requests):
            t = time.perf_counter()
            r = s.post(server.url + "/infer/flair_threshold", params={"image": f"c{c}_FLAIR", "output": "json"},
                       data={"params": json.dumps({"preprocessed": True})}, timeout=600)
            infer_lat.append(time.perf_counter() - t)
            if r.status_code != 200:
                failures.append(f"infer {c}/{i}: {r.status_code}")
            if args.save_every and i % args.save_every == 0:
                tag = f"t{i // args.save_every}"
                r = s.put(server.url + "/datastore/label", params={"image": f"c{c}_FLAIR", "tag": tag},
                          files={"label": ("label.nii.gz", label)}, timeout=120)
                if r.status_code == 200:
                    saves.append((c, tag))
                else:
                    failures.append(f"save {c}/{i}: {r.status_code}")

    def poll():
        s = requests.Session()
        while not done.is_set():
            t = time.perf_counter()
            if s.get(server.url + "/info/", timeout=10).status_code != 200:
                failures.append("/info")
            info_lat.append(time.perf_counter() - t)
            time.sleep(0.05)

    try:
        idle = []  # /info with nothing else running: the yardstick the tests' relative bounds use
        for _ in range(20):
            t = time.perf_counter()
            requests.get(server.url + "/info/", timeout=10)
            idle.append(time.perf_counter() - t)
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        p = threading.Thread(target=poll)
        p.start()
        [t.start() for t in threads]
        [t.join() for t in threads]
        done.set()
        p.join()
        wall = time.perf_counter() - t0
    finally:
        server.stop()
    data = json.loads((studies / "datastore_v2.json").read_text(encoding="utf-8"))
    missing = [s for s in saves if s[1] not in data["objects"][f"c{s[0]}_FLAIR"]["labels"]]
    pct = lambda a, q: round(1000 * float(np.percentile(a, q)), 1)  # noqa: E731
    res = {"clients": args.clients, "requests_per_client": args.requests, "shape": list(args.shape),
           "infers": len(infer_lat), "label_saves": len(saves), "failures": len(failures),
           "missing_labels": len(missing),
           "wall_s": round(wall, 1), "infers_per_s": round(len(infer_lat) / wall, 2),
           "infer_ms": {"p50": pct(infer_lat, 50), "p95": pct(infer_lat, 95), "p99": pct(infer_lat, 99)},
           "info_ms": {"p50": pct(info_lat, 50), "p99": pct(info_lat, 99), "max": round(1000 * max(info_lat), 1),
                       "idle_p50": pct(idle, 50)},
           "environment": environment()}
    (HERE / "results.json").write_text(json.dumps(res, indent=2))
    (HERE / "results.md").write_text(
        f"# Server load\n\n{res['clients']} clients x {res['requests_per_client']} infer requests "
        f"({'x'.join(map(str, args.shape))} phantoms, preprocessed) + {res['label_saves']} label saves on "
        f"{res['environment']['cpus']} CPUs: {res['infers_per_s']} infers/s, infer p50/p99 "
        f"{res['infer_ms']['p50']}/{res['infer_ms']['p99']} ms, /info p50/p99/max {res['info_ms']['p50']}/"
        f"{res['info_ms']['p99']}/{res['info_ms']['max']} ms (idle p50 {res['info_ms']['idle_p50']} ms); "
        f"failures {res['failures']}, missing labels {res['missing_labels']}. Machine load (1 min) "
        f"{res['environment'].get('load_average_1min')}, {res['environment'].get('date')}.\n\n"
        "The tests assert relative bounds only (/info under load within 100x its idle median, no answer held "
        "for half the run); the absolute goals they used to assert (/info p99 < 200 ms under load, < 0.8 s "
        "during an inference) are read off this benchmark.\n")
    print(json.dumps({k: v for k, v in res.items() if k != "environment"}, indent=2))
    return 1 if failures or missing else 0


if __name__ == "__main__":
    sys.exit(main())
