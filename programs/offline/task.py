"""A seeded arithmetic task in the A2R format: benchmark problems, and the turns the offline tiny model learns.

    load_problems("synthetic")           # 100 problems, seed 0 (programs.datasets)
    load_problems("synthetic:7:500")     # seed 7, 500 problems

Problems are two- or three-operand expressions of small integers such as `7 + 5 * 3`, every intermediate and
final value in 0..`Task.max_value`. The expressions are split once, by a hash of their text, into a
held-out share that only benchmark sets draw from and the rest, that only training draws from: a score on
`synthetic` is never a score on problems the model was trained on.

Training turns are (user, assistant) pairs for both A2R roles, rendered by `render` with the model's own
chat template, so the model learns exactly the text it is served:
- explorer: the problem; `<think>` one `a op b = c` line per step `</think>`, then the answer part
  `7 + 5 * 3 = 22, so the answer is \\boxed{22}.` A tiny model trained for a minute or two still
  miscopies and miscalculates, and `Task.slip_rate` can add deliberate slips, so its paths disagree;
- synthesizer: `synthesizer_query(problem, references)` over 1..12 explorer-style answer parts, some with a
  slip, the correct answer always the most frequent; the target thinks `Most references give 22.` and
  answers so. The synthesizer decides from its references: right when most are right, wrong when they are.
"""

from __future__ import annotations

import random
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from programs.core.prompts import THINK_END, THINK_START, chat_prompt, synthesizer_query

NAME = "synthetic"
DEFAULT_SEED, DEFAULT_COUNT = 0, 100
HELD_OUT_BUCKETS = 5  # one expression in five, by a hash of its text, is benchmark-only
OPERATORS = ("+", "-", "*")
QUESTION = "What is {expression}?"
ANSWER_PART = "{expression} = {value}, so the answer is \\boxed{{{value}}}."


@dataclass(frozen=True)
class Task:
    """The task's knobs, passed whole to every generator."""

    max_operand: int = 9  # operands are 1..max_operand
    max_value: int = 30  # every intermediate and final value stays in 0..max_value
    three_operand_share: float = 0.7  # the rest have two operands
    slip_rate: float = 0.0  # explorer targets with one step off by one, carried through
    synthesizer_share: float = 0.2  # training turns that are synthesizer turns
    max_references: int = 12  # a synthesizer training turn sees 1..max_references references

    def __post_init__(self) -> None:
        for name in ("three_operand_share", "slip_rate", "synthesizer_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 1 <= self.max_operand <= self.max_value:
            raise ValueError(f"need 1 <= max_operand <= max_value, got {self.max_operand}, {self.max_value}")
        if self.max_references < 1:
            raise ValueError(f"max_references must be at least 1, got {self.max_references}")


@dataclass(frozen=True)
class Turn:
    """One exchange to train on: the user turn and the assistant's whole reply, thinking included."""

    user: str
    assistant: str


def evaluate(tokens: list[str], slip: tuple[int, int] | None = None) -> tuple[list[str], list[int]]:
    """Work an expression (numbers and operators as text) out with the usual precedence, one step at a time.

    Returns each step as an `a op b = c` line and each step's value (the last is the result). `slip` =
    (step, delta) adds `delta` to that step's value and later steps carry it on, as a person's slip would.
    """
    tokens, lines, values = list(tokens), [], []
    while len(tokens) > 1:
        at = tokens.index("*") if "*" in tokens else 1
        left, op, right = int(tokens[at - 1]), tokens[at], int(tokens[at + 1])
        value = left * right if op == "*" else left + right if op == "+" else left - right
        if slip is not None and slip[0] == len(values):
            value += slip[1]
        lines.append(f"{left} {op} {right} = {value}")
        values.append(value)
        tokens[at - 1 : at + 2] = [str(value)]
    return lines, values


def held_out(expression: str) -> bool:
    """Whether `expression` belongs to the benchmark share (and so never to training)."""
    return zlib.crc32(expression.encode()) % HELD_OUT_BUCKETS == 0


def in_range(values: list[int], task: Task) -> bool:
    return all(0 <= v <= task.max_value for v in values)


def random_expression(rng: random.Random, task: Task, benchmark: bool) -> list[str]:
    """Tokens of an expression from the benchmark share (or the training share), all its values in range."""
    while True:
        tokens = [str(rng.randint(1, task.max_operand))]
        for _ in range(2 if rng.random() < task.three_operand_share else 1):
            tokens += [rng.choice(OPERATORS), str(rng.randint(1, task.max_operand))]
        if held_out(" ".join(tokens)) == benchmark and in_range(evaluate(tokens)[1], task):
            return tokens


def problem_rows(seed: int = DEFAULT_SEED, count: int = DEFAULT_COUNT, task: Task = Task()) -> list[dict]:
    """`count` distinct benchmark problems as loader rows (`id`, `problem`, `answer`); a seed fixes them."""
    if count < 1:
        raise ValueError(f"the {NAME} problem count must be at least 1, got {count}")
    rng, rows, seen = random.Random(f"{NAME}/benchmark/{seed}"), [], set()
    for _ in range(100 * count):  # bounded: a count beyond the held-out share cannot be met
        tokens = random_expression(rng, task, benchmark=True)
        expression = " ".join(tokens)
        if expression not in seen:
            seen.add(expression)
            answer = str(evaluate(tokens)[1][-1])
            rows.append(
                {
                    "id": f"{NAME}-{seed}-{len(rows)}",
                    "problem": QUESTION.format(expression=expression),
                    "answer": answer,
                }
            )
            if len(rows) == count:
                return rows
    raise ValueError(f"cannot draw {count} distinct {NAME} problems: only {len(seen)} turned up")


def parse_spec(spec: str) -> tuple[int, int] | None:
    """`synthetic` or `synthetic:SEED:COUNT` as (seed, count); None for any other dataset name."""
    name, _, rest = spec.partition(":")
    if name != NAME:
        return None
    if not rest:
        return DEFAULT_SEED, DEFAULT_COUNT
    seed, _, count = rest.partition(":")
    if not (seed.isdigit() and count.isdigit()):
        raise ValueError(f"bad dataset {spec!r}: expected {NAME} or {NAME}:SEED:COUNT")
    return int(seed), int(count)


def slipped(rng: random.Random, tokens: list[str], task: Task) -> tuple[list[str], int]:
    """The steps and result with one step off by one (redrawn while a value would leave the range)."""
    while True:
        lines, values = evaluate(tokens, (rng.randrange(len(tokens) // 2), rng.choice((-1, 1))))
        if in_range(values, task):
            return lines, values[-1]


def explorer_turn(rng: random.Random, task: Task) -> Turn:
    """A problem worked out step by step (with a slip at `task.slip_rate`), then its answer part."""
    tokens = random_expression(rng, task, benchmark=False)
    if rng.random() < task.slip_rate:
        lines, value = slipped(rng, tokens, task)
    else:
        lines, values = evaluate(tokens)
        value = values[-1]
    expression, thinking = " ".join(tokens), "\n".join(lines)
    answer = ANSWER_PART.format(expression=expression, value=value)
    return Turn(QUESTION.format(expression=expression), f"{THINK_START}\n{thinking}\n{THINK_END}\n\n{answer}")


def synthesizer_turn(rng: random.Random, task: Task) -> Turn:
    """References drawn like explorer answers, redrawn until the correct answer is the strictly most frequent."""
    tokens = random_expression(rng, task, benchmark=False)
    value = evaluate(tokens)[1][-1]
    count, right_rate = rng.randint(1, task.max_references), rng.uniform(0.4, 1.0)
    while True:
        answers = [
            value if rng.random() < right_rate else slipped(rng, tokens, task)[1] for _ in range(count)
        ]
        ranked = Counter(answers).most_common(2)
        if ranked[0][0] == value and (len(ranked) == 1 or ranked[1][1] < ranked[0][1]):
            break
    expression = " ".join(tokens)
    references = [ANSWER_PART.format(expression=expression, value=a) for a in answers]
    answer = ANSWER_PART.format(expression=expression, value=value)
    return Turn(
        synthesizer_query(QUESTION.format(expression=expression), references),
        f"{THINK_START}\nMost references give {value}.\n{THINK_END}\n\n{answer}",
    )


def training_turns(seed: int, count: int, task: Task = Task()) -> Iterator[Turn]:
    """`count` training turns, explorer and synthesizer mixed; the same seed gives the same turns."""
    rng = random.Random(f"{NAME}/train/{seed}")
    for _ in range(count):
        yield (
            synthesizer_turn(rng, task) if rng.random() < task.synthesizer_share else explorer_turn(rng, task)
        )


def render(tokenizer: Any, turn: Turn) -> tuple[str, str]:
    """(prompt, reply): the prompt exactly as `programs.core.prompts.chat_prompt` serves it, and the reply up to
    and including the end-of-turn token, both cut from the chat template's rendering of the whole exchange."""
    prompt = chat_prompt(tokenizer, turn.user)
    whole = tokenizer.apply_chat_template(
        [{"role": "user", "content": turn.user}, {"role": "assistant", "content": turn.assistant}],
        tokenize=False,
    )
    reply, end, _ = whole.removeprefix(prompt).partition(tokenizer.eos_token)
    if not whole.startswith(prompt) or not end:
        raise ValueError("the chat template does not render a whole exchange as the served prompt + reply")
    return prompt, reply + end
