"""The typed records read and write the same JSON lines as before, and run folders written before them resume.

`data/records_from_e1f23dd.jsonl` is a records.jsonl written by `python -m programs.a2r --n 2 --limit 3` at
commit e1f23dd, before the record types existed.
"""

from __future__ import annotations

import json
from pathlib import Path

from programs.a2r import main
from programs.core.records import PathRecord, Problem, ProblemRecord, SynthesisRecord, usage

OLD_RECORDS = Path(__file__).parent / "data" / "records_from_e1f23dd.jsonl"


def old_lines() -> list[dict]:
    return [json.loads(line) for line in OLD_RECORDS.read_text().splitlines()]


def test_old_records_read_back_to_the_same_json_key_for_key():
    for line in old_lines():
        again = ProblemRecord.from_json(line).to_json()
        assert again == line and list(again) == list(line)
        assert [list(p) for p in again["paths"]] == [list(p) for p in line["paths"]]


def test_a_run_folder_written_before_the_record_types_resumes(tmp_path, capsys):
    url = "http://127.0.0.1:9"  # nothing is left to do, so no engine is ever asked
    run = tmp_path / "run"
    run.mkdir()
    lines = old_lines()
    for line in lines:  # the old run's own engine was the local tiny model; this rerun names a server
        line["config"]["explorer_model"] = line["config"]["synthesizer_model"] = url
    (run / "records.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    before = (run / "records.jsonl").read_text()
    # The old run's problems, as the `synthetic` set drew them then (the set has been redrawn since).
    dataset = tmp_path / "old-synthetic.jsonl"
    rows = [{"id": line["id"], "problem": line["problem"], "answer": line["gold"]} for line in lines]
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = ["--n", "2", "--dataset", str(dataset), "--explorer-url", url, "--output", str(run),
            "--explorer-max-tokens", "160", "--synthesizer-max-tokens", "160"]  # fmt: skip
    assert main(argv) == 0
    assert "3 problems, 3 already in" in capsys.readouterr().out
    assert (run / "records.jsonl").read_text() == before
    summary = json.loads((run / "summary.json").read_text())
    paths = [p for line in lines for p in line["paths"]]
    assert summary["problems"] == 3
    assert summary["explorer"]["prefix_cache_hit_ratio"] == sum(p["cached_tokens"] for p in paths) / sum(
        p["prompt_tokens"] for p in paths
    )


def path(answer: str | None, prompt: int = 10, cached: int = 9, completion: int = 5) -> PathRecord:
    meta = {"prompt_tokens": prompt, "completion_tokens": completion, "cached_tokens": cached}
    text = f"<think>x</think> so \\boxed{{{answer}}}" if answer else "<think>cut off"
    return PathRecord.from_engine(text, meta, seed=1)


def test_a_path_stopped_while_still_queued_is_recorded_with_what_the_engine_reported():
    # The reply SGLang sent for a path a stop policy aborted before it was scheduled (seen on a loaded CPU).
    meta = {
        "id": "a2r-bf3e0277a2c04b6b-p1.",
        "finish_reason": {"type": "abort", "message": "Abort in waiting queue"},
        "weight_version": "default",
        "e2e_latency": 0.0227,
        "completion_tokens": 0,
    }
    queued = PathRecord.from_engine("", meta, seed=1)
    assert (queued.prompt_tokens, queued.cached_tokens, queued.completion_tokens) == (0, 0, 0)
    assert (queued.finish_reason, queued.answer, queued.text) == ("abort", None, "")
    used = usage([ProblemRecord.build(Problem("a", "?", "1"), {}, [path("1"), queued], None, {})])
    assert (used.paths, used.explorer_prompt_tokens, used.prefix_cache_hit_ratio) == (2, 10, 0.9)


def test_build_grades_every_answer_and_takes_the_vote():
    paths = [path("4"), path("5"), path("4"), path(None)]
    synthesis = SynthesisRecord.from_engine(
        "p", "<think>a</think> \\boxed{5}", {"prompt_tokens": 30, "completion_tokens": 7}, [0, 1], []
    )
    record = ProblemRecord.build(Problem("x", "2 + 2?", "4"), {}, paths, synthesis, {"total_s": 1.0})
    assert [p.correct for p in record.paths] == [True, False, True, False]
    assert record.paths[3].answer is None and record.paths[3].answer_part_fallback
    assert record.self_consistency == {"answer": "4", "correct": True}
    assert (record.synthesizer.answer, record.synthesizer.correct) == ("5", False)
    unknown = ProblemRecord.build(Problem("q0", "?", ""), {}, paths, None, {})  # a question with no gold
    assert {p.correct for p in unknown.paths} == {None} and unknown.self_consistency["correct"] is None


def test_usage_adds_up_the_engines_counts():
    first = ProblemRecord.build(
        Problem("a", "?", "1"),
        {},
        [path("1", 10, 9, 5), path("2", 10, 10, 7)],
        None,
        {"explore_s": 2.0, "synthesize_s": 0.0, "total_s": 2.5},
    )
    synthesis = SynthesisRecord.from_engine(
        "p", "\\boxed{1}", {"prompt_tokens": 40, "completion_tokens": 11}, [0], [2]
    )
    second = ProblemRecord.build(
        Problem("b", "?", "1"),
        {},
        [path("1", 20, 0, 3)],
        synthesis,
        {"explore_s": 1.0, "synthesize_s": 4.0, "total_s": 5.0},
    )
    used = usage([first, second])
    assert (used.problems, used.paths, used.syntheses) == (2, 3, 1)
    assert (used.explorer_prompt_tokens, used.explorer_cached_tokens) == (40, 19)
    assert used.prefix_cache_hit_ratio == 19 / 40
    assert (used.explorer_completion_tokens, used.synthesizer_completion_tokens, used.output_tokens) == (
        15,
        11,
        26,
    )
    assert (used.synthesizer_prompt_tokens, used.trimmed_prompts, used.answer_part_fallbacks) == (40, 1, 0)
    assert used.stage_seconds == {"explore_s": 3.0, "synthesize_s": 4.0, "total_s": 7.5}
