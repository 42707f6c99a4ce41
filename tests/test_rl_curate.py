"""`rl.curate`: the keep rule on hand-built candidates, then curation on the real CPU engine (library and CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from programs.core.config import RunConfig, SamplingConfig
from programs.core.jsonl import RecordFile
from programs.datasets import load_problems
from programs.engine_handle import EngineHandle
from rl.curate import RECORDS, KeepRule, curate, curated_record, main


def path(answer: str | None, correct: bool | None, fallback: bool = False, seed: int = 0) -> dict:
    """A pipeline path record as `programs.pipeline.path_record` makes it."""
    part = f"so \\boxed{{{answer}}}" if answer else "no idea"
    return {
        "text": "<think>long trace</think>" + part,
        "answer_part": part,
        "answer_part_fallback": fallback,
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "cached_tokens": 9,
        "finish_reason": "stop",
        "seed": seed,
        "answer": answer,
        "correct": correct,
    }


def problem_record(paths: list[dict]) -> dict:
    return {
        "id": "q1",
        "problem": "What is 2+2?",
        "gold": "4",
        "config": {"n": len(paths)},
        "paths": paths,
        "self_consistency": {},
        "synthesizer": None,
        "timings": {"explore_s": 1.0},
    }


@pytest.mark.parametrize(
    ("correct", "verdict"),
    [
        ([True, False], None),
        ([True, True, True], "too_few_wrong"),  # all right: nothing for the synthesizer to fix
        ([False, False], "too_few_correct"),  # all wrong
        ([], "too_few_valid"),
    ],
)
def test_default_rule_keeps_queries_with_a_right_and_a_wrong_candidate(correct, verdict):
    assert KeepRule().verdict(correct) == verdict


def test_rule_is_configurable_and_checked():
    assert KeepRule(min_wrong=0).verdict([True, True]) is None
    assert KeepRule(min_correct=0).verdict([False]) is None
    assert KeepRule(min_valid=4).verdict([True, False, False]) == "too_few_valid"
    assert KeepRule(min_correct=2).verdict([True, False, False]) == "too_few_correct"
    with pytest.raises(ValueError, match="min_wrong must be >= 0"):
        KeepRule(min_wrong=-1)


def test_curated_record_keeps_valid_candidates_only():
    paths = [
        path("4", True, seed=1),
        path("5", False, seed=2),
        path(None, False, seed=3),  # answer part with no boxed answer
        path("4", True, fallback=True, seed=4),  # thought never closed: its "answer" is inside the trace
    ]
    record = curated_record(problem_record(paths), KeepRule(), thinking=True)
    assert record["kept"] and record["reason"] is None
    assert [c["seed"] for c in record["candidates"]] == [1, 2]
    assert [(c["answer"], c["correct"]) for c in record["candidates"]] == [("4", True), ("5", False)]
    assert record["candidates"][0]["answer_part"] == "so \\boxed{4}"
    assert "text" not in record["candidates"][0]  # the long trace is not kept
    assert record["invalid"] == {"no_answer": 1, "unclosed_think": 1}
    assert record["sampled"] == 4 and record["gold"] == "4" and record["config"] == {"n": 4}

    # Without thinking there is no thought to close: the whole path is the answer part.
    assert len(curated_record(problem_record(paths), KeepRule(), thinking=False)["candidates"]) == 3
    all_right = curated_record(problem_record([path("4", True), path("4", True)]), KeepRule(), thinking=True)
    assert not all_right["kept"] and all_right["reason"] == "too_few_wrong"


def test_curation_on_the_engine_keeps_mixed_queries_and_resumes(cpu_engine, tmp_path):
    """The trained tiny model on its own task: its paths disagree on some problems, so some are kept."""
    explorer = EngineHandle.attach(cpu_engine.explorer)
    sampling = SamplingConfig(max_tokens=64)
    config = RunConfig(
        n=8,
        explorer=sampling,
        synthesizer=sampling,
        explorer_model="tiny",
        synthesizer_model="tiny",
        synthesize=False,
        extra={"keep": {}},
    )
    problems = load_problems("synthetic", limit=8)
    records = RecordFile(tmp_path, config.to_dict(), name=RECORDS)
    curate(problems[:5], config, explorer, records, KeepRule())
    lines = (tmp_path / RECORDS).read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(p.id for p in problems[:5])

    # Resuming with more queries explores only the new ones and leaves the first lines as they were.
    records = RecordFile(tmp_path, config.to_dict(), name=RECORDS)
    curate(problems, config, explorer, records, KeepRule())
    lines_after = (tmp_path / RECORDS).read_text().splitlines()
    assert lines_after[:5] == lines and len(lines_after) == 8
    curated = {record["id"]: record for record in map(json.loads, lines_after)}
    assert curated.keys() == {p.id for p in problems}  # records land as queries finish, in any order
    for problem in problems:
        record = curated[problem.id]
        assert record["gold"] == problem.answer and record["sampled"] == 8
        assert len(record["candidates"]) + sum(record["invalid"].values()) == 8
        assert all(c["correct"] == (c["answer"] == problem.answer) for c in record["candidates"])
        assert all(
            "\\boxed{" in c["answer_part"] and "</think>" not in c["answer_part"]
            for c in record["candidates"]
        )
        correct = [c["correct"] for c in record["candidates"]]
        assert record["kept"] == (any(correct) and not all(correct))
    assert any(r["kept"] for r in curated.values()), [
        [c["answer"] for c in r["candidates"]] for r in curated.values()
    ]


def default_rule_reason(correct: list[bool]) -> str | None:
    """What the default rule (at least one valid, one right and one wrong) must answer, worked out by hand."""
    if not correct:
        return "too_few_valid"
    if not any(correct):
        return "too_few_correct"
    if all(correct):
        return "too_few_wrong"
    return None


def write_problems(path: Path, count: int) -> Path:
    rows = [{"id": f"p{i}", "problem": f"Compute {i} + {i}.", "answer": str(2 * i)} for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_writes_one_line_per_query_and_resumes(cpu_engine, tmp_path, capsys):
    data, out = write_problems(tmp_path / "q.jsonl", 3), tmp_path / "curated"
    args = ["--dataset", str(data), "--limit", "2", "--samples", "2", "--output", str(out),
            "--explorer-url", cpu_engine.explorer.base_url, "--explorer-max-tokens", "8", "--max-in-flight", "1"]  # fmt: skip
    assert main(args) == 0
    records = [json.loads(line) for line in (out / RECORDS).read_text().splitlines()]
    assert [r["id"] for r in records] == ["p0", "p1"]
    for record in records:
        assert record["config"]["n"] == 2 and not record["config"]["synthesize"]
        assert record["config"]["extra"]["keep"] == {"min_valid": 1, "min_correct": 1, "min_wrong": 1}
        assert len(record["candidates"]) + sum(record["invalid"].values()) == 2
        gold = str(2 * int(record["id"].removeprefix("p")))
        assert all(c["correct"] == (c["answer"] == gold) for c in record["candidates"])
        assert record["reason"] == default_rule_reason([c["correct"] for c in record["candidates"]])
        assert record["kept"] == (record["reason"] is None)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["queries"] == 2 and summary["kept"] == sum(r["kept"] for r in records)
    assert sum(summary["dropped"].values()) == 2 - summary["kept"]

    before = (out / RECORDS).read_text()
    assert main(args) == 0
    assert "2 already in" in capsys.readouterr().out
    assert (out / RECORDS).read_text() == before
    assert main([*args, "--min-wrong", "0"]) == 2  # another rule in the same folder is refused
    assert "another configuration" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--synthesizer-max-tokens", "--synthesizer-model", "--synthesizer-url"])
def test_cli_has_no_synthesizer_flags(capsys, flag):
    """Curation runs the explorer alone: a synthesizer setting would be silently ignored, so it is refused."""
    with pytest.raises(SystemExit):
        main(["--dataset", "aime24", "--output", "x", flag, "9"])
    assert f"unrecognized arguments: {flag} 9" in capsys.readouterr().err
