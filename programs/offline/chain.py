"""A seeded arithmetic task in the A2R format: benchmark problems, and the turns the offline models learn.

    load_problems("chain")               # 100 problems of 3 to 8 operands, seed 0 (programs.datasets)
    load_problems("chain:7:500")         # seed 7, 500 problems
    load_problems("synthetic")           # the short set: two or three operands

Problems are chains of small integers such as `(3 + 4) * 2 - 5`, worked in written order (parentheses put
a product after a sum or difference in that order), every intermediate and final value in
0..`Task.max_value`. The expressions are split once, by a hash of their text, into a held-out share that
only benchmark sets draw from and the rest, that only training draws from: a score on a set is never a
score on problems the models were trained on.

Training turns are (user, assistant) pairs for both A2R roles, rendered by `render` with the model's own
chat template, so a model learns exactly the text it is served:
- explorer: the problem; `<think>` one `a op b = c` line per operation, now and then a `check:` line that
  undoes the step, and after a share of paths one or more `Re-check:` passes over the whole chain
  `</think>`, then the answer part `The result is 9, so the answer is \\boxed{9}.` (short: a 2-layer
  model asked to restate its steps there garbled them). The re-check passes make the paths of one problem
  differ in length several-fold, as real reasoning paths do. A model trained for a few minutes still
  miscopies and miscalculates, so its paths disagree;
- synthesizer: `synthesizer_query(problem, references)` over 1..`max_references` explorer answer parts
  drawn from `Task.mixes` (all right, mostly right, a wrong majority over a right minority, split, none
  right), a wrong one carrying a slip: one step off by one, carried through. The target is always the
  correct derivation, one pass without checks: the references are evidence to re-derive from, not votes.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from programs.core.prompts import THINK_END, THINK_START, chat_prompt, synthesizer_query

DEFAULT_SEED, DEFAULT_COUNT = 0, 100
HELD_OUT_BUCKETS = 5  # one expression in five, by a hash of its text, is benchmark-only
OPERATORS = ("+", "-", "*")
INVERSE = {"+": "-", "-": "+", "*": "/"}  # a check line undoes a step with the inverse operation
QUESTION = "What is {expression}?"
ANSWER_PART = "The result is {value}, so the answer is \\boxed{{{value}}}."
RECHECK = "Re-check:"
# What a synthesizer training turn's references can be: all right; most right; mostly one wrong answer over a
# right minority; split between three or four answers, one right; none right. `Task.mixes` draws from these.
MIXES = ("all right", "majority right", "wrong majority", "disagree", "none right")


@dataclass(frozen=True)
class Shape:
    """How many operands the expressions of a problem set (or of the training data) have."""

    min_operands: int
    max_operands: int

    def __post_init__(self) -> None:
        if not 2 <= self.min_operands <= self.max_operands:
            raise ValueError(
                f"need 2 <= min_operands <= max_operands, got {self.min_operands}, {self.max_operands}"
            )


NAME = "chain"  # the task's main set, as users type it (`--dataset chain`): the offline profile's default
# The benchmark sets, by name: `synthetic` is the short one.
SETS = {NAME: Shape(3, 8), "synthetic": Shape(2, 3)}
TRAINING = Shape(2, 8)  # covers every set
SHORT = Shape(2, 4)  # what the explorer learns first: copying operands takes hold on short chains


@dataclass(frozen=True)
class Task:
    """The task's knobs, passed whole to every generator."""

    max_operand: int = 9  # operands are 1..max_operand
    max_value: int = 30  # every intermediate and final value stays in 0..max_value
    slip_rate: float = 0.0  # explorer targets with one step off by one, carried through
    check_rate: float = 0.15  # explorer steps followed by a `check:` line
    rechecks: tuple[float, ...] = (0.45, 0.3, 0.15, 0.1)  # chance of 0, 1, 2, ... re-check passes per path
    synthesizer_share: float = 0.3  # training turns that are synthesizer turns
    max_references: int = 8  # a synthesizer training turn sees 1..max_references references
    mixes: tuple[str, ...] = MIXES[1:]  # drawn uniformly, so a mix named twice comes twice as often

    def __post_init__(self) -> None:
        for name in ("slip_rate", "check_rate", "synthesizer_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 1 <= self.max_operand <= self.max_value:
            raise ValueError(f"need 1 <= max_operand <= max_value, got {self.max_operand}, {self.max_value}")
        if self.max_references < 1:
            raise ValueError(f"max_references must be at least 1, got {self.max_references}")
        if not self.mixes or not set(self.mixes) <= set(MIXES):
            raise ValueError(f"mixes must be drawn from {MIXES}, got {self.mixes}")
        if not self.rechecks or abs(sum(self.rechecks) - 1) > 1e-9 or min(self.rechecks) < 0:
            raise ValueError(f"rechecks must be chances that sum to 1, got {self.rechecks}")


@dataclass(frozen=True)
class Turn:
    """One exchange to train on: the user turn and the assistant's whole reply, thinking included."""

    user: str
    assistant: str


@dataclass(frozen=True)
class Step:
    """One line of working: `left op right = value`."""

    left: int
    op: str
    right: int
    value: int

    def __str__(self) -> str:
        return f"{self.left} {self.op} {self.right} = {self.value}"


def apply(left: int, op: str, right: int) -> int:
    return left * right if op == "*" else left + right if op == "+" else left - right


def operations(expression: str) -> tuple[int, list[tuple[str, int]]]:
    """The first operand and the (operator, operand) pairs that follow it, in written order."""
    first, *rest = expression.replace("(", "").replace(")", "").split()
    return int(first), [(rest[i], int(rest[i + 1])) for i in range(0, len(rest), 2)]


def evaluate(expression: str, slip: tuple[int, int] | None = None) -> list[Step]:
    """Work an expression out one operation per line, in written order, which its parentheses make the
    usual precedence (see `random_expression`).

    `slip` = (step, delta) adds `delta` to that step's value and later steps carry it on, as a person's slip
    would.
    """
    value, rest = operations(expression)
    steps = []
    for op, right in rest:
        result = apply(value, op, right) + (slip[1] if slip is not None and slip[0] == len(steps) else 0)
        steps.append(Step(value, op, right, result))
        value = result
    return steps


def result(steps: list[Step]) -> int:
    return steps[-1].value


def held_out(expression: str) -> bool:
    """Whether `expression` belongs to the benchmark share (and so never to training)."""
    return zlib.crc32(expression.encode()) % HELD_OUT_BUCKETS == 0


def in_range(steps: list[Step], task: Task) -> bool:
    return all(0 <= s.value <= task.max_value for s in steps)


def random_expression(rng: random.Random, task: Task, shape: Shape, benchmark: bool) -> str:
    """An expression of `shape` from the benchmark share (or the training share), all its values in range.

    Expressions are evaluated in written order: a product that follows a sum or difference has the work
    before it in parentheses, `(3 + 4) * 2 - 5`, so one pass from left to right is the usual precedence.
    """
    count = rng.randint(shape.min_operands, shape.max_operands)  # drawn once: every length equally often
    while True:
        value = rng.randint(1, task.max_operand)
        expression, additive = str(value), False  # `additive`: the text so far ends a sum or difference
        for _ in range(count - 1):
            choices = [
                (op, right)
                for op in OPERATORS
                for right in range(1, task.max_operand + 1)
                if 0 <= apply(value, op, right) <= task.max_value
            ]
            op, right = rng.choice(choices)
            if op == "*" and additive:
                expression = f"({expression})"
            expression, value, additive = f"{expression} {op} {right}", apply(value, op, right), op != "*"
        if held_out(expression) == benchmark:
            return expression


def problem_rows(
    seed: int = DEFAULT_SEED, count: int = DEFAULT_COUNT, name: str = NAME, task: Task = Task()
) -> list[dict]:
    """`count` distinct problems of set `name` as loader rows (`id`, `problem`, `answer`); a seed fixes them."""
    if count < 1:
        raise ValueError(f"the {name} problem count must be at least 1, got {count}")
    rng, rows, seen = random.Random(f"{name}/benchmark/{seed}"), [], set()
    for _ in range(100 * count):  # bounded: a count beyond the held-out share cannot be met
        expression = random_expression(rng, task, SETS[name], benchmark=True)
        if expression not in seen:
            seen.add(expression)
            rows.append(
                {
                    "id": f"{name}-{seed}-{len(rows)}",
                    "problem": QUESTION.format(expression=expression),
                    "answer": str(result(evaluate(expression))),
                }
            )
            if len(rows) == count:
                return rows
    raise ValueError(f"cannot draw {count} distinct {name} problems: only {len(seen)} turned up")


def parse_spec(spec: str) -> tuple[int, int, str] | None:
    """`chain` or `chain:SEED:COUNT` (any name in SETS) as (seed, count, name); None for other dataset names."""
    name, _, rest = spec.partition(":")
    if name not in SETS:
        return None
    if not rest:
        return DEFAULT_SEED, DEFAULT_COUNT, name
    seed, _, count = rest.partition(":")
    if not (seed.isdigit() and count.isdigit()):
        raise ValueError(f"bad dataset {spec!r}: expected {name} or {name}:SEED:COUNT")
    return int(seed), int(count), name


def slipped(rng: random.Random, expression: str, task: Task) -> list[Step]:
    """The steps with one off by one (redrawn while a value would leave the range)."""
    steps = len(evaluate(expression))
    while True:
        worked = evaluate(expression, (rng.randrange(steps), rng.choice((-1, 1))))
        if in_range(worked, task):
            return worked


def answer_part(steps: list[Step]) -> str:
    """What an explorer writes after its thinking, and what the synthesizer reads as a reference."""
    return ANSWER_PART.format(value=result(steps))


def thinking_pass(rng: random.Random, steps: list[Step], check_rate: float) -> list[str]:
    lines = []
    for step in steps:
        lines.append(str(step))
        if rng.random() < check_rate:
            lines.append(f"check: {step.value} {INVERSE[step.op]} {step.right} = {step.left}")
    return lines


def reply(thinking: list[str], answer: str) -> str:
    return f"{THINK_START}\n" + "\n".join(thinking) + f"\n{THINK_END}\n\n{answer}"


def explorer_thinking(rng: random.Random, steps: list[Step], task: Task) -> list[str]:
    """One pass over the steps, then 0 or more `Re-check:` passes that work them out again: how long a path
    thinks is drawn per path. (Re-checks that repeat the first pass line for line measured worse: the
    explorer learned less arithmetic, Pass@1 7.5 against 16.8 on `chain`.)"""
    thinking = thinking_pass(rng, steps, task.check_rate)
    for _ in range(rng.choices(range(len(task.rechecks)), weights=task.rechecks)[0]):
        thinking += [RECHECK, *thinking_pass(rng, steps, task.check_rate)]
    return thinking


def explorer_turn(rng: random.Random, task: Task, shape: Shape = TRAINING) -> Turn:
    """A problem worked out one step per line (with a slip at `task.slip_rate`), then its answer part."""
    expression = random_expression(rng, task, shape, benchmark=False)
    steps = slipped(rng, expression, task) if rng.random() < task.slip_rate else evaluate(expression)
    thinking = explorer_thinking(rng, steps, task)
    return Turn(QUESTION.format(expression=expression), reply(thinking, answer_part(steps)))


def references(rng: random.Random, expression: str, task: Task, mix: str) -> list[list[Step]]:
    """The worked steps behind 1..max_references references of `mix` (see MIXES); a wrong reference carries a
    slip, and wrong references may share one."""
    right, count = evaluate(expression), rng.randint(1, task.max_references)
    answer = result(right)
    wrong = [w for w in (slipped(rng, expression, task) for _ in range(3)) if result(w) != answer]
    if not wrong:  # no slip moves the answer (rare): every mix is all right
        return [right] * count
    if mix == "all right":
        picked = [right] * count
    elif mix == "majority right":
        wrong_count = rng.randint(0, (count - 1) // 2)
        picked = [right] * (count - wrong_count) + [rng.choice(wrong) for _ in range(wrong_count)]
    elif mix == "wrong majority" and count >= 3:
        right_count = rng.randint(1, (count - 1) // 2)
        picked = [right] * right_count + [wrong[0]] * (count - right_count)
    elif mix == "disagree":
        distinct = {result(w): w for w in wrong}
        picked = [right, *distinct.values()][:count] + [
            rng.choice(wrong) for _ in range(count - 1 - len(distinct))
        ]
    else:  # "none right", and a wrong majority that has too few references to hold one
        picked = [rng.choice(wrong) for _ in range(count)]
    rng.shuffle(picked)
    return picked


def synthesizer_turn(rng: random.Random, task: Task, shape: Shape = TRAINING) -> Turn:
    """References from one of MIXES; the target re-derives the correct chain whatever they say."""
    expression = random_expression(rng, task, shape, benchmark=False)
    parts = [answer_part(steps) for steps in references(rng, expression, task, rng.choice(task.mixes))]
    steps = evaluate(expression)
    return Turn(
        synthesizer_query(QUESTION.format(expression=expression), parts),
        reply(thinking_pass(rng, steps, 0.0), answer_part(steps)),
    )


def training_turns(seed: int, count: int, task: Task = Task(), shape: Shape = TRAINING) -> Iterator[Turn]:
    """`count` training turns of `shape`, explorer and synthesizer mixed; the same seed gives the same turns."""
    rng = random.Random(f"synthetic/train/{seed}/{shape.min_operands}-{shape.max_operands}")
    for _ in range(count):
        turn = synthesizer_turn if rng.random() < task.synthesizer_share else explorer_turn
        yield turn(rng, task, shape)


def render(tokenizer: Any, turn: Turn) -> tuple[str, str]:
    """(prompt, reply): the prompt exactly as `programs.core.prompts.chat_prompt` serves it, and the reply up to
    and including the end-of-turn token, both cut from the chat template's rendering of the whole exchange."""
    prompt = chat_prompt(tokenizer, turn.user)
    whole = tokenizer.apply_chat_template(
        [{"role": "user", "content": turn.user}, {"role": "assistant", "content": turn.assistant}],
        tokenize=False,
    )
    answer, end, _ = whole.removeprefix(prompt).partition(tokenizer.eos_token)
    if not whole.startswith(prompt) or not end:
        raise ValueError("the chat template does not render a whole exchange as the served prompt + reply")
    return prompt, answer + end
