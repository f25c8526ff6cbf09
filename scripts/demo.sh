#!/usr/bin/env bash
# Set everything up, build the demo datastore if it is missing and start the server on it.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
STUDIES="${UAD_STUDIES:-$ROOT/demo_datastore}"
HOST="${UAD_HOST:-127.0.0.1}"
PORT="${UAD_PORT:-8000}"
if [ ! -f "$STUDIES/.uad-sample-data" ]; then
  .venv/bin/uad sample-data "$STUDIES"
fi
exec .venv/bin/uad serve --studies "$STUDIES" --host "$HOST" --port "$PORT"
