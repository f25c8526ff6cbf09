"""A throw-away Orthanc PACS on a loopback port (tests, demos): Debian packages `orthanc` and
`orthanc-dicomweb`; storage in a temporary folder; DICOMweb at http://127.0.0.1:PORT/dicom-web.

    python -m uad_label.dicom.orthanc   # starts one and prints its URL until Ctrl-C
"""
from __future__ import annotations

import glob
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import requests

PLUGIN_GLOBS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so*", "/usr/lib/orthanc/libOrthancDicomWeb.so*",
                "/usr/lib/*/orthanc/libOrthancDicomWeb.so*")


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or (("/usr/sbin/Orthanc") if Path("/usr/sbin/Orthanc").exists() else None)


def dicomweb_plugin() -> str | None:
    for pattern in PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    def __init__(self, workdir: str | Path | None = None):
        binary, plugin = orthanc_binary(), dicomweb_plugin()
        if not binary or not plugin:
            raise FileNotFoundError("Orthanc with the DICOMweb plugin is not installed "
                                    "(apt-get install -y orthanc orthanc-dicomweb)")
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="uad_orthanc_"))
        self.http_port, self.dicom_port = _free_port(), _free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.url}/dicom-web"
        config = {
            "Name": "uad-test", "StorageDirectory": str(self.dir / "db"), "IndexDirectory": str(self.dir / "db"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": "UADTEST",
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpServerEnabled": True,
            "DicomServerEnabled": True, "Plugins": [plugin], "StableAge": 1,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False,
                         "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
        }
        (self.dir / "orthanc.json").write_text(json.dumps(config, indent=2))
        self.log = open(self.dir / "orthanc.log", "w")
        self.proc = subprocess.Popen([binary, str(self.dir / "orthanc.json")], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.dir / 'orthanc.log').read_text(encoding='utf-8')[-2000:]}")
            try:
                if requests.get(self.url + "/system", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("Orthanc did not answer within 60 s")

    def upload(self, files) -> list[dict]:
        out = []
        for f in files:
            r = requests.post(self.url + "/instances", data=Path(f).read_bytes(), timeout=60)
            r.raise_for_status()
            out.append(r.json())
        return out

    def series(self) -> list[dict]:
        return [requests.get(f"{self.url}/series/{s}", timeout=30).json()
                for s in requests.get(self.url + "/series", timeout=30).json()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":
    with Orthanc() as o:
        print(f"Orthanc at {o.url}; DICOMweb {o.dicomweb}; storage {o.dir}  (Ctrl-C stops)", flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
