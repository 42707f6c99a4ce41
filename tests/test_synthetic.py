"""The synthetic arithmetic task: its generator (seeded, correct, in the A2R format), and what the tiny model
trained on it does on a real CPU engine: its paths disagree, and its synthesizer follows its references."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from transformers import AutoTokenizer

from programs.core.config import RunConfig, SamplingConfig
from programs.core.grading import extract_answer
from programs.core.prompts import chat_prompt, synthesizer_query
from programs.core.records import Problem
from programs.datasets import DatasetError, load_problems
from programs.engine_handle import EngineHandle
from programs.explorer import run_explorer
from programs.offline import task as synthetic
from programs.offline.model import tiny_model_path
from programs.synthesizer import run_synthesizer

QUESTION = re.compile(r"What is (\d+(?: [-+*] \d+){1,2})\?")
EXPLORER_REPLY = re.compile(
    r"<think>\n(?P<steps>(?:\d+ [-+*] \d+ = -?\d+\n){1,2})</think>\n\n"
    r"(?P<expression>[-+*\d ]+) = (?P<value>-?\d+), so the answer is \\boxed\{(?P=value)\}\."
)
SYNTHESIZER_REPLY = re.compile(
    r"<think>\nMost references give (?P<value>\d+)\.\n</think>\n\n"
    r"(?P<expression>[-+*\d ]+) = (?P=value), so the answer is \\boxed\{(?P=value)\}\."
)
SAMPLING = SamplingConfig(max_tokens=64)
CONFIG = RunConfig(
    n=4, explorer=SAMPLING, synthesizer=SAMPLING, explorer_model="tiny", synthesizer_model="tiny"
)


def expression_of(problem: str) -> str:
    match = QUESTION.fullmatch(problem)
    assert match, problem
    return match.group(1)


def value_of(expression: str) -> int:
    """An oracle independent of the generator: Python's own precedence."""
    return eval(expression)  # only ever given text that QUESTION matched: digits, spaces and + - *


def test_problems_are_seeded_distinct_correct_and_in_range():
    rows = synthetic.problem_rows(3, 200)
    assert rows == synthetic.problem_rows(3, 200) != synthetic.problem_rows(4, 200)
    assert len({r["problem"] for r in rows}) == len({r["id"] for r in rows}) == 200
    for row in rows:
        value = value_of(expression_of(row["problem"]))
        assert row["answer"] == str(value) and 0 <= value <= synthetic.Task().max_value
    assert {len(expression_of(r["problem"]).split()) for r in rows} == {3, 5}  # two and three operands


def test_benchmark_problems_never_appear_in_training():
    benchmark = {r["problem"] for r in synthetic.problem_rows(0, 300)}
    assert all(synthetic.held_out(expression_of(p)) for p in benchmark)
    trained = {
        turn.user.rpartition("Query: ")[2].partition("\n")[0] for turn in synthetic.training_turns(0, 3000)
    }
    assert trained and not trained & benchmark


def test_loader_knows_the_synthetic_set():
    assert load_problems("synthetic") == [Problem(**row) for row in synthetic.problem_rows()]
    assert len(load_problems("synthetic")) == synthetic.DEFAULT_COUNT
    assert load_problems("synthetic:5:12") == [Problem(**row) for row in synthetic.problem_rows(5, 12)]
    with pytest.raises(DatasetError, match="expected synthetic or synthetic:SEED:COUNT"):
        load_problems("synthetic:five")
    with pytest.raises(DatasetError, match="count must be at least 1"):
        load_problems("synthetic:1:0")


def test_explorer_turns_think_step_by_step_then_box_the_result():
    turns = [t for t in synthetic.training_turns(1, 400) if not t.user.startswith("Instruction")]
    assert len(turns) > 200
    for turn in turns:
        match = EXPLORER_REPLY.fullmatch(turn.assistant)
        assert match, turn.assistant
        assert match["expression"] == expression_of(turn.user)
        assert int(match["value"]) == value_of(match["expression"])  # slip_rate is 0 by default
        assert extract_answer(turn.assistant) == match["value"]


def test_slips_are_off_by_one_and_carried_through_to_the_answer():
    task = synthetic.Task(slip_rate=0.5, synthesizer_share=0.0)
    turns = list(synthetic.training_turns(2, 1000, task))
    wrong = 0
    for turn in turns:
        match = EXPLORER_REPLY.fullmatch(turn.assistant)
        *_, last = match["steps"].splitlines()
        assert last.endswith(f"= {match['value']}")  # the answer is the last step's value
        error = int(match["value"]) - value_of(match["expression"])
        wrong += error != 0
        assert error in (0, -1, 1) or match["expression"].count("*") >= 1  # a product scales an early slip
    assert abs(wrong / len(turns) - task.slip_rate) < 0.06


def test_synthesizer_turns_give_the_most_frequent_reference_answer_which_is_right():
    turns = [t for t in synthetic.training_turns(1, 800) if t.user.startswith("Instruction")]
    assert len(turns) > 100
    some_wrong, counts = 0, set()
    for turn in turns:
        query, references = turn.user.partition("\nReference: ")[::2]
        expression = expression_of(query.rpartition("Query: ")[2])
        answers = [int(a) for a in re.findall(r"\\boxed\{(-?\d+)\}\.</reference", references)]
        parts = [synthetic.ANSWER_PART.format(expression=expression, value=a) for a in answers]
        assert turn.user == synthesizer_query(synthetic.QUESTION.format(expression=expression), parts)
        match = SYNTHESIZER_REPLY.fullmatch(turn.assistant)
        assert match, turn.assistant
        ranked = Counter(answers).most_common()
        assert int(match["value"]) == ranked[0][0] == value_of(expression)
        assert len(ranked) == 1 or ranked[1][1] < ranked[0][1]
        some_wrong += len(ranked) > 1
        counts.add(len(answers))
    assert some_wrong > len(turns) // 4  # not only unanimous references
    assert counts == set(range(1, synthetic.Task().max_references + 1))


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(tiny_model_path(0, trained=False))


def test_rendered_turns_are_the_served_prompt_then_the_reply(tokenizer):
    for turn in synthetic.training_turns(0, 20):
        prompt, reply = synthetic.render(tokenizer, turn)
        assert prompt == chat_prompt(tokenizer, turn.user)
        assert reply == turn.assistant + "<|im_end|>"
        whole = [{"role": "user", "content": turn.user}, {"role": "assistant", "content": turn.assistant}]
        assert tokenizer.apply_chat_template(whole, tokenize=False).startswith(prompt + reply)


def test_task_rejects_bad_knobs():
    with pytest.raises(ValueError, match="slip_rate must be in"):
        synthetic.Task(slip_rate=1.5)
    with pytest.raises(ValueError, match="max_operand <= max_value"):
        synthetic.Task(max_operand=10, max_value=5)


# --- the trained tiny model (the session's CPU engine serves it) ---


@pytest.fixture(scope="module")
def stage(cpu_engine) -> EngineHandle:
    return EngineHandle.attach(cpu_engine.explorer)


def test_explorer_paths_disagree_so_pass_at_1_is_below_pass_at_n(stage):
    problems, n = load_problems("synthetic", limit=16), 4
    right = []
    for problem in problems:
        prompt = chat_prompt(stage.tokenizer, problem.problem)
        paths = run_explorer(stage.backend, prompt, SAMPLING, seeds=list(range(n)))
        right.append([extract_answer(p.text) == problem.answer for p in paths])
    pass_at_1 = sum(map(sum, right)) / (n * len(problems))
    pass_at_n = sum(map(any, right)) / len(problems)
    assert 0.1 <= pass_at_1 < pass_at_n, (pass_at_1, pass_at_n)


def test_synthesizer_follows_its_references_right_or_wrong(stage):
    problems = load_problems("synthetic", limit=20)

    def answers(shift: int) -> list[str | None]:
        """The synthesizer's answers given four references that all say gold + shift."""
        out = []
        for seed, problem in enumerate(problems):
            value = int(problem.answer) + shift
            parts = [synthetic.ANSWER_PART.format(expression=expression_of(problem.problem), value=value)] * 4
            synthesis = run_synthesizer(stage, problem.problem, parts, CONFIG, seed)
            out.append(extract_answer(synthesis.text))
        return out

    with_right = answers(0)
    with_wrong = answers(1)
    accuracy_right = sum(a == p.answer for a, p in zip(with_right, problems, strict=True)) / len(problems)
    accuracy_wrong = sum(a == p.answer for a, p in zip(with_wrong, problems, strict=True)) / len(problems)
    followed_wrong = sum(a == str(int(p.answer) + 1) for a, p in zip(with_wrong, problems, strict=True))
    # Measured here: 9 or 10 of every 10 either way; the bounds leave room for sampling.
    assert accuracy_right >= 0.75 and accuracy_wrong <= 0.25, (with_right, with_wrong)
    assert followed_wrong >= 15, with_wrong  # it gives the references' answer, not a guess of its own
