"""The SGLang programs against a real CPU engine: prefix sharing, the exact synthesizer prompt, trimming,
and the streaming pipeline."""

from __future__ import annotations

import uuid
from dataclasses import replace
from itertools import pairwise

import pytest

from programs.core.config import RunConfig, SamplingConfig
from programs.core.prompts import chat_prompt
from programs.core.records import Problem
from programs.engine_handle import EngineHandle
from programs.explorer import run_explorer
from programs.pipeline import Pipeline
from programs.synthesizer import fit_references, run_synthesizer

SAMPLING = SamplingConfig(max_tokens=24)
CONFIG = RunConfig(
    n=2, explorer=SAMPLING, synthesizer=SAMPLING, explorer_model="tiny", synthesizer_model="tiny"
)


@pytest.fixture(scope="module")
def stage(cpu_engine) -> EngineHandle:
    return EngineHandle.attach(cpu_engine.explorer)


def fresh_question() -> str:
    """A prompt the radix cache has never seen, so cached tokens can only come from this test's forks."""
    return f"Problem {uuid.uuid4().hex}: what is 12 + 30? Put the answer in \\boxed{{}}."


def test_forks_share_the_prompt_prefill(stage):
    prompt = chat_prompt(stage.tokenizer, fresh_question())
    prompt_tokens = len(stage.tokenizer.encode(prompt, add_special_tokens=False))
    paths = run_explorer(stage.backend, prompt, SAMPLING, seeds=[1, 2, 3, 4])
    assert len(paths) == 4
    for path in paths:
        assert path.prompt_tokens == prompt_tokens
        # The engine recomputes only the last prompt token, whose logits start the path.
        assert path.cached_tokens >= prompt_tokens - 1, path
        assert 0 < path.completion_tokens <= SAMPLING.max_tokens
    assert len({p.seed for p in paths}) == 4


def test_synthesizer_prompt_is_the_papers_template_word_for_word(stage):
    query = fresh_question()
    parts = ["First answer. \\boxed{42}", "Second answer. \\boxed{41}"]
    synthesis = run_synthesizer(stage, query, parts, CONFIG, seed=7)
    expected_user_turn = (
        "Instruction: You can solve the problem using the provided references, or you can choose to find a new "
        "solution. The final answer should be placed in \\boxed{}.\n"
        f"Query: {query}\n"
        "Reference: <reference1>First answer. \\boxed{42}</reference1><reference2>Second answer. \\boxed{41}</reference2>"
    )
    assert synthesis.prompt == chat_prompt(stage.tokenizer, expected_user_turn)
    # The engine saw exactly that prompt: its own token count matches.
    assert synthesis.prompt_tokens == len(stage.tokenizer.encode(synthesis.prompt, add_special_tokens=False))
    assert synthesis.reference_order == [0, 1] and synthesis.trimmed_references == []


def test_shuffled_references_follow_a_seeded_order(stage):
    parts = [f"answer {i} \\boxed{{{i}}}" for i in range(6)]
    shuffled = replace(CONFIG, shuffle_references=True)
    first = run_synthesizer(stage, "q", parts, shuffled, seed=3)
    again = run_synthesizer(stage, "q", parts, shuffled, seed=3)
    assert first.reference_order == again.reference_order != list(range(6))
    tagged = [f"<reference{pos}>answer {i} " for pos, i in enumerate(first.reference_order, start=1)]
    assert all(t in first.prompt for t in tagged)


def test_references_too_long_for_the_context_are_trimmed_from_the_front(stage):
    long = " ".join(f"step {i}:" for i in range(400)) + " so the answer is \\boxed{7}"
    parts = [long, "short \\boxed{7}", long]
    context = 600
    synthesis = run_synthesizer(
        replace(stage, context_length=context), "What is 3 + 4?", parts, CONFIG, seed=1
    )
    assert synthesis.trimmed_references == [1, 3]
    assert synthesis.prompt_tokens + SAMPLING.max_tokens <= context  # the engine accepted it and it fits
    assert "short \\boxed{7}" in synthesis.prompt and synthesis.prompt.count("\\boxed{7}</reference") == 3
    assert "step 0:" not in synthesis.prompt  # the front went, the conclusions stayed


def test_a_query_that_cannot_fit_is_refused_before_sending(stage):
    with pytest.raises(ValueError, match="does not fit"):
        fit_references(stage.tokenizer, "word " * 500, ["a", "b"], budget=100)


def test_pipeline_streams_synthesis_while_later_problems_explore(stage):
    config = CONFIG
    problems = [Problem(str(i), fresh_question(), "42") for i in range(3)]
    records = []
    # One problem explored and one synthesized at a time.
    Pipeline(config, stage, stage).run(problems, records.append, slots=(1, 1))
    assert sorted(r.id for r in records) == ["0", "1", "2"]
    by_id = {r.id: r.timings for r in records}
    # Problem 0 was synthesized before problem 2 had finished exploring: no stage waits for the dataset.
    assert by_id["0"]["synthesis_started_at"] < by_id["2"]["explored_at"]
    for began, ended in ("explore_started_at", "explored_at"), ("synthesis_started_at", "synthesized_at"):
        spans = sorted((t[began], t[ended]) for t in by_id.values())
        assert all(first[1] <= second[0] for first, second in pairwise(spans))  # the slots held: no overlap
    for record in records:
        assert len(record.paths) == 2 and record.synthesizer.text
        assert set(record.self_consistency) == {"answer", "correct"}
