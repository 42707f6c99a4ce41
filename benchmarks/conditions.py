"""The reference sets `benchmarks.references` shows a synthesizer, built per problem from real explorer answer parts.

Five conditions, N references each (none for `solo`):
- `all_right`: N right parts;
- `agreeing_wrong`: N wrong parts that give one wrong answer W, the problem's most common wrong answer;
- `wrong_majority`: N-1 parts giving W and 1 right part;
- `right_majority`: N-1 right parts and 1 wrong part;
- `solo`: no references; the synthesizer template is unchanged, its `Reference:` line empty.

Each slot is drawn, seeded per problem, without replacement from real parts first. When the explorer gave
fewer than the slots need with answer W, another wrong part is rewritten to give W: every standalone
occurrence of its own answer, in its text and its box, becomes W (`rewrite`). Only once those run out is a
part reused. Rewritten and reused references are marked and counted.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from pathlib import Path

from programs.core.grading import extract_boxed, is_equivalent
from programs.core.jsonl import JsonlError, read_jsonl
from programs.core.metrics import answer_groups
from programs.core.records import Problem, ProblemRecord

CONDITIONS = ("all_right", "agreeing_wrong", "wrong_majority", "right_majority", "solo")
MIN_N = 3  # with fewer references a majority of one over the rest is a tie


RECORDS_WANTED = "give an A2R run's records.jsonl or benchmarks.accuracy's explorations.jsonl"


class ReferencesError(ValueError):
    """Input the probe cannot use; the message names the file, line or flag at fault."""


@dataclass(frozen=True)
class Reference:
    """One answer part as a synthesizer is shown it, and where it came from."""

    text: str
    answer: str
    right: bool
    source: str  # "<record id>#<path index>"
    rewritten_from: str | None = None  # the answer the explorer's part gave before it was rewritten
    reused: bool = False  # the same part already fills another slot of this condition


@dataclass(frozen=True)
class ProblemParts:
    """A problem and every answer part its explorer paths gave with a boxed answer, graded."""

    problem: Problem
    parts: list[Reference]

    @property
    def right(self) -> list[Reference]:
        return [p for p in self.parts if p.right]

    @property
    def wrong(self) -> list[Reference]:
        return [p for p in self.parts if not p.right]

    @property
    def usable(self) -> bool:
        """Both a right and a wrong part: every condition can be built."""
        return bool(self.right and self.wrong)


@dataclass(frozen=True)
class Condition:
    """One condition of one problem: its references and the answer most of them give (None for `solo`)."""

    name: str
    references: list[Reference]
    majority: str | None

    @property
    def rewritten(self) -> int:
        return sum(r.rewritten_from is not None for r in self.references)

    @property
    def reused(self) -> int:
        return sum(r.reused for r in self.references)


def rewrite(text: str, old: str, new: str) -> str | None:
    """`text` with every standalone occurrence of the answer `old` replaced by `new`, or None when its box
    would not then hold `new` (the answer was not found standing alone).

    >>> rewrite(r"The result is 18, so the answer is \\boxed{18}.", "18", "17")
    'The result is 17, so the answer is \\\\boxed{17}.'
    >>> rewrite(r"118 - 100 = 18.5, so \\boxed{18}", "18", "7")
    '118 - 100 = 18.5, so \\\\boxed{7}'
    """
    standalone = re.compile(rf"(?<![\w.]){re.escape(old)}(?!\w|\.\d)")
    changed = standalone.sub(lambda _: new, text)
    return changed if extract_boxed(changed) == new else None


def draw(pool: list[Reference], k: int, rng: random.Random) -> list[Reference]:
    """`k` references from `pool` in a seeded order, reusing parts (marked) only once all are used."""
    order = rng.sample(pool, len(pool))
    return [order[i] if i < len(order) else replace(order[i % len(order)], reused=True) for i in range(k)]


def build_conditions(parts: ProblemParts, n: int, seed: int) -> list[Condition]:
    """The five conditions of one usable problem, drawn with a generator seeded by `seed` and its id."""
    if not parts.usable:
        raise ValueError(f"problem {parts.problem.id} has no right or no wrong answer part")
    if n < MIN_N:
        raise ValueError(f"n must be at least {MIN_N}, got {n}")
    rng = random.Random(f"{seed}/{parts.problem.id}")
    right, wrong = parts.right, parts.wrong
    target = max(answer_groups([p.answer for p in wrong]), key=len)[0]  # first seen among the largest
    agreeing = [p for p in wrong if is_equivalent(target, p.answer)]
    rewritten = [
        replace(p, text=text, answer=target, rewritten_from=p.answer)
        for p in wrong
        if p not in agreeing and (text := rewrite(p.text, p.answer, target)) is not None
    ]

    def giving_target(k: int) -> list[Reference]:
        real = rng.sample(agreeing, min(k, len(agreeing)))
        return draw(real + rng.sample(rewritten, min(k - len(real), len(rewritten))), k, rng)

    gold = parts.problem.answer
    return [
        Condition("all_right", draw(right, n, rng), gold),
        Condition("agreeing_wrong", giving_target(n), target),
        Condition("wrong_majority", giving_target(n - 1) + draw(right, 1, rng), target),
        Condition("right_majority", draw(right, n - 1, rng) + draw(wrong, 1, rng), gold),
        Condition("solo", [], None),
    ]


def problem_key(record: ProblemRecord) -> str:
    """The problem a record explored: an A2R record's id, or the accuracy protocol's dataset/problem_id
    (its records are one per run, and the runs of one problem pool their paths)."""
    labels = record.labels
    if "problem_id" in labels:
        return "/".join(str(x) for x in (labels.get("dataset"), labels["problem_id"]) if x is not None)
    return record.id


def read_parts(path: Path) -> list[ProblemParts]:
    """Every problem of a records file (an A2R run's records.jsonl, the accuracy protocol's
    explorations.jsonl) with its graded answer parts, in first-seen order; failed problems are skipped."""
    try:
        rows = read_jsonl(path)
    except OSError as exc:
        raise ReferencesError(f"--explorations {path}: cannot read: {exc.strerror or exc}") from None
    except JsonlError as exc:
        raise ReferencesError(str(exc)) from None
    if not rows:
        raise ReferencesError(f"--explorations {path}: the file is empty")
    problems: dict[str, ProblemParts] = {}
    for line, row in rows:
        where = f"{path}:{line}"
        if not row.get("error") and not any(
            isinstance(p, dict) and p.get("answer_part") for p in row.get("paths") or []
        ):
            raise ReferencesError(f"{where}: no answer parts (paths[].answer_part); {RECORDS_WANTED}")
        try:
            record = ProblemRecord.from_json(row)
        except (KeyError, TypeError, AttributeError) as exc:
            detail = f"no key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ReferencesError(f"{where}: not a problem record ({detail}); {RECORDS_WANTED}") from None
        if record.error:
            continue
        key = problem_key(record)
        parts = [
            Reference(p.answer_part, p.answer, bool(p.correct), f"{record.id}#{i}")
            for i, p in enumerate(record.paths)
            if p.answer is not None and p.correct is not None
        ]
        problem = Problem(key, record.problem, record.gold)
        known = problems.setdefault(key, ProblemParts(problem, []))
        known.parts.extend(parts)
    return list(problems.values())
