"""The `chain` arithmetic task (programs/offline/chain.py): its generator (seeded, correct, in the A2R format,
with paths of varied length and synthesizer turns that never reward a vote), and what the offline pair trained
on it does on real CPU engines: the explorer's paths disagree and differ in length, and the synthesizer does
not copy a wrong majority.
Whether it reads its references at all is measured by `benchmarks.references` (tests/test_references.py)."""

from __future__ import annotations

import math
import random
import re
from collections import Counter

import pytest
from transformers import AutoTokenizer

from programs.core.config import RunConfig, SamplingConfig
from programs.core.grading import extract_answer
from programs.core.prompts import chat_prompt
from programs.core.records import Problem
from programs.datasets import DatasetError, load_problems
from programs.engine_handle import EngineHandle
from programs.explorer import run_explorer
from programs.offline import chain
from programs.offline.model import offline_models
from programs.synthesizer import run_synthesizer

QUESTION = re.compile(r"What is ([-+*()\d ]+)\?")
STEP = re.compile(r"(\d+) ([-+*]) (\d+) = (-?\d+)")
CHECK = re.compile(r"check: (-?\d+) ([-+/]) (\d+) = (\d+)")
REPLY = re.compile(
    r"<think>\n(?P<thinking>(?:.+\n)+)</think>\n\nThe result is (?P<value>-?\d+), so the answer is \\boxed\{(?P=value)\}\."
)


def expression_of(problem: str) -> str:
    match = QUESTION.fullmatch(problem.rpartition("Query: ")[2].partition("\n")[0])
    assert match, problem
    return match.group(1)


def value_of(expression: str) -> int:
    """An oracle independent of the generator: Python's own precedence (the parentheses make it the written order)."""
    return eval(
        expression
    )  # only ever given text that QUESTION matched: digits, spaces, parentheses and + - *


def operand_count(expression: str) -> int:
    return len(re.findall(r"\d+", expression))


def passes(thinking: str) -> list[list[str]]:
    """The thinking's passes over the chain (split at `Re-check:`), each a list of its lines."""
    return [chunk.strip("\n").splitlines() for chunk in thinking.split(f"{chain.RECHECK}\n")]


def test_problems_are_seeded_distinct_correct_and_in_range():
    for name, operands in (("chain", set(range(3, 9))), ("synthetic", {2, 3})):
        rows = chain.problem_rows(3, 200, name)
        assert rows == chain.problem_rows(3, 200, name) != chain.problem_rows(4, 200, name)
        assert len({r["problem"] for r in rows}) == len({r["id"] for r in rows}) == 200
        for row in rows:
            value = value_of(expression_of(row["problem"]))
            assert row["answer"] == str(value) and 0 <= value <= chain.Task().max_value
        assert {operand_count(expression_of(r["problem"])) for r in rows} == operands
    expressions = [expression_of(r["problem"]) for r in chain.problem_rows(0, 200)]
    assert 0.2 < sum("(" in e for e in expressions) / len(expressions) < 0.8  # parentheses, not everywhere


def test_benchmark_problems_never_appear_in_training():
    benchmark = {r["problem"] for name in chain.SETS for r in chain.problem_rows(0, 300, name)}
    assert all(chain.held_out(expression_of(p)) for p in benchmark)
    trained = {expression_of(turn.user) for turn in chain.training_turns(0, 3000)}
    assert len(trained) > 1000 and not {f"What is {e}?" for e in trained} & benchmark


def test_loader_knows_the_generated_sets():
    assert load_problems("chain") == [Problem(**row) for row in chain.problem_rows()]
    assert len(load_problems("chain")) == chain.DEFAULT_COUNT
    assert load_problems("synthetic:5:12") == [
        Problem(**row) for row in chain.problem_rows(5, 12, "synthetic")
    ]
    with pytest.raises(DatasetError, match="expected chain or chain:SEED:COUNT"):
        load_problems("chain:five")
    with pytest.raises(DatasetError, match="count must be at least 1"):
        load_problems("synthetic:1:0")


def explorer_turns(seed: int, count: int, task: chain.Task | None = None) -> list[chain.Turn]:
    return [
        t
        for t in chain.training_turns(seed, count, task or chain.Task())
        if not t.user.startswith("Instruction")
    ]


def test_explorer_turns_work_one_step_per_line_with_checks_and_rechecks():
    turns = explorer_turns(1, 1500)
    assert len(turns) > 800
    lengths = Counter()
    for turn in turns:
        match = REPLY.fullmatch(turn.assistant)
        assert match, turn.assistant
        expression = expression_of(turn.user)
        value = value_of(expression)
        assert int(match["value"]) == value  # slip_rate is 0 by default
        for lines in passes(match["thinking"]):
            steps = [STEP.fullmatch(line) for line in lines if not line.startswith("check:")]
            assert len(steps) == operand_count(expression) - 1 and all(steps), lines
            assert int(steps[-1][4]) == value
            for step in steps:  # every step's arithmetic is right
                assert value_of(f"{step[1]} {step[2]} {step[3]}") == int(step[4])
            for line in lines:
                if check := CHECK.fullmatch(line):  # a check undoes the step before it
                    left, op, right, back = check.groups()
                    assert {
                        "-": int(left) - int(right),
                        "+": int(left) + int(right),
                        "/": int(left) / int(right),
                    }[op] == int(back)
        lengths[len(passes(match["thinking"]))] += 1
    assert set(lengths) == {1, 2, 3, 4} and lengths[1] > lengths[4]  # most paths once, some re-check thrice
    assert sum("check:" in t.assistant for t in turns) > len(turns) // 4


def test_paths_of_one_problem_differ_several_fold_in_length():
    """One problem's thinking drawn many times, as an explorer samples its paths."""
    rng, steps = random.Random(0), chain.evaluate("(3 + 4) * 2 - 5 + 1")
    sizes = [len(chain.explorer_thinking(rng, steps, chain.Task())) for _ in range(50)]
    assert max(sizes) >= 4 * min(sizes)


def test_slips_are_off_by_one_and_carried_through_to_the_answer():
    task = chain.Task(slip_rate=0.5)
    turns = explorer_turns(2, 1500, task)
    wrong = 0
    for turn in turns:
        match = REPLY.fullmatch(turn.assistant)
        first = [line for line in passes(match["thinking"])[0] if not line.startswith("check:")]
        assert first[-1].endswith(f"= {match['value']}")  # the answer is the last step's value
        error = int(match["value"]) - value_of(expression_of(turn.user))
        wrong += error != 0
        assert error in (0, -1, 1) or "*" in turn.user  # a product scales an early slip
    assert abs(wrong / len(turns) - task.slip_rate) < 0.06


def reference_answers(user: str) -> list[int]:
    return [int(a) for a in re.findall(r"\\boxed\{(-?\d+)\}\.</reference", user)]


def test_synthesizer_turns_cover_every_mix_and_always_target_the_right_derivation():
    turns = [t for t in chain.training_turns(1, 3000) if t.user.startswith("Instruction")]
    assert len(turns) > 500
    mixes = Counter()
    for turn in turns:
        expression = expression_of(turn.user)
        value, answers = value_of(expression), reference_answers(turn.user)
        match = REPLY.fullmatch(turn.assistant)
        assert match and int(match["value"]) == value, turn.assistant
        assert [STEP.fullmatch(line)[0] for line in match["thinking"].splitlines()] == [
            str(s) for s in chain.evaluate(expression)
        ]  # one clean pass: no checks, no re-checks
        right = answers.count(value)
        top, top_count = Counter(answers).most_common(1)[0]
        if right == 0:
            mixes["none right"] += 1
        elif top != value and top_count > right:
            mixes["wrong majority"] += 1
        elif len(set(answers)) >= 3:
            mixes["disagree"] += 1
        elif right == len(answers) and len(answers) > 1:
            mixes["all right"] += 1
        assert 1 <= len(answers) <= chain.Task().max_references
    assert (
        min(mixes[m] for m in ("none right", "wrong majority", "disagree", "all right")) > len(turns) // 30
    ), mixes


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(offline_models(0, trained=False).explorer)


def test_rendered_turns_are_the_served_prompt_then_the_reply(tokenizer):
    for turn in chain.training_turns(0, 20):
        prompt, reply = chain.render(tokenizer, turn)
        assert prompt == chat_prompt(tokenizer, turn.user)
        assert reply == turn.assistant + "<|im_end|>"
        whole = [{"role": "user", "content": turn.user}, {"role": "assistant", "content": turn.assistant}]
        assert tokenizer.apply_chat_template(whole, tokenize=False).startswith(prompt + reply)


def test_task_rejects_bad_knobs():
    with pytest.raises(ValueError, match="slip_rate must be in"):
        chain.Task(slip_rate=1.5)
    with pytest.raises(ValueError, match="max_operand <= max_value"):
        chain.Task(max_operand=10, max_value=5)
    with pytest.raises(ValueError, match="mixes must be drawn from"):
        chain.Task(mixes=("most right",))
    with pytest.raises(ValueError, match="rechecks must be chances"):
        chain.Task(rechecks=(0.5, 0.6))
    with pytest.raises(ValueError, match="min_operands <= max_operands"):
        chain.Shape(5, 3)


# --- the trained pair on its two CPU engines (the session's `cpu_pair`) ---

EXPLORER = SamplingConfig(max_tokens=512)
CONFIG = RunConfig(
    n=4,
    explorer=EXPLORER,
    synthesizer=SamplingConfig(max_tokens=160),
    explorer_model="e",
    synthesizer_model="s",
)


@pytest.fixture(scope="module")
def stages(cpu_pair) -> tuple[EngineHandle, EngineHandle]:
    return EngineHandle.attach_roles(cpu_pair)


def test_explorer_paths_disagree_and_differ_several_fold_in_length(stages):
    explorer, _ = stages
    problems, n = load_problems("chain", limit=24), 4
    right, spreads = [], []
    for problem in problems:
        paths = run_explorer(
            explorer.backend, chat_prompt(explorer.tokenizer, problem.problem), EXPLORER, list(range(n))
        )
        right.append([extract_answer(p.text) == problem.answer for p in paths])
        tokens = [p.completion_tokens for p in paths]
        spreads.append(max(tokens) / min(tokens))
    pass_at_1 = sum(map(sum, right)) / (n * len(problems))
    pass_at_n = sum(map(any, right)) / len(problems)
    assert 0.03 <= pass_at_1 < pass_at_n, (pass_at_1, pass_at_n)
    assert sum(len(set(r)) > 1 for r in right) >= 3  # some problems split their paths
    assert max(spreads) >= 3 and sorted(spreads)[len(spreads) // 2] >= 1.5, spreads


def syntheses(stage: EngineHandle, problems: list[Problem], references) -> list[str | None]:
    """The synthesizer's answer to each problem, given `references(problem)` as its answer parts."""
    return [
        extract_answer(run_synthesizer(stage, p.problem, references(p), CONFIG, seed=seed).text)
        for seed, p in enumerate(problems)
    ]


def right_steps(problem: Problem) -> list[chain.Step]:
    return chain.evaluate(expression_of(problem.problem))


def wrong_steps(rng: random.Random, problem: Problem) -> list[chain.Step]:
    """A worked chain of `problem` with a slip that changes its answer."""
    while True:
        steps = chain.slipped(rng, expression_of(problem.problem), chain.Task())
        if str(chain.result(steps)) != problem.answer:
            return steps


def test_the_synthesizer_is_no_majority_copier(stages):
    """Three references share one wrong answer and one is right: the vote is wrong on every problem; the
    synthesizer, re-deriving, is right on many and copies the wrong majority on few."""
    _, synthesizer = stages
    problems, rng = load_problems("synthetic:1:60"), random.Random(1)
    majorities: dict[str, str] = {}

    def references(problem: Problem) -> list[str]:
        wrong = wrong_steps(rng, problem)
        majorities[problem.id] = str(chain.result(wrong))
        parts = [chain.answer_part(wrong)] * 3 + [chain.answer_part(right_steps(problem))]
        rng.shuffle(parts)
        return parts

    answers = syntheses(synthesizer, problems, references)
    right = sum(a == p.answer for a, p in zip(answers, problems, strict=True))
    copied = sum(a == majorities[p.id] for a, p in zip(answers, problems, strict=True))
    # The vote is right on none. Were the right answer and the majority's equally likely to win, a sign test
    # over the problems that gave either would see this many right with p below 1e-3.
    decisive = right + copied
    p = sum(math.comb(decisive, k) for k in range(right, decisive + 1)) / 2**decisive
    assert right >= len(problems) // 2 and p < 1e-3, (right, copied, p, answers)
