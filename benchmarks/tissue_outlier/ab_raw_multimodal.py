"""Same-run comparison of two uad_label trees on raw FLAIR + T1W + T2W studies (patients 01 and 12,
study 1): CPU seconds per stage of one first and one warm tissue_outlier request (bench_runtime's
stage wrappers). Run it alternately for the trees, appending to one file:

    python benchmarks/tissue_outlier/ab_raw_multimodal.py /path/to/old_tree >> ab.jsonl
    python benchmarks/tissue_outlier/ab_raw_multimodal.py . >> ab.jsonl

`ab_raw_multimodal.json` holds such a run: the old tree was this checkout with
uad_label/preprocess/register.py, uad_label/detectors/tissue_outlier.py and uad_label/tissue/
{mixture,atlas}.py from commit 73ae747 (everything else, N4 included, identical)."""
import importlib.util
import json
import sys
import warnings
from pathlib import Path

warnings.simplefilter("ignore")
root = str(Path(sys.argv[1]).resolve())
sys.path.insert(0, root)
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
import uad_label  # noqa: E402

assert uad_label.__file__.startswith(root), uad_label.__file__
spec = importlib.util.spec_from_file_location("bench_runtime", Path(__file__).with_name("bench_runtime.py"))
br = importlib.util.module_from_spec(spec)
spec.loader.exec_module(br)
det = br.get_detector("tissue_outlier")
out = {}
for patient in ("patient01", "patient12"):
    images = br.raw_study(patient, "study1", ("FLAIR", "T1", "T2"))
    rows = [br.one_call(det, images, {}) for _ in range(2)]
    out[patient] = {"first": rows[0]["cpu"], "warm": rows[1]["cpu"], "wall_warm": rows[1]["wall"]["total"],
                    "load": rows[1]["loadavg_1min"]}
print(json.dumps({"root": root, **out}))
