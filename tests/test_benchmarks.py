"""The benchmark suite's smoke run: it starts every target and reports every ratio (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.run import TARGETS, WORKLOADS


def test_benchmark_suite_smoke(tmp_path: Path, repo_root: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.run", "--smoke", "--json", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=repo_root)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["results"]) == {w.name for w in WORKLOADS}
    for by_target in report["results"].values():
        assert set(by_target) == set(TARGETS)
        assert all(r["tps"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"] for r in by_target.values())
    assert set(report["ratios"]) == set(report["floors"])  # every DESIGN.md ratio is measured and has a floor
    assert "| ratio | this run | floor" in result.stdout
