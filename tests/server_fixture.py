"""Start the real uad-label server on a loopback port for tests (no mocks)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, studies: Path, log: Path, conf: dict | None = None, env: dict | None = None):
        """`env` adds environment variables (e.g. TMPDIR: a temp folder the test can watch)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "uad_label.cli.main", "serve", "--studies", str(studies), "--port", str(self.port)]
        for k, v in (conf or {}).items():
            cmd += ["--conf", k, v]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                tail = log.read_text(encoding="utf-8")[-3000:]
                raise RuntimeError(f"server exited with {self.proc.returncode}; log: {tail}")
            try:
                if requests.get(self.url + "/info/", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server did not answer within 180 s; log: {log.read_text(encoding='utf-8')[-3000:]}")

    def alive(self) -> bool:
        return requests.get(self.url + "/info/", timeout=10).status_code == 200

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()
