"""`uad batch --engine ray`: the same batch on a Ray cluster (a local one started here, or `--address`).

Layout: the driver lists the cases once (folder or manifest), skips finished ones, and hands cases to N actors.
Each actor loads the detector (and its weights) once and runs many cases through `runner.process`, the same
function the local engine runs, so the files are the same; it runs two cases at a time in two threads with
only the detection serialised, so one case's reading and writing overlap the next one's detection, and the
driver keeps two cases queued per actor. The driver writes the summary with `runner.write_summary`.

Faults: a case that raises is recorded by the actor (error.json) and returned as a failed row. An actor
process that dies (killed, out of memory) is restarted by Ray (`max_restarts`) and its unfinished cases are
retried (`max_task_retries`); cases finished before are on disk and never sent again. A case that kills its
worker on every retry is recorded as failed. Ctrl-C kills the actors, waits for them to die and removes their
staging folders, so only complete cases remain.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import InputError
from . import runner

log = logging.getLogger(__name__)
QUEUED_PER_WORKER = 2  # cases in flight per actor: one detecting, one reading
TASK_RETRIES = 2  # a case is retried this often after its worker died, then recorded as failed
LOCAL_OBJECT_STORE_BYTES = 200 * 2 ** 20  # the actors exchange case paths and rows only


class CaseWorker:
    """A Ray actor (see run_batch_ray): one detector instance, many cases."""

    def __init__(self, detector: str, params: dict, threads: int, force: bool):
        from ..detectors import get_detector
        from ..runtime import configure_threads

        configure_threads(threads)
        self.det = get_detector(detector)
        self.params = params
        self.force = force
        self.lock = threading.Lock()

    def run(self, case, case_dir: str) -> dict:
        done = runner.finished_row(case, Path(case_dir)) if not self.force else None
        if done is not None:  # a retry of a case its killed worker had already published: not redone
            done["worker_pid"] = os.getpid()
            return done
        row = runner.process(self.det, case, Path(case_dir), self.params, self.lock)
        row["worker_pid"] = os.getpid()
        return row

    def stats(self) -> dict:
        import resource

        return {"pid": os.getpid(), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


@dataclass
class RayRun:
    """What the driver knows while it runs (handed to `on_start` / `on_result`; tests use it)."""
    pids: list[int] = field(default_factory=list)  # actor processes as started
    inflight: dict[str, int] = field(default_factory=dict)  # case id -> actor index
    startup_seconds: float = 0.0


def _check(workers: int, gpus_per_worker: float | None) -> None:
    if not isinstance(workers, int) or workers < 1:
        raise InputError(f"workers: expected a whole number >= 1, received {workers!r}")
    if gpus_per_worker is not None and not gpus_per_worker >= 0:
        raise InputError(f"gpus_per_worker: expected a number >= 0, received {gpus_per_worker!r}")


def _connect(address: str | None, workers: int) -> bool:
    """Connect to `address`, or start a local cluster on 127.0.0.1 sized for `workers`; True if started here."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=workers, include_dashboard=False, _node_ip_address="127.0.0.1",
                 object_store_memory=LOCAL_OBJECT_STORE_BYTES, log_to_driver=False)
    return True


def run_batch_ray(detector: str, input_path: str | Path, out_dir: str | Path, params: dict | None = None,
                  force: bool = False, limit: int | None = None, address: str | None = None, workers: int = 2,
                  gpus_per_worker: float | None = None, progress: Callable | None = None,
                  on_start: Callable[[RayRun], None] | None = None,
                  on_result: Callable[[dict, RayRun], None] | None = None) -> list[dict]:
    """Like `runner.run_batch`, on `workers` Ray actors. `gpus_per_worker` None: 1 when the cluster has GPUs,
    else 0 (CPU actors). Returns the summary rows (each run row also carries the worker's `worker_pid`)."""
    _check(workers, gpus_per_worker)
    try:
        import ray
        from ray.exceptions import RayActorError, RayError
    except ImportError:
        raise InputError("engine: --engine ray needs Ray: pip install 'uad-label[ray]'") from None
    from ..detectors import get_detector

    p = get_detector(detector).validate(params or {})  # refuse bad parameters before any cluster starts
    out = Path(out_dir)
    todo, rows = runner.plan(input_path, out, force, limit)
    n_skipped = len(rows)
    state = RayRun()
    for row in rows if on_result else ():  # the finished cases first, like the local engine
        on_result(row, state)
    if not todo:  # everything finished: nothing to start a cluster for
        return runner.write_summary(rows, out, detector, p, {"engine": "ray", "workers": workers,
                                                             "address": address or "local", **runner.throughput(0, 0)})
    t_start = time.perf_counter()
    started = _connect(address, workers)
    actors = []
    try:
        have = ray.cluster_resources()
        gpus = gpus_per_worker
        if gpus is None:
            gpus = 1.0 if have.get("GPU", 0) >= 1 else 0.0
        for kind, need in (("CPU", workers), ("GPU", gpus * workers)):
            if need > have.get(kind, 0):  # actors would wait for resources forever
                raise InputError(f"workers: {workers} worker(s) need {need:g} {kind}(s); the cluster has "
                                 f"{have.get(kind, 0):g}")
        worker_cls = ray.remote(CaseWorker).options(
            num_cpus=1, num_gpus=gpus, max_restarts=-1, max_task_retries=TASK_RETRIES,
            max_concurrency=QUEUED_PER_WORKER)
        actors = [worker_cls.remote(detector, p, 1, force) for _ in range(workers)]
        state.pids = [s["pid"] for s in ray.get([a.stats.remote() for a in actors])]
        state.startup_seconds = time.perf_counter() - t_start
        if on_start:
            on_start(state)
        bar = progress(total=n_skipped + len(todo)) if progress else None
        if bar:
            bar.update(n_skipped)
        t0 = time.perf_counter()
        queue = list(reversed(todo))
        inflight: dict = {}  # object ref -> (case, case_dir, actor index)
        load = [0] * workers
        while queue or inflight:
            for i in range(workers):
                while queue and load[i] < QUEUED_PER_WORKER:
                    case, case_dir = queue.pop()
                    inflight[actors[i].run.remote(case, str(case_dir))] = (case, case_dir, i)
                    state.inflight[case.case_id] = i
                    load[i] += 1
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                case, case_dir, i = inflight.pop(ref)
                load[i] -= 1
                state.inflight.pop(case.case_id, None)
                try:
                    row = ray.get(ref)
                except RayActorError as exc:  # the worker died on every retry of this case
                    row = runner.failed_row(case, case_dir, f"worker died {TASK_RETRIES + 1} times: "
                                            f"{type(exc).__name__}", str(exc)[:2000], 0.0)
                except RayError as exc:
                    row = runner.failed_row(case, case_dir, f"{type(exc).__name__}: {str(exc)[:500]}",
                                            str(exc)[:2000], 0.0)
                rows.append(row)
                if bar:
                    bar.update(1)
                runner.show_progress(bar, rows, t0, n_skipped)
                if on_result:
                    on_result(row, state)
        run_s = time.perf_counter() - t0
        if bar:
            bar.close()
        peak = [s["peak_rss_mb"] for s in ray.get([a.stats.remote() for a in actors])]
        info = {"engine": "ray", "workers": workers, "gpus_per_worker": gpus,
                "address": address or "local (started here)", "startup_seconds": round(state.startup_seconds, 2),
                "worker_peak_rss_mb": peak, **runner.throughput(len(todo), run_s)}
        return runner.write_summary(rows, out, detector, p, info)
    except KeyboardInterrupt:
        log.warning("interrupted: stopping the workers; finished cases are kept, unfinished ones removed")
        raise
    finally:
        _stop(actors, out, started)


def _stop(actors: list, out: Path, started: bool) -> None:
    """Kill the actors, wait until they are gone (no worker still writes), remove staging folders."""
    import ray
    from ray.exceptions import GetTimeoutError, RayError

    for a in actors:
        ray.kill(a, no_restart=True)
    for a in actors:
        try:
            ray.get(a.stats.remote(), timeout=30)
        except (RayError, GetTimeoutError):
            pass  # dead, as wanted
    if started:
        ray.shutdown()
    runner.clean_staging(out)
