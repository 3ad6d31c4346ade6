"""The benchmark suite's smoke runs: every benchmark starts what it measures and reports every figure.

No timing is asserted: the numbers of a one-second run on a shared machine mean nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from benchmarks.run import FLOORS, RELAY_FLOOR, RELAY_LOOKING, TARGETS, WORKLOADS
from benchmarks.run import report as print_report
from benchmarks.workloads import MIXED_SCRIPTS, MIXED_SHAPES, bench_policy, mixed_shapes, substituted
from pgproxy.analysis.cache import normalize


def run_smoke(module: str, repo_root: Path, out: Path, *options: str) -> tuple[dict[str, Any], str]:
    """Run `python -m module --smoke --json out [options]`; its JSON report and its stdout."""
    result = subprocess.run([sys.executable, "-m", module, "--smoke", "--json", str(out), *options],
                            capture_output=True, text=True, timeout=600, cwd=repo_root)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(out.read_text()), result.stdout


@pytest.mark.timeout(300)  # a minute on an idle machine; more when the suite runs beside it
def test_benchmark_suite_smoke(tmp_path: Path, repo_root: Path) -> None:
    report, stdout = run_smoke("benchmarks.run", repo_root, tmp_path / "bench.json", "--relay-floor")
    assert set(report["results"]) == {w.name for w in WORKLOADS}
    for by_target in report["results"].values():
        assert set(by_target) == {*TARGETS, RELAY_FLOOR, RELAY_LOOKING}
        assert all(r["tps"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"] for r in by_target.values())
    assert set(report["copy"]) == {*TARGETS, RELAY_FLOOR, RELAY_LOOKING}
    assert all(c["rows"] == 1_000_000 and c["rows_per_s"] > 0 for c in report["copy"].values())
    assert set(report["floors"]) == set(report["targets"]) <= set(report["ratios"])  # DESIGN.md's all measured
    for workload in ("tpcb", "mixed", "storm"):
        assert f"enforce_vs_pgbouncer_tps_8_{workload}" in report["ratios"]
        assert f"enforce_vs_passthrough_tps_8_{workload}" in report["ratios"]
    assert "copy_enforce_vs_direct_rows_per_s" in report["ratios"]
    assert {"relay_floor_vs_pgbouncer_tps_8_simple", "relay_looking_vs_pgbouncer_tps_8_prepared",
            "passthrough_vs_pgbouncer_tps_8_prepared"} <= set(report["ratios"])
    # One round: each ratio's spread over rounds is that round's value, which is the median's.
    assert report["ratio_rounds"] == {name: [value] for name, value in report["ratios"].items()}
    assert "| ratio | this run | rounds: lowest-highest | regression floor | DESIGN.md target |" in stdout
    assert "| COPY pgbench_accounts TO STDOUT | enforce |" in stdout


def test_check_flags_only_ratios_past_their_regression_floor(capsys: pytest.CaptureFixture[str]) -> None:
    limits = {"enforce_vs_pgbouncer_tps_8_simple": {"floor": 0.75, "target": 0.9},
              "enforce_vs_pgbouncer_tps_8_prepared": {"floor": 0.75, "target": 0.9},
              "added_latency_vs_pgbouncer_1_simple": {"floor": 1.8, "target": 1.5},
              "added_latency_vs_pgbouncer_1_prepared": {"floor": 1.8, "target": 1.5}}
    found = {"enforce_vs_pgbouncer_tps_8_simple": 0.8, "enforce_vs_pgbouncer_tps_8_prepared": 0.7,
             "added_latency_vs_pgbouncer_1_simple": 1.6, "added_latency_vs_pgbouncer_1_prepared": 1.9,
             "passthrough_vs_pgbouncer_tps_8_simple": 0.1}
    args = argparse.Namespace(rounds=1, duration=1.0, copy_repeats=1)
    regressions = print_report({}, {}, found, {name: [value] for name, value in found.items()}, limits, args)
    assert regressions == ["enforce_vs_pgbouncer_tps_8_prepared", "added_latency_vs_pgbouncer_1_prepared"]
    table = capsys.readouterr().out
    assert "| enforce_vs_pgbouncer_tps_8_simple | 0.800 | 0.800-0.800 | 0.75 | 0.9 not met |" in table
    assert "| enforce_vs_pgbouncer_tps_8_prepared | 0.700 | 0.700-0.700 | 0.75 REGRESSION | 0.9 not met |" in table
    assert "| added_latency_vs_pgbouncer_1_simple | 1.600 | 1.600-1.600 | 1.8 | 1.5 not met |" in table
    assert "| passthrough_vs_pgbouncer_tps_8_simple | 0.100 | 0.100-0.100 | - | - |" in table


def test_floors_keep_design_targets() -> None:
    limits = json.loads(FLOORS.read_text())
    assert {name: v["target"] for name, v in limits.items()} == {
        "enforce_vs_pgbouncer_tps_8_simple": 0.9, "enforce_vs_pgbouncer_tps_8_prepared": 0.9,
        "enforce_vs_passthrough_tps_8_simple": 0.95, "enforce_vs_passthrough_tps_8_prepared": 0.95,
        "added_latency_vs_pgbouncer_1_simple": 1.5, "added_latency_vs_pgbouncer_1_prepared": 1.5}


def test_mixed_workload_has_distinct_shapes() -> None:
    """200 statements the decision cache keys apart, in no more scripts than pgbench accepts (128)."""
    shapes = mixed_shapes()
    assert len(shapes) == MIXED_SHAPES == 200
    assert len({normalize(substituted(shape)) for shape in shapes}) == MIXED_SHAPES
    assert len(MIXED_SCRIPTS) <= 128


def test_bench_policy_excepts_only_the_copy_workload() -> None:
    rules = yaml.safe_load(bench_policy())["rules"]
    names = [rule["name"] for rule in rules]
    exception = rules[names.index("bench-copy-accounts")]
    assert exception == {"name": "bench-copy-accounts", "kinds": ["copy_to"], "tables": ["public.pgbench_accounts"],
                         "action": "allow", "reason": exception["reason"]}
    # Right before the rule it makes an exception to, so the deny rules before it still win.
    assert names.index("bench-copy-accounts") + 1 == names.index("export")
    assert names.index("server-access") < names.index("bench-copy-accounts")


def test_scale_smoke(tmp_path: Path, repo_root: Path) -> None:
    report, stdout = run_smoke("benchmarks.scale", repo_root, tmp_path / "scale.json")
    assert (report["clients"], report["held"]) == (50, 10)
    assert report["tps_free"] > 0 and report["tps_held"] > 0
    assert report["ratio_held_vs_free"] == pytest.approx(report["tps_held"] / report["tps_free"])
    assert {"idle", "60 connections, 0 held (peak)", "60 connections, 10 held (peak)"} <= set(report["rss_mb"])
    assert all(mb > 0 for mb in report["rss_mb"].values())
    assert "| held / nothing held |" in stdout


def test_micro_wire_smoke(tmp_path: Path, repo_root: Path) -> None:
    report, stdout = run_smoke("benchmarks.micro_wire", repo_root, tmp_path / "wire.json")
    measured = report["ns_per_message"]
    assert {"decode_query", "decode_parse", "decode_bind (2 parameters)", "row_description_sources (3 columns)",
            "Query.encode"} <= set(measured)
    assert sum(name.startswith("FrameReader.feed") for name in measured) == 2
    assert all(ns > 0 for ns in measured.values())
    assert "| wire codec" in stdout


def test_audit_benchmark_smoke(tmp_path: Path, repo_root: Path) -> None:
    report, stdout = run_smoke("benchmarks.audit", repo_root, tmp_path / "audit.json")
    assert report["writer"]["events"] == 2000 and report["writer"]["writer_events_per_second"] > 0
    assert set(report["tps"]) == {"select-only simple, 1 client", "select-only simple, 8 clients"}
    assert all(tps["off"] > 0 and tps["on"] > 0 for tps in report["tps"].values())
    assert report["statement_events"] > 100  # the audited proxy really recorded every transaction
    assert "| workload | audit off | audit on | on / off |" in stdout


def test_audit_flood_benchmark_smoke(tmp_path: Path, repo_root: Path) -> None:
    report, stdout = run_smoke("benchmarks.audit_flood", repo_root, tmp_path / "flood.json")
    results = report["results"]
    assert len(results) == 3 and all(r["attempts"] > 0 for r in results.values())
    for r in results.values():  # every refused attempt is accounted for, one by one or counted
        assert r["refused_one_by_one"] + r["refused_counted"] == r["attempts"], r
    assert "| configuration | attempts/s | audit events/s |" in stdout


@pytest.mark.parametrize("module", ["benchmarks.micro_relay", "benchmarks.cpu"])
def test_relay_cost_smoke(tmp_path: Path, repo_root: Path, module: str) -> None:
    report, stdout = run_smoke(module, repo_root, tmp_path / "relay.json")
    modes = ("passthrough", "enforce", "enforce_sampling") if module == "benchmarks.micro_relay" \
        else ("passthrough", "enforce")
    assert set(report) == {f"{mode}_{protocol}_us" for mode in modes for protocol in ("simple", "prepared")}
    assert all(us > 0 for us in report.values())
    assert "enforce_prepared_us" in stdout


def test_ab_smoke(tmp_path: Path, repo_root: Path) -> None:
    """The A/B comparison, here of this checkout against itself."""
    report, stdout = run_smoke("benchmarks.ab", repo_root, tmp_path / "ab.json", "--base", str(repo_root))
    assert set(report) == {f"{mode}_{protocol}_8" for mode in ("passthrough", "enforce")
                           for protocol in ("simple", "prepared")}
    assert all(row["base_tps"] > 0 and row["this_tps"] > 0 for row in report.values())
    assert "| this / base |" in stdout


@pytest.mark.timeout(300)
def test_refresh_benchmark_smoke(tmp_path: Path, repo_root: Path) -> None:
    report, stdout = run_smoke("benchmarks.refresh", repo_root, tmp_path / "refresh.json")
    assert report["demo_refresh_s"] > 0 and report["synthetic_refresh_s"] > 0
    assert report["synthetic_relations"] >= 20 + 4  # its tables and views, besides the catalogs
    assert "| synthetic (20 tables, 4 views, 4 functions) |" in stdout


def test_retry_benchmark_smoke(tmp_path: Path, repo_root: Path) -> None:
    """Each round's statement was refused (55000) before approval and ran once after it."""
    report, stdout = run_smoke("benchmarks.retry", repo_root, tmp_path / "retry.json")
    assert report["rounds"] == 3
    assert all(len(report[key]) == 3 and all(ms > 0 for ms in report[key])
               for key in ("decision_post_ms", "retry_ms", "decision_to_rows_ms"))
    assert "| decision sent -> retried statement's row |" in stdout


def test_scan_benchmark_smoke(tmp_path: Path, repo_root: Path) -> None:
    report, stdout = run_smoke("benchmarks.scan", repo_root, tmp_path / "scan.json")
    assert {"load_s", "emails_values_per_s", "no_pii_values_per_s", "free_text_values_per_s", "demo_scan_s",
            "demo_scan_values", "demo_scan_values_per_s"} <= set(report)
    assert report["demo_scan_values"] > 0
    assert "values/s" in stdout


@pytest.mark.timeout(300)
def test_sampling_benchmark_smoke(tmp_path: Path, repo_root: Path) -> None:
    """Sampling off, on at 1/s and on at 50/s, side by side: every run has TPS, the free-text
    workload is sampled and its PII column found, and the proxy with sampling off runs no worker."""
    report, stdout = run_smoke("benchmarks.sampling", repo_root, tmp_path / "sampling.json")
    targets = {"direct", "off", "on, 1/s", "on, 50/s"}
    assert all(set(by_target) == targets and all(r["tps"] > 0 for r in by_target.values())
               for by_target in report["results"].values())
    assert report["workers"]["off"] == {"cpu_seconds": 0.0, "detected": [], "counts": {}}
    for name in ("on, 1/s", "on, 50/s"):
        assert report["workers"][name]["detected"] == ["public.sampling_text.body"]
        assert report["workers"][name]["counts"]["results_sampled"] >= 1
    assert "vs off" in stdout


def test_masking_benchmark_smoke(tmp_path: Path, repo_root: Path) -> None:
    """Masked and unmasked reads of the same 10,000 rows through one proxy, and directly (the
    benchmark itself checks that the tagged table's rows come back masked)."""
    report, stdout = run_smoke("benchmarks.masking", repo_root, tmp_path / "masking.json")
    assert report["rows"] == 10_000 and report["rounds"] == 2
    for case in ("text", "binary", "copy"):
        assert {label: len(ms) for label, ms in report["ms"][case].items()} == \
            {"masked": 2, "unmasked": 2, "direct": 2}
        assert report["ratios"][f"{case}_masked_vs_unmasked"] > 0
    assert "| SELECT, binary results |" in stdout
