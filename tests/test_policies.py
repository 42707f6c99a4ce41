"""`python -m benchmarks.policies` on the real CPU engine: stopped paths counted, figures written."""

from __future__ import annotations

import json

import pytest

from benchmarks import policies


def test_policies_benchmark_counts_stopped_paths_and_writes_its_figures(cpu_engine, tmp_path):
    out = tmp_path / "policies"
    argv = ["--n", "4", "--dataset", "chain", "--limit", "3", "--policies", "full", "first:2",
            "--explorer-url", cpu_engine.explorer.base_url, "--output", str(out),
            "--explorer-max-tokens", "512", "--synthesizer-max-tokens", "160"]  # fmt: skip
    assert policies.main(argv) == 0
    rows = json.loads((out / "policies.json").read_text())["policies"]
    records = [json.loads(line) for line in (out / "first-2.jsonl").read_text().splitlines()]
    spent = sum(p["completion_tokens"] for r in records for p in r["paths"])
    assert rows["first:2"]["explorer_tokens_per_problem"] == pytest.approx(spent / 3)
    assert rows["first:2"]["paths_kept_per_problem"] == 2 and rows["full"]["paths_kept_per_problem"] == 4
    assert rows["first:2"]["replay"]["saved_percent"] > 0  # replayed on the full run's own paths
    assert (out / policies.PNG).stat().st_size > 0
    assert policies.main(argv) == 0  # all done: a rerun resumes everything and keeps the measured rates
    again = json.loads((out / "policies.json").read_text())["policies"]
    assert again["first:2"]["explorer_tokens_per_s"] == rows["first:2"]["explorer_tokens_per_s"] > 0
