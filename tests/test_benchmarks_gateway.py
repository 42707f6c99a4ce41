"""`python -m benchmarks.gateway` as a user types it: two CPU explorer workers behind the gateway, then one alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.engine
def test_the_gateway_benchmark_reports_its_figures_as_json(tiny_model, tmp_path):
    argv = [sys.executable, "-m", "benchmarks.gateway", "--workers", "2", "--n", "4", "--limit", "4",
            "--stop", "first:2", "--json", "--output", str(tmp_path)]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(done.stdout)
    assert figures == json.loads((tmp_path / "gateway.json").read_text())
    assert figures["problems"] == 4 and figures["failed"] == 0 and figures["config"]["stop"] == "first:2"
    assert figures["workers_served"] == sum(n > 0 for n in figures["requests_per_worker"].values()) >= 1
    assert (
        0 < figures["cache_hit"] <= 1
    )  # at least 0.9 is asserted where A2R runs through it (test_engine_gateway.py)
    assert figures["running_after_stop"] == 0
    assert figures["tokens_per_s"] > 0 and figures["one_worker"]["tokens_per_s"] > 0
    assert figures["speedup"] == figures["tokens_per_s"] / figures["one_worker"]["tokens_per_s"]
    assert len((tmp_path / "gateway.jsonl").read_text().splitlines()) == 4
