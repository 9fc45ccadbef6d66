"""benchmarks/bench_ops.py on a tiny shape: the table's arithmetic and the accuracy figures it reports."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_ops", ROOT / "benchmarks" / "bench_ops.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_run_writes_consistent_results(bench, tmp_path):
    bench.main(["--shape", "4", "8", "--repeats", "1", "--threads", "1", "--no-compile", "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "ops.json").read_text())
    assert (tmp_path / "ops_speed.png").stat().st_size > 0 and (tmp_path / "ops_error.png").stat().st_size > 0
    speed = summary["speed"]
    assert set(speed["ops"]) == {"expmap", "logmap", "dist", "geodesic"}
    for op, rows in speed["ops"].items():
        assert rows["geoopt"]["speedup_vs_geoopt"] == pytest.approx(1.0)
        for row in rows.values():
            assert row["speedup_vs_geoopt"] == pytest.approx(rows["geoopt"]["ms"] / row["ms"])
            assert row["clone_fraction"] == pytest.approx(bench.MOVED[op] / 2 * speed["clone_ms"] / row["ms"])
    err = summary["worst_float32_error"]
    # the float32 contract the README quotes: ours (plain and cache-blocked dist) within 1e-5, geoopt far off
    assert err["spherical"]["worst_dist_rel_err_contract_range"] <= 1e-5
    assert err["spherical"]["worst_blocked_dist_rel_err_contract_range"] <= 1e-5
    assert err["spherical"]["worst_logmap_rel_err_contract_range"] <= 1e-5
    assert err["geoopt"]["worst_dist_rel_err_contract_range"] > 1e-2
