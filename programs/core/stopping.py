"""Adaptive exploration: when a problem's remaining paths stop, and which paths the vote and synthesis keep.

Every rule is a pure function of what the finished paths answered, so a live run (`programs.explorer`, which
aborts the rest on the engine) and a replay of finished runs (`benchmarks.adaptive`) decide alike. All are
off by default: the paper's A2R waits for all N paths and hands every one to the synthesizer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from programs.core.metrics import answer_groups

STOP_HELP = (
    "stop a problem's remaining paths early: 'majority' once the leading answer can no longer be overtaken "
    "(the vote is then unchanged), 'agree:K' once K finished paths agree, 'first:M' once M paths finished"
)


@dataclass(frozen=True)
class StopPolicy:
    """A rule that, after each path finishes, says whether the paths still running should stop."""

    name: str  # majority | agree | first
    count: int | None = None  # K of agree:K, M of first:M

    @classmethod
    def parse(cls, spec: str) -> StopPolicy:
        name, colon, count = spec.partition(":")
        if name == "majority" and not colon:
            return cls(name)
        if name in ("agree", "first") and count.isdigit() and int(count) >= 1:
            return cls(name, int(count))
        raise ValueError(f"--stop {spec!r} is not a policy: use majority, agree:K or first:M (K, M >= 1)")

    def __str__(self) -> str:
        return self.name if self.count is None else f"{self.name}:{self.count}"

    def check(self, n: int) -> None:
        """Refuse a count that cannot stop anything with `n` paths."""
        if self.count is not None and self.count >= n:
            raise ValueError(f"--stop {self} never stops a path with N={n}: its count must be below N")

    def settled(self, answers: Sequence[str | None], n: int) -> bool:
        """Whether the `n - len(answers)` paths still running should stop, given the finished paths' answers
        in finish order. A finished path with no answer votes for nobody; a running one may still vote for
        anyone, so `majority` fires only when the leader beats the runner-up even if all of them join it.

        >>> StopPolicy.parse("majority").settled(["7", "7", None], 5)  # 2 > 0 + 2 fails: a tie is possible
        False
        >>> StopPolicy.parse("majority").settled(["7", "7", "7"], 5)
        True
        """
        if self.name == "first":
            return len(answers) >= (self.count or 0)
        sizes = sorted(map(len, answer_groups(answers)), reverse=True) + [0, 0]
        if self.name == "agree":
            return sizes[0] >= (self.count or 0)
        return sizes[0] > sizes[1] + (n - len(answers))


@dataclass(frozen=True)
class Replayed:
    """A policy applied to one problem's finished paths: which it keeps and the tokens each would have spent."""

    kept: list[bool]
    spent: list[int]
    stop_after: int | None  # the length decoded when the stop fired; None when nothing stopped


def finish_order(lengths: Sequence[int]) -> list[int]:
    """Path indices in the order paths decoding at one rate finish: by length, ties by index."""
    return sorted(range(len(lengths)), key=lambda i: (lengths[i], i))


def replay(
    policy: StopPolicy | None,
    answers: Sequence[str | None],
    lengths: Sequence[int],
    order: Sequence[int] | None = None,
) -> Replayed:
    """What `policy` would have stopped among full-length paths (their `answers` and token `lengths`).

    Paths finish in `order` (default `finish_order`); once the policy fires, every path not yet finished
    stops, having spent min(its length, the length decoded by then).
    """
    n = len(answers)
    kept, spent = [True] * n, list(lengths)
    order = list(order) if order is not None else finish_order(lengths)
    finished: list[str | None] = []
    for position, i in enumerate(order[:-1]):
        finished.append(answers[i])
        if policy is not None and policy.settled(finished, n):
            for j in order[position + 1 :]:
                kept[j], spent[j] = False, min(lengths[j], lengths[i])
            return Replayed(kept, spent, lengths[i])
    return Replayed(kept, spent, None)


def most_confident(confidences: Sequence[float | None], kept: Sequence[bool], fraction: float) -> list[bool]:
    """Of the kept paths, the most confident `fraction`, rounded up (ties go to the earlier path).

    >>> most_confident([0.5, 2.0, 1.0, 3.0], [True, True, True, False], 0.5)
    [False, True, True, False]
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"--keep-confident must be a fraction in (0, 1], got {fraction}")
    candidates = [i for i, keep in enumerate(kept) if keep]
    if any(confidences[i] is None for i in candidates):
        raise ValueError(
            "keeping the most confident paths needs each path's confidence (its log-probabilities)"
        )
    ranked = sorted(candidates, key=lambda i: (-(confidences[i] or 0.0), i))
    chosen = set(ranked[: math.ceil(fraction * len(candidates))])
    return [i in chosen for i in range(len(kept))]
