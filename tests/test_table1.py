"""Table 1's arithmetic on hand-built samples (benchmarks.table1): each dataset's metrics, votes per run at
smaller N, the average over datasets, and the paper's layout, printed whole when piped. Pure: no engine."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from benchmarks.table1 import ProblemRuns, average, dataset_metrics, table1
from programs import cli

# Two problems, two runs of two paths each, N in {1, 2}.
PROBLEMS = [
    ProblemRuns(gold="5", answers=[["5", "4"], ["4", "4"]], a2r={1: [True, False], 2: [True, True]}),
    ProblemRuns(gold="7", answers=[[None, None], ["7", "7"]], a2r={1: [False, True], 2: [False, False]}),
]


def test_dataset_metrics_known_values():
    row = dataset_metrics(PROBLEMS, [2, 1])
    # Pass@1 over all runs x maxN paths: 1/4 and 2/4 correct.
    assert row["pass@1"] == pytest.approx(37.5)
    # N=1: each run's first path. Votes 5,4 then -,7: half right each.
    assert row["cons@1"] == pytest.approx(50.0) and row["a2r@1"] == pytest.approx(50.0)
    # N=2: run votes (5 ties 4, first seen wins: right; 4: wrong) and (nobody answered: wrong; 7: right).
    assert row["cons@2"] == pytest.approx(50.0)
    # Unbiased pass@2 from each problem's 4 samples: 1 - C(3,2)/C(4,2) = 1/2 and 1 - C(2,2)/C(4,2) = 5/6.
    assert row["pass@2"] == pytest.approx(100 * (0.5 + 5 / 6) / 2)
    assert row["a2r@2"] == pytest.approx(50.0)
    assert (row["problems"], row["samples"], row["no_answer"]) == (2, 8, 2)
    assert row["pass@2"] >= row["pass@1"]


def test_smaller_n_votes_per_run_but_pass_at_n_uses_every_path():
    # One problem, two runs of four paths, one correct path in all eight.
    problem = ProblemRuns(
        gold="1", answers=[["1", "0", "0", "0"], ["0"] * 4], a2r={2: [True, True], 4: [False, True]}
    )
    row = dataset_metrics([problem], [4, 2])
    assert row["pass@1"] == pytest.approx(100 / 8)
    # Run 0's first two paths tie 1 against 0 and 1 was seen first; run 1 votes 0. At N=4 both vote 0.
    assert (row["cons@2"], row["cons@4"]) == (pytest.approx(50.0), 0.0)
    # 1 - C(7,2)/C(8,2) and 1 - C(7,4)/C(8,4), from all eight paths.
    assert (row["pass@2"], row["pass@4"]) == (pytest.approx(25.0), pytest.approx(50.0))
    assert (row["a2r@2"], row["a2r@4"]) == (100.0, 50.0)
    with pytest.raises(ValueError, match="max\\(ns\\) = 8"):
        dataset_metrics([problem], [2, 8])


def test_average_weighs_datasets_equally_and_sums_counts():
    one = dataset_metrics(PROBLEMS, [1, 2])
    other = dataset_metrics(PROBLEMS[:1], [1, 2])
    avg = average({"a": one, "b": other})
    assert avg["pass@1"] == pytest.approx((37.5 + 25.0) / 2)
    assert avg["a2r@2"] == pytest.approx((50.0 + 100.0) / 2)
    assert avg["problems"] == 3 and avg["samples"] == 12


def test_table_is_laid_out_like_the_papers():
    rows = {"aime24": dataset_metrics(PROBLEMS, [1, 2])}
    summary = {
        "config": {"explorer_model": "Qwen/Qwen3-4B", "synthesizer_model": "Qwen/Qwen3-8B"},
        "protocol": {"ns": [1, 2], "runs": 2},
        "datasets": rows,
        "average": average(rows),
    }
    table = table1(summary)
    headers = [c.header for c in table.columns]
    assert headers == ["dataset", "model", "Pass@1", "Cons@1", "Pass@1", "A2R@1", "Cons@2", "Pass@2", "A2R@2"]
    assert list(table.columns[0].cells) == ["aime24", "Average"]
    assert list(table.columns[1].cells) == ["qwen3-4b -> qwen3-8b"] * 2
    assert list(table.columns[-1].cells) == ["50.00", "50.00"]


def test_the_table_is_printed_whole_when_piped(monkeypatch):
    ns = [1, 2]
    rows = {"aime24": dataset_metrics(PROBLEMS, ns), "beyond_aime": dataset_metrics(PROBLEMS, ns)}
    summary = {
        "config": {
            "explorer_model": "/models/a-long-local-checkpoint-name",
            "synthesizer_model": "Qwen/Qwen3-32B",
        },
        "protocol": {"ns": ns, "runs": 2},
        "datasets": rows,
        "average": average(rows),
    }
    piped = Console(file=io.StringIO())  # not a terminal: 80 columns unless told otherwise
    monkeypatch.setattr(cli, "console", piped)
    cli.show(table1(summary))
    printed = piped.file.getvalue()
    assert "…" not in printed and "beyond_aime" in printed and "a-long-local-checkpoint-name" in printed
    assert all(f"A2R@{n}" in printed for n in ns)
