"""`python -m benchmarks.accuracy`: its flags, the datasets it defaults to, and the protocol end to end on a real
CPU engine (one exploration per problem and run reused for every N, resume, summary, plots)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from benchmarks.accuracy import main, parse_args
from benchmarks.cost import model_key
from programs import planning


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
