from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HELP = """Start the MONAI Label server of uad-label on a studies folder (equivalent to
`monailabel start_server --app server_app --studies DIR`, with uad-label's ASGI app: bad
requests get 4xx JSON errors and inference runs off the event loop)."""
EPILOG = """example:
  uad sample-data demo_datastore && uad serve --studies demo_datastore
  uad serve --studies /data/flair_scans --port 8080 --conf models flair_threshold"""


def app_dir() -> Path:
    spec = importlib.util.find_spec("uad_server_app")
    if spec and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    here = Path(__file__).resolve().parents[2] / "server_app"
    if (here / "main.py").exists():
        return here
    raise FileNotFoundError("server_app: could not find the MONAI Label app folder (reinstall uad-label)")


def add_arguments(p):
    p.add_argument("--studies", required=True, help="studies folder (MONAI Label local datastore) or DICOMweb URL")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--app", default=None, help="MONAI Label app folder (default: the bundled server_app)")
    p.add_argument("--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="app config, e.g. --conf models flair_threshold")
    p.add_argument("--stock-asgi", action="store_true", help="use MONAI Label's unmodified ASGI app")


def run(args) -> int:
    from monailabel.main import Main

    studies = args.studies
    if not studies.startswith(("http://", "https://")) and not Path(studies).is_dir():
        raise FileNotFoundError(f"--studies: {studies} is not a folder (create it with `uad sample-data {studies}`)")
    app = args.app or str(app_dir())
    argv = ["monailabel", "start_server", "--app", app, "--studies", studies, "--host", args.host,
            "--port", str(args.port)]
    if not args.stock_asgi:
        argv += ["--uvicorn_app", "uad_label.server.asgi:app"]
    for key, value in args.conf:
        argv += ["--conf", key, value]
    print(f"uad-label server: http://{args.host}:{args.port}/  (API docs at /docs, studies {studies})", flush=True)
    sys.argv = argv
    Main().run()
    return 0
