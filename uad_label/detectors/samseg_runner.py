"""FreeSurfer SAMSEG with its lesion model, run in a child process.

SAMSEG's lesion model imports TensorFlow (its lesion-shape VAE) and holds several GB while it
runs; in a child process TensorFlow never enters the server, all memory goes back to the system
when the case is done, and a cancelled request kills the child at once. The parent half
(:func:`run_samseg`) writes a job file, starts this file as a script, forwards its progress lines
and collects the lesion posterior and the tissue volumes. The child half (``_child_main``) only
imports the standard library and samseg: it never imports uad_label.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

PROGRESS_PREFIX = "@@uad "  # lines the child prints for the parent: "@@uad FRACTION MESSAGE"
LESION_STRUCTURE = "Lesions"  # the structure createLesionAtlas adds to SAMSEG's atlas


ENV_PYTHON = "UAD_SAMSEG_PYTHON"
# SAMSEG's own environment, made by scripts/samseg_env.sh: TensorFlow must not be installed where the server
# runs (MONAI Label loads an installed TensorFlow through torch.utils.tensorboard, and Triton imported after
# it crashes the process), so SAMSEG and TensorFlow live in a separate virtual environment.
PROJECT_ENV = Path(__file__).resolve().parents[2] / ".venv-samseg" / "bin" / "python"
_PROBE = ("import importlib.util as u, sys; "
          "sys.exit(0 if all(u.find_spec(n) for n in ('samseg', 'tensorflow')) else 1)")


def samseg_python() -> str:
    """The interpreter that runs SAMSEG: $UAD_SAMSEG_PYTHON, else the project's .venv-samseg, else this one."""
    return os.environ.get(ENV_PYTHON) or (str(PROJECT_ENV) if PROJECT_ENV.exists() else sys.executable)


@functools.lru_cache(maxsize=4)
def _has_samseg(python: str) -> bool:
    if python == sys.executable:  # looked up without importing: TensorFlow costs seconds and memory
        return all(importlib.util.find_spec(name) is not None for name in ("samseg", "tensorflow"))
    try:
        return subprocess.run([python, "-c", _PROBE], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def samseg_available() -> bool:
    """samseg and TensorFlow are installed in SAMSEG's interpreter (samseg_python())."""
    return _has_samseg(samseg_python())


class SamsegError(RuntimeError):
    """SAMSEG failed inside its process; the message ends with its last output lines."""


def run_samseg(images: list[tuple[str, Path]], patterns: list[int], work_dir: Path, *, samples: int, burnin: int,
               shape_model: bool, threads: int, seed: int, max_iterations: int = 100, deformation_iterations: int = 20,
               progress: Callable[[float, str], None] | None = None,
               log: Callable[[str], None] | None = None) -> dict:
    """Run SAMSEG's lesion model on co-registered images (same voxel grid; the first one defines
    the output grid) in a child process; returns {"posterior": path of the lesion posterior (.mgz, on
    the first image's grid), "names", "volumes_mm3", "intracranial_mm3", "seconds", "cpu_seconds", "max_rss_mb",
    "stages_s" (seconds per stage)}. max_iterations (per resolution level) and deformation_iterations
    (per EM iteration) bound SAMSEG's model fit; 100 and 20 are SAMSEG's defaults.

    Any exception in the caller while the child runs (the progress callback raising to cancel,
    KeyboardInterrupt) kills the child's whole process group before it propagates.
    """
    work_dir = Path(work_dir)
    job = {"images": [str(p) for _, p in images], "modes": [m for m, _ in images], "patterns": list(patterns),
           "out": str(work_dir / "out"), "samples": int(samples), "burnin": int(burnin),
           "shape_model": bool(shape_model), "threads": int(threads), "seed": int(seed),
           "max_iterations": int(max_iterations), "deformation_iterations": int(deformation_iterations)}
    job_file = work_dir / "job.json"
    job_file.write_text(json.dumps(job))
    env = dict(os.environ)
    n = str(int(threads))
    # SAMSEG's C++ (ITK), numpy's BLAS and TensorFlow each size their own thread pools
    env.update({"OMP_NUM_THREADS": n, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": n, "OPENBLAS_NUM_THREADS": n,
                "MKL_NUM_THREADS": n, "TF_NUM_INTRAOP_THREADS": n, "TF_NUM_INTEROP_THREADS": "1",
                "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    # -P: the script's folder (uad_label/detectors, which holds samseg.py) must not shadow the samseg package
    cmd = [samseg_python(), "-P", "-u", str(Path(__file__).resolve()), str(job_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, errors="replace", env=env, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
    reader.start()
    tail: deque[str] = deque(maxlen=40)
    report = progress or (lambda f, m: None)
    parse = ProgressParser(burnin, samples, max_iterations)
    stages: dict[str, float] = {}
    stage, t_stage = "starting the process", time.perf_counter()
    try:
        while True:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue  # the reader thread puts None when the child's output ends
            if line is None:
                break
            tail.append(line)
            if log:
                log(line)
            parsed = parse(line)
            if parsed:
                if line.startswith(PROGRESS_PREFIX):  # a new stage
                    now = time.perf_counter()
                    stages[stage] = round(now - t_stage, 1)
                    stage, t_stage = parsed[1], now
                report(*parsed)
        rc = proc.wait()
        stages[stage] = round(time.perf_counter() - t_stage, 1)
    except BaseException:
        _kill(proc)
        raise
    finally:
        reader.join(timeout=10)
        proc.stdout.close()
    if rc != 0:
        raise SamsegError(f"SAMSEG exited with status {rc}; its last output:\n" + "\n".join(tail))
    result_file = Path(job["out"]) / "uad_result.json"
    if not result_file.exists():
        raise SamsegError("SAMSEG finished without writing its result; its last output:\n" + "\n".join(tail))
    result = json.loads(result_file.read_text())
    result["posterior"] = str(Path(job["out"]) / "posteriors" / f"{LESION_STRUCTURE}.mgz")
    result["stages_s"] = stages
    return result


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the child's process group (SAMSEG's own threads and anything it started) and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


class ProgressParser:
    """(fraction, message) from the child's output lines that mark progress, else None: our stage
    markers; SAMSEG's 'iterationNumber: N' of the model fit (two resolution levels, 0.1 to 0.5; N
    restarts at 0 on the second level); its per-sweep 'Burn-in N times' / 'Sample N times' of the
    lesion sampler (0.5 to 0.95)."""

    def __init__(self, burnin: int, samples: int, max_iterations: int):
        self.burnin, self.samples, self.max_iterations = int(burnin), int(samples), max(1, int(max_iterations))
        self.level, self.last_iteration = 0, -1

    def __call__(self, line: str) -> tuple[float, str] | None:
        if line.startswith(PROGRESS_PREFIX):
            frac, _, msg = line[len(PROGRESS_PREFIX):].partition(" ")
            return float(frac), msg
        words = line.split()
        if len(words) == 2 and words[0] == "iterationNumber:" and words[1].isdigit():
            n = int(words[1])
            if n < self.last_iteration:
                self.level = min(self.level + 1, 1)
            self.last_iteration = n
            done = min(n + 1, self.max_iterations) / self.max_iterations
            return 0.1 + 0.2 * (self.level + done), (f"model fit: resolution level {self.level + 1}/2, "
                                                     f"EM iteration {n + 1}")
        if len(words) == 3 and words[0] in ("Burn-in", "Sample") and words[2] == "times" and words[1].isdigit():
            done = int(words[1]) + (self.burnin if words[0] == "Sample" else 0)
            total = max(1, self.burnin + self.samples)
            return 0.5 + 0.45 * min(done, total) / total, f"lesion sampler: {words[0].lower()} sweep {words[1]}"
        return None


# ---- child ------------------------------------------------------------------------------------
def _mark(fraction: float, message: str) -> None:
    print(f"{PROGRESS_PREFIX}{fraction:.3f} {message}", flush=True)


def _child_main(job_file: str) -> int:
    import resource

    job = json.loads(Path(job_file).read_text())
    t0 = time.perf_counter()
    _mark(0.0, "loading SAMSEG and TensorFlow")
    from samseg import SAMSEGDIR, Timer, gems, icv
    from samseg.SamsegLesion import SamsegLesion
    from samseg.SamsegUtility import createLesionAtlas

    gems.setGlobalDefaultNumberOfThreads(job["threads"])
    out = Path(job["out"])
    atlas = out / "lesion_atlas"
    atlas.mkdir(parents=True, exist_ok=True)
    # SAMSEG's atlas plus its lesion components (VAE weights, lesion priors), as run_samseg --lesion builds it
    createLesionAtlas(os.path.join(SAMSEGDIR, "atlas", "20Subjects_smoothing2_down2_smoothingForAffine2"),
                      os.path.join(SAMSEGDIR, "atlas", "Lesion_Components"), str(atlas))

    class Reporting(SamsegLesion):
        """SamsegLesion that announces its stages to the parent."""

        def register(self, *args, **kwargs):
            _mark(0.02, "affine registration to SAMSEG's atlas")
            return super().register(*args, **kwargs)

        def fitModel(self):
            _mark(0.1, "fitting the tissue model (GMM, bias field, atlas deformation)")
            return super().fitModel()

        def computeFinalSegmentation(self):
            _mark(0.5, "lesion posterior: " + ("sampling with the lesion shape model" if self.sampler
                                               else "without the shape model"))
            return super().computeFinalSegmentation()

        def writeResults(self, biasFields, posteriors):
            _mark(0.95, "writing SAMSEG's results")
            return super().writeResults(biasFields, posteriors)

    levels = [{"maximumNumberOfIterations": job["max_iterations"]}] * 2  # SAMSEG's two resolution levels
    optimization = {"maximumNumberOfDeformationIterations": job["deformation_iterations"],
                    "multiResolutionSpecification": levels}
    # the settings of run_samseg --lesion, except the ones the job sets
    model = Reporting(imageFileNames=job["images"], atlasDir=str(atlas), savePath=str(out),
                      userOptimizationOptions=optimization,
                      targetIntensity=110, targetSearchStrings=["Cerebral-White-Matter"], modeNames=job["modes"],
                      savePosteriors=[LESION_STRUCTURE], pallidumAsWM=True, intensityMaskingSearchString="Cortex",
                      intensityMaskingPattern=job["patterns"], numberOfBurnInSteps=job["burnin"],
                      numberOfSamplingSteps=job["samples"], randomSeed=job["seed"], sampler=job["shape_model"])
    _, names, volumes, _ = model.segment(costfile=str(out / "cost.txt"), timer=Timer())
    volumes = [float(v) for v in volumes]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {"names": list(names), "volumes_mm3": volumes, "intracranial_mm3": float(icv(zip(names, volumes))),
              "seconds": time.perf_counter() - t0,
              # CPU time: the measure that a shared machine's load does not inflate
              "cpu_seconds": usage.ru_utime + usage.ru_stime,
              "max_rss_mb": usage.ru_maxrss / 1024.0}  # Linux reports kilobytes
    (out / "uad_result.json").write_text(json.dumps(result))
    _mark(1.0, "SAMSEG done")
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))
