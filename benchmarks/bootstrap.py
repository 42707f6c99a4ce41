"""Bootstrap intervals over problems, and paired comparisons on the same resamples.

A figure is a mean per problem, averaged over datasets with equal weight (Table 1's Average row). A resample
draws each dataset's problems with replacement, the same draws for every figure of a run, so that the
difference of two methods is resampled as a pair: problems that both methods find easy or hard move together
and the interval of the difference is narrower than the two intervals side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RESAMPLES = 2000  # bootstrap resamples of the problems


def interval(values: np.ndarray) -> list[float]:
    """The central 95% of bootstrap `values`."""
    low, high = np.percentile(values, [2.5, 97.5])
    return [round(float(low), 2), round(float(high), 2)]


@dataclass(frozen=True)
class Problems:
    """The problems of a run, in order, grouped by dataset; `draws` holds each resample's picks."""

    strata: list[np.ndarray]  # per dataset, the indices of its problems
    draws: np.ndarray  # resamples x problems: each dataset's block drawn with replacement from its problems

    @classmethod
    def of(cls, datasets: Sequence[str], resamples: int = RESAMPLES, seed: int = 0) -> Problems:
        """Problems labelled by their dataset, in order; the draws are seeded, so a rerun gives the same."""
        if not datasets:
            raise ValueError("no problems to resample")
        labels = list(dict.fromkeys(datasets))
        strata = [np.flatnonzero(np.asarray(datasets) == label) for label in labels]
        rng = np.random.default_rng(seed)
        draws = [stratum[rng.integers(0, len(stratum), (resamples, len(stratum)))] for stratum in strata]
        return cls(strata, np.concatenate(draws, axis=1))

    def mean(self, values: np.ndarray) -> float:
        """`values` (one per problem) averaged per dataset, then over datasets."""
        return float(np.mean([values[stratum].mean() for stratum in self.strata]))

    def resampled(self, values: np.ndarray) -> np.ndarray:
        """`mean` of every resample."""
        picked, start, means = values[self.draws], 0, []
        for stratum in self.strata:
            means.append(picked[:, start : start + len(stratum)].mean(axis=1))
            start += len(stratum)
        return np.mean(means, axis=0)

    def summary(self, values: np.ndarray, scale: float = 100.0) -> tuple[float, list[float]]:
        """The figure and its 95% interval, both times `scale` (percent for correctness)."""
        values = scale * np.asarray(values, dtype=float)
        return self.mean(values), interval(self.resampled(values))


def paired(a: np.ndarray, b: np.ndarray, problems: Problems) -> dict[str, Any]:
    """`a` against `b`, per problem fractions (e.g. correct over runs): the difference in percent points, its
    paired-bootstrap 95% interval, whether that interval holds 0 (no difference shown), and the problems each
    side wins (a higher fraction) and ties."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    difference, ci = problems.summary(a - b)
    tie = np.isclose(a, b)
    return {
        "difference": round(difference, 2),
        "ci": ci,
        "contains_zero": ci[0] <= 0 <= ci[1],
        "wins": {"a": int(np.sum(~tie & (a > b))), "b": int(np.sum(~tie & (b > a))), "ties": int(tie.sum())},
    }
