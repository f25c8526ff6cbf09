"""Batch inference: `uad batch` (runner.py, report.py) and the server's batch task (server.py)."""
