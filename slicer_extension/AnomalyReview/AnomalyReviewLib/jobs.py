"""Background jobs without Qt: a worker thread, status and progress to poll, cancellation.

The Slicer widget starts a Job, polls it from a QTimer (never blocking the Qt thread) and calls
`cancel()` from a button. The work function receives a `JobContext`: it reports progress, checks
`cancelled`, and registers abort callbacks (the HTTP client closes its socket there, so a request
blocked on the server returns at once).
"""
from __future__ import annotations

import threading
import time
import traceback
from typing import Any, Callable, Optional

PENDING, RUNNING, DONE, FAILED, CANCELLED = "pending", "running", "done", "failed", "cancelled"


class Cancelled(Exception):
    """Raised inside a job's work when the job was cancelled."""


class JobContext:
    def __init__(self):
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._aborts: list[Callable[[], None]] = []
        self.fraction: Optional[float] = None  # None: indeterminate
        self.message = ""

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        if self._cancel.is_set():
            raise Cancelled("cancelled")

    def progress(self, fraction: Optional[float], message: str = "") -> None:
        self.fraction = None if fraction is None else min(1.0, max(0.0, float(fraction)))
        if message:
            self.message = message
        self.check()

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run `callback` when the job is cancelled (at once if it already is). Returns a function
        that unregisters it."""
        with self._lock:
            if not self._cancel.is_set():
                self._aborts.append(callback)
                return lambda: self._unregister(callback)
        callback()
        return lambda: None

    def _unregister(self, callback) -> None:
        with self._lock:
            if callback in self._aborts:
                self._aborts.remove(callback)

    def cancel(self) -> None:
        with self._lock:
            self._cancel.set()
            aborts, self._aborts = self._aborts, []
        for cb in aborts:
            try:
                cb()
            except Exception:
                pass


class Job:
    """`Job(work, *args)`: `work(context, *args)` runs in a daemon thread once `start()` is called.

    poll() -> status; `result` / `error` once finished. A cancelled job reports CANCELLED at once
    even if its thread is still unwinding; whatever it returns afterwards is discarded."""

    def __init__(self, work: Callable[..., Any], *args, name: str = "job", **kwargs):
        self.name = name
        self.context = JobContext()
        self._work, self._args, self._kwargs = work, args, kwargs
        self._status = PENDING
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.traceback = ""
        self.started = self.finished = None

    def start(self) -> "Job":
        with self._lock:
            if self._status != PENDING:
                raise RuntimeError(f"job {self.name}: already {self._status}")
            self._status = RUNNING
        self.started = time.time()
        self._thread = threading.Thread(target=self._run, name=f"AnomalyReview-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            result = self._work(self.context, *self._args, **self._kwargs)
            outcome, value, error = DONE, result, None
        except Cancelled:
            outcome, value, error = CANCELLED, None, None
        except BaseException as exc:  # reported through poll(), never raised in the Qt thread
            outcome, value, error = FAILED, None, exc
            self.traceback = traceback.format_exc()
        with self._lock:
            if self._status == CANCELLED:
                return
            if self.context.cancelled:
                outcome, value, error = CANCELLED, None, None
            self._status, self.result, self.error = outcome, value, error
            self.finished = time.time()

    def poll(self) -> str:
        with self._lock:
            return self._status

    @property
    def status(self) -> str:
        return self.poll()

    @property
    def running(self) -> bool:
        return self.poll() in (PENDING, RUNNING)

    @property
    def progress(self) -> tuple[Optional[float], str]:
        return self.context.fraction, self.context.message

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started

    def cancel(self) -> None:
        with self._lock:
            if self._status in (DONE, FAILED, CANCELLED):
                return
            self._status = CANCELLED
            self.finished = time.time()
        self.context.cancel()

    def wait(self, timeout: Optional[float] = None) -> str:
        """For scripts and tests (the widget polls instead)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.poll()
