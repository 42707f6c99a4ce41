"""What `benchmarks.references` concludes: per condition the shares right / copied / other with Wilson 95%
intervals, and one verdict on whether the synthesizer reads its references.

Thresholds, stated once here and printed with every verdict:
- two shares differ "beyond noise" when their Wilson 95% intervals do not overlap;
- it *follows right evidence* when it is right more often with `all_right` references than with
  `agreeing_wrong` ones, beyond noise; it *resists a wrong majority* when it copies the majority's wrong
  answer on fewer than half of the `wrong_majority` problems.
Verdicts: "reads its references" (follows right evidence and resists a wrong majority); "copies the
majority" (follows, does not resist); "ignores its references" (`all_right`, `agreeing_wrong` and `solo`
are pairwise within noise); otherwise "mixed", with the figures that make it so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.conditions import CONDITIONS

Z95 = 1.959964  # the standard normal quantile of a two-sided 95% interval
RESIST_BELOW = 50.0  # percent of wrong_majority problems copied: "more often than not" resisted
READS, COPIES, IGNORES, MIXED = (
    "reads its references",
    "copies the majority",
    "ignores its references",
    "mixed",
)
VERDICTS = (READS, COPIES, IGNORES, MIXED)
THRESHOLDS = (
    "beyond noise = Wilson 95% intervals that do not overlap; follows right evidence = right more often "
    "with all_right than with agreeing_wrong references, beyond noise; resists a wrong majority = copies it "
    f"on fewer than {RESIST_BELOW:g}% of wrong_majority problems"
)


def wilson(successes: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial share, in percent.

    >>> [round(x, 1) for x in wilson(9, 40)]
    [12.3, 37.5]
    >>> [round(x, 1) for x in (*wilson(0, 10), *wilson(10, 10))]
    [0.0, 27.8, 72.2, 100.0]
    """
    if total < 1:
        raise ValueError(f"an interval needs at least one trial, got {total}")
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)


@dataclass(frozen=True)
class Outcome:
    """One synthesis of one condition: right, and whether it gave the references' majority answer (None
    with no references)."""

    right: bool
    copied: bool | None


@dataclass(frozen=True)
class Share:
    count: int
    total: int

    @property
    def percent(self) -> float:
        return 100 * self.count / self.total

    @property
    def ci(self) -> tuple[float, float]:
        return wilson(self.count, self.total)

    def above(self, other: Share) -> bool:
        """Higher than `other` beyond noise: its interval lies wholly above `other`'s."""
        return self.ci[0] > other.ci[1]

    def near(self, other: Share) -> bool:
        return not (self.above(other) or other.above(self))

    def show(self) -> str:
        low, high = self.ci
        return f"{self.percent:.1f}% [{low:.1f}-{high:.1f}]"


@dataclass(frozen=True)
class Measures:
    """One condition's measures over its problems."""

    right: Share
    copied: Share | None  # None for `solo`: there is no majority to copy
    other: Share
    rewritten: int  # references rewritten to carry the wrong answer, over all problems
    reused: int

    @classmethod
    def of(cls, outcomes: Sequence[Outcome], rewritten: int = 0, reused: int = 0) -> Measures:
        total = len(outcomes)
        right = sum(o.right for o in outcomes)
        copied = sum(bool(o.copied) for o in outcomes)
        other = sum(not o.right and not o.copied for o in outcomes)
        has_majority = any(o.copied is not None for o in outcomes)
        return cls(
            Share(right, total),
            Share(copied, total) if has_majority else None,
            Share(other, total),
            rewritten,
            reused,
        )

    def to_json(self) -> dict:
        shares = {"right": self.right, "copied": self.copied, "other": self.other}
        return {
            **{k: s.percent if s else None for k, s in shares.items()},
            "ci": {k: list(s.ci) if s else None for k, s in shares.items()},
            "problems": self.right.total,
            "rewritten": self.rewritten,
            "reused": self.reused,
        }


@dataclass(frozen=True)
class Verdict:
    label: str
    because: str


def verdict(profiles: dict[str, Measures]) -> Verdict:
    """The verdict on a profile of every condition, by the module's thresholds."""
    missing = [c for c in CONDITIONS if c not in profiles]
    if missing:
        raise ValueError(f"a verdict needs every condition; missing {', '.join(missing)}")
    informed, misled, solo = (profiles[c].right for c in ("all_right", "agreeing_wrong", "solo"))
    copied = profiles["wrong_majority"].copied
    assert copied is not None
    figures = (
        f"right {informed.show()} with all_right references, {misled.show()} with agreeing_wrong, "
        f"{solo.show()} with none; copies a wrong majority {copied.show()}"
    )
    follows, resists = informed.above(misled), copied.percent < RESIST_BELOW
    if follows and resists:
        return Verdict(
            "reads its references", f"it follows right evidence and resists a wrong majority: {figures}"
        )
    if follows:
        return Verdict(COPIES, f"it follows its references, wrong majorities too: {figures}")
    if informed.near(misled) and informed.near(solo) and misled.near(solo):
        return Verdict(IGNORES, f"its answers do not move with them: {figures}")
    pairs = {"all_right": informed, "agreeing_wrong": misled, "solo": solo}
    differ = [f"{a} above {b}" for a, x in pairs.items() for b, y in pairs.items() if a != b and x.above(y)]
    return Verdict(MIXED, f"right more often with {', '.join(differ)} (beyond noise): {figures}")
