"""The synthesizer on the real CPU engine: the paper's prompt word for word, seeded shuffled references,
references trimmed from the front to fit the context, and a query that cannot fit refused before sending."""

from __future__ import annotations

from dataclasses import replace

import pytest

from programs.core.config import RunConfig, SamplingConfig
from programs.core.prompts import chat_prompt
from programs.synthesizer import fit_references, run_synthesizer

SAMPLING = SamplingConfig(max_tokens=24)
CONFIG = RunConfig(
    n=2, explorer=SAMPLING, synthesizer=SAMPLING, explorer_model="tiny", synthesizer_model="tiny"
)


def test_synthesizer_prompt_is_the_papers_template_word_for_word(cpu_handle, fresh_question):
    query = fresh_question()
    parts = ["First answer. \\boxed{42}", "Second answer. \\boxed{41}"]
    synthesis = run_synthesizer(cpu_handle, query, parts, CONFIG, seed=7)
    expected_user_turn = (
        "Instruction: You can solve the problem using the provided references, or you can choose to find a new "
        "solution. The final answer should be placed in \\boxed{}.\n"
        f"Query: {query}\n"
        "Reference: <reference1>First answer. \\boxed{42}</reference1><reference2>Second answer. \\boxed{41}</reference2>"
    )
    assert synthesis.prompt == chat_prompt(cpu_handle.tokenizer, expected_user_turn)
    # The engine saw exactly that prompt: its own token count matches.
    assert synthesis.prompt_tokens == len(
        cpu_handle.tokenizer.encode(synthesis.prompt, add_special_tokens=False)
    )
    assert synthesis.reference_order == [0, 1] and synthesis.trimmed_references == []


def test_shuffled_references_follow_a_seeded_order(cpu_handle):
    parts = [f"answer {i} \\boxed{{{i}}}" for i in range(6)]
    shuffled = replace(CONFIG, shuffle_references=True)
    first = run_synthesizer(cpu_handle, "q", parts, shuffled, seed=3)
    again = run_synthesizer(cpu_handle, "q", parts, shuffled, seed=3)
    assert first.reference_order == again.reference_order != list(range(6))
    tagged = [f"<reference{pos}>answer {i} " for pos, i in enumerate(first.reference_order, start=1)]
    assert all(t in first.prompt for t in tagged)


def test_references_too_long_for_the_context_are_trimmed_from_the_front(cpu_handle):
    long = " ".join(f"step {i}:" for i in range(400)) + " so the answer is \\boxed{7}"
    parts = [long, "short \\boxed{7}", long]
    context = 600
    synthesis = run_synthesizer(
        replace(cpu_handle, context_length=context), "What is 3 + 4?", parts, CONFIG, seed=1
    )
    assert synthesis.trimmed_references == [1, 3]
    assert synthesis.prompt_tokens + SAMPLING.max_tokens <= context  # the engine accepted it and it fits
    assert "short \\boxed{7}" in synthesis.prompt and synthesis.prompt.count("\\boxed{7}</reference") == 3
    assert "step 0:" not in synthesis.prompt  # the front went, the conclusions stayed


def test_a_query_that_cannot_fit_is_refused_before_sending(cpu_handle):
    with pytest.raises(ValueError, match="does not fit"):
        fit_references(cpu_handle.tokenizer, "word " * 500, ["a", "b"], budget=100)
