"""How different a problem's N explorer paths are: what self-consistency and a synthesizer have to work with.

Answers are compared by equivalence (`programs.core.metrics.answer_groups`), and a path without an answer is
left out of the answer measures. The effective number of independent paths is Kish's design effect for
equally correlated samples, N / (1 + (N-1) rho), with rho the paths' error correlation over problems: N
paths whose errors always coincide are worth one path, independent ones are worth N.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from itertools import combinations

import numpy as np

from programs.core.metrics import answer_groups

WORD = re.compile(r"\w+")


def distinct_answers(answers: Sequence[str | None]) -> int:
    """Different answers among the paths, equivalent ones counted once.

    >>> distinct_answers(["1/2", "0.5", "3", None])
    2
    """
    return len(answer_groups(answers))


def answer_entropy(answers: Sequence[str | None]) -> float:
    """Shannon entropy, in bits, of the answered paths' answer distribution: 0 when they agree, log2 k when
    they split evenly over k answers.

    >>> answer_entropy(["1", "2", "1", "2"]), answer_entropy(["7", "7", None])
    (1.0, 0.0)
    """
    sizes = np.array([len(group) for group in answer_groups(answers)], dtype=float)
    if sizes.sum() == 0:
        return 0.0
    shares = sizes / sizes.sum()
    return float(-(shares * np.log2(shares)).sum()) + 0.0  # + 0.0: -0.0 reads as 0.0


def lexical_overlap(parts: Sequence[str]) -> float | None:
    """Mean Jaccard similarity of the word sets (lower-cased `\\w+` runs) of every pair of answer parts: 1
    when all use the same words, 0 when no two share one; None with fewer than two parts.

    >>> lexical_overlap(["x is 2", "x is 3"])
    0.5
    """
    if len(parts) < 2:
        return None
    words = [set(WORD.findall(part.lower())) for part in parts]
    return float(np.mean([len(a & b) / len(a | b) if a | b else 1.0 for a, b in combinations(words, 2)]))


def error_correlation(errors: np.ndarray) -> float | None:
    """The mean Pearson correlation, over observations (rows: problems, or problems x runs), of every pair of
    paths' errors (columns, 1 = wrong). A path wrong everywhere or right everywhere has no variance and is
    left out; None when fewer than two paths vary."""
    errors = np.asarray(errors, dtype=float)
    varying = errors[:, errors.std(axis=0) > 0]
    if varying.shape[1] < 2:
        return None
    matrix = np.corrcoef(varying, rowvar=False)
    return float(matrix[np.triu_indices_from(matrix, k=1)].mean())


def effective_paths(n: int, rho: float | None) -> float | None:
    """N / (1 + (N-1) rho): how many independent paths N paths with error correlation rho are worth.

    >>> effective_paths(8, 0.0), effective_paths(8, 1.0), effective_paths(4, 1 / 3)
    (8.0, 1.0, 2.0)
    """
    if rho is None:
        return None
    denominator = 1 + (n - 1) * rho
    return n / denominator if denominator > 0 and math.isfinite(denominator) else None
