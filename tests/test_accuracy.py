"""`python -m benchmarks.accuracy`: the table's arithmetic on hand-built samples, and the protocol end to end
on a real CPU engine (one exploration per problem and run reused for every N, resume, summary, plots)."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console

from benchmarks.accuracy import main, parse_args
from benchmarks.cost import model_key
from benchmarks.table1 import ProblemRuns, average, dataset_metrics, table1
from programs import cli, planning

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


@pytest.mark.parametrize("bad", [["--ns", "0"], ["--ns", "2", "2"], ["--runs", "0"]])
def test_bad_protocol_flags_are_refused(bad, capsys):
    with pytest.raises(SystemExit):
        parse_args(bad)
    assert "must be" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "datasets"),
    [
        ([], ["chain"]),  # no GPU here, no model: the offline pair's task
        (["--explorer-model", "Qwen/Qwen3-4B"], ["aime24", "aime25", "beyond_aime"]),
        (["--datasets", "gsm8k"], ["gsm8k"]),
    ],
)
def test_default_datasets_follow_the_model(argv, datasets):
    args = parse_args(argv)
    assert (args.datasets or list(planning.profile_for(args)[0].datasets)) == datasets


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def protocol_args(url: str, out: Path, ns: tuple[str, ...] = ("1", "2")) -> list[str]:
    return ["--datasets", "aime24", "--limit", "2", "--runs", "2", "--ns", *ns, "--explorer-url", url,
            "--output", str(out), "--explorer-max-tokens", "16", "--synthesizer-max-tokens", "16"]  # fmt: skip


def test_protocol_end_to_end_reuses_explorations_and_resumes(cpu_engine, tmp_path, capsys):
    url, out = cpu_engine.explorer.base_url, tmp_path / "acc"
    args = protocol_args(url, out)
    price = ["--price", f"{model_key(url)}=0.001,0.002"]
    assert main([*args, *price, "--methods", "sc", "a2r"]) == 0

    # Explored once per (problem, run) at the largest N: runs x maxN paths per problem, all seeds distinct.
    explorations = read_lines(out / "explorations.jsonl")
    assert len(explorations) == 2 * 2
    per_problem = Counter()
    for record in explorations:
        assert len(record["paths"]) == 2
        per_problem[record["problem_id"]] += len(record["paths"])
    assert list(per_problem.values()) == [2 * 2, 2 * 2]
    for pid in per_problem:
        seeds = [p["seed"] for r in explorations if r["problem_id"] == pid for p in r["paths"]]
        assert len(set(seeds)) == 4

    # One synthesis per (problem, run, N), on the first N answer parts of that run's exploration.
    syntheses = read_lines(out / "syntheses.jsonl")
    assert sorted(Counter(s["n"] for s in syntheses).items()) == [(1, 4), (2, 4)]
    by_key = {(r["problem_id"], r["run"]): r for r in explorations}
    for s in syntheses:
        prompt, paths = s["synthesizer"]["prompt"], by_key[s["problem_id"], s["run"]]["paths"]
        assert prompt.count("<reference") == s["n"]
        for i, path in enumerate(paths[: s["n"]], start=1):
            assert f"<reference{i}>{path['answer_part']}</reference{i}>" in prompt

    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == {"datasets": ["aime24"], "runs": 2, "ns": [1, 2], "methods": ["sc", "a2r"]}
    metrics = {"pass@1", "cons@1", "a2r@1", "cons@2", "pass@2", "a2r@2"}
    for row in (summary["datasets"]["aime24"], summary["average"]):
        assert metrics <= set(row) and all(0 <= row[k] <= 100 for k in metrics)
        assert row["problems"] == 2 and row["samples"] == 8
    cost = summary["cost"]["average"]
    assert 0 < cost["cons@1"] < cost["cons@2"] < cost["a2r@2"]
    assert (out / "accuracy_vs_n.png").stat().st_size > 0 and (
        out / "cost_vs_accuracy.png"
    ).stat().st_size > 0
    printed = capsys.readouterr().out
    assert "A2R@2" in printed and "0 in the CI?" in printed

    # The arena: every method and N with its interval, tokens, cost and time to answer, from the records.
    arena = summary["methods"]
    for method, n in [(m, n) for m in ("sc", "a2r") for n in ("1", "2")]:
        row = arena[method][n]
        assert row["ci"][0] <= row["accuracy"] <= row["ci"][1] and row["cost"] > 0
        assert row["tokens"] > 0 and 0 < row["latency_s"]["p50"] <= row["latency_s"]["p95"]
    for n in ("1", "2"):  # the same figures as Table 1's, interval apart
        assert arena["sc"][n]["accuracy"] == pytest.approx(summary["average"][f"cons@{n}"], abs=0.005)
        assert arena["a2r"][n]["accuracy"] == pytest.approx(summary["average"][f"a2r@{n}"], abs=0.005)
        assert arena["a2r"][n]["latency_s"]["p50"] > arena["sc"][n]["latency_s"]["p50"]
    assert arena["sc"]["1"]["tokens"] < arena["sc"]["2"]["tokens"] < arena["a2r"]["2"]["tokens"]
    same_n = [p for p in summary["paired"] if p["match"] == "same N"]
    assert [(p["a"], p["b"]) for p in same_n] == [("a2r@1", "sc@1"), ("a2r@2", "sc@2")]
    for pair in summary["paired"]:
        assert sum(pair["wins"].values()) == 2 and pair["contains_zero"] == (
            pair["ci"][0] <= 0 <= pair["ci"][1]
        )
    spread = summary["diversity"]["2"]
    assert 0 <= spread["distinct_answers"] <= 2 and 0 <= spread["entropy_bits"] <= 1
    assert 0 <= spread["lexical_overlap"] <= 1 and "a2r" in spread["gain"]
    assert {"error_correlation", "effective_paths"} <= set(spread)
    assert len(read_lines(out / "arena.jsonl")) == 2 * 2  # a row per problem and N
    assert (out / "accuracy_vs_tokens.png").stat().st_size > 0

    # Resume after losing three syntheses: only those are redone, explorations are untouched. Without a
    # price the cost plot is skipped, with a message, and an old one is removed.
    before = (out / "explorations.jsonl").read_bytes()
    lines = (out / "syntheses.jsonl").read_text().splitlines(keepends=True)
    kept, lost = lines[:2] + lines[5:], lines[2:5]
    (out / "syntheses.jsonl").write_text("".join(kept))
    assert main(args) == 0
    assert (out / "explorations.jsonl").read_bytes() == before
    after = (out / "syntheses.jsonl").read_text().splitlines(keepends=True)
    assert after[: len(kept)] == kept
    assert sorted(json.loads(line)["id"] for line in after[len(kept) :]) == sorted(
        json.loads(line)["id"] for line in lost
    )
    assert "cost_vs_accuracy.png skipped" in capsys.readouterr().out
    assert "skipped" in json.loads((out / "summary.json").read_text())["cost"]
    assert not (out / "cost_vs_accuracy.png").exists() and (out / "accuracy_vs_n.png").exists()

    # A different largest N would need other explorations: refused, nothing written.
    assert main(protocol_args(url, out, ns=("3",))) == 2
    assert "another configuration" in capsys.readouterr().out
    assert (out / "explorations.jsonl").read_bytes() == before
