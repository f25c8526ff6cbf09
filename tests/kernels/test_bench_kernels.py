"""`uad bench kernels` wiring (the benchmark itself is run by hand: it takes minutes)."""
from __future__ import annotations

import json

from uad_label.cli import cmd_bench

bench = cmd_bench.load_benchmark("kernels/bench_kernels.py")


def test_cli_module_contract():
    assert isinstance(cmd_bench.HELP, str) and "uad bench kernels" in cmd_bench.EPILOG
    assert "kernels" in cmd_bench.SUITES


def test_cli_runs_the_registered_suite(monkeypatch, tmp_path):
    import argparse

    calls = []
    monkeypatch.setitem(cmd_bench.SUITES, "kernels", ("x", lambda d, q, o: calls.append((d, q, o)) or {}))
    p = argparse.ArgumentParser()
    cmd_bench.add_arguments(p)
    args = p.parse_args(["kernels", "--quick", "--device", "cpu", "--out", str(tmp_path)])
    assert cmd_bench.run(args) == 0
    assert calls == [("cpu", True, tmp_path)]


def test_bench_report_format(tmp_path):
    rows = bench.Rows(__import__("torch").device("cpu"), copy_gbps=10.0)
    rows.add_group("op", "size", {"reference": 2.0, "baseline": 4.0}, nbytes=4e9)
    assert rows.rows[0]["gb_per_s"] == 2.0 and rows.rows[0]["copy_frac"] == 0.2
    assert rows.rows[0]["speedup_vs_base"] == 2.0 and rows.rows[1]["speedup_vs_ref"] == 0.5
    result = {"meta": {"device": "cpu", "device_name": "x", "date": "d", "versions": {"torch": "t"}, "quick": True,
                       "cpu_threads": 2, "copy_gb_per_s": 10.0, "kernel_backend": "none"}, "rows": rows.rows}
    md = bench.markdown(result)
    assert "| op | size | reference |" in md
    json.dumps(result)


def test_pix2pix_unet_256_size():
    net = bench.pix2pix_unet(3, 3, 8, 64)
    assert abs(sum(p.numel() for p in net.parameters()) / 1e6 - 54.4) < 0.1
