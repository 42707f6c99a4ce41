"""Accuracy metrics over k sampled answers per problem: pass@1, pass@N, cons@N, and their average over problems.

Conventions (the paper's, with the choices it leaves open made explicit):
- A sample's answer is a bare string (e.g. a box's content) or None; a blank string counts as None. Both are
  "no answer": never correct, never a vote. Correctness is `is_equivalent(gold, answer)` (math-verify).
- pass@1 is the fraction of a problem's k samples that are correct.
- pass@N is the unbiased estimate, from all k samples, that at least one of N is correct.
- cons@N splits the k samples, in order, into k/N disjoint groups of N and scores each group's majority
  answer; k must be a multiple of N (an error otherwise, so no sample is silently dropped). Answers are
  grouped by equivalence to each group's first answer, the largest group wins, ties go to the group seen
  first, and a group in which nobody answered is wrong.
- Across problems every metric is averaged per problem first, so each problem weighs the same (with equal k
  per problem, pass@1 is also the mean over all samples), and reported in percent.
Other per-problem metrics, e.g. `a2r@N` from a run's synthesizer answers, are added with
`ProblemScore.with_metric` and aggregate the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from programs.core.grading import is_equivalent


def _answered(answer: str | None) -> bool:
    return answer is not None and answer.strip() != ""


def answer_groups(answers: Sequence[str | None]) -> list[list[str]]:
    """The answers grouped by equivalence to each group's first answer, groups in first-seen order; no-answers
    are left out.

    >>> answer_groups(["1/2", None, "7", "0.5"])
    [['1/2', '0.5'], ['7']]
    """
    groups: list[list[str]] = []
    for answer in answers:
        if not _answered(answer):
            continue
        for group in groups:
            if is_equivalent(group[0], answer):
                group.append(answer)
                break
        else:
            groups.append([answer])
    return groups


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The first-seen answer of the largest group of equivalent answers; None if nobody answered.

    >>> majority_vote(["1/2", None, "7", "0.5", "7"])  # a tie: the 1/2 group was seen first
    '1/2'
    >>> majority_vote([None, ""]) is None
    True
    """
    groups = answer_groups(answers)
    if not groups:
        return None
    return max(groups, key=len)[0]  # max keeps the first of equally large groups


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased probability that at least one of k samples, drawn from n of which c are correct, is correct.

    1 - C(n-c, k) / C(n, k), computed as a product so large n does not overflow.

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 2), pass_at_k(4, 3, 2)
    (0.25, 0.5, 1.0)
    """
    if n < 1:
        raise ValueError(f"pass@k needs at least one sample, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"the number correct must be between 0 and n={n}, got c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k} with n={n} samples")
    if n - c < k:
        return 1.0  # every draw of k contains a correct sample
    all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        all_wrong *= 1.0 - k / i
    return 1.0 - all_wrong


def _check_groups(samples: int, n: int) -> None:
    if n < 1:
        raise ValueError(f"N must be at least 1, got {n}")
    if samples < n or samples % n:
        raise ValueError(
            f"{samples} samples cannot be split into disjoint groups of N={n}; use a divisor of {samples}"
        )


def cons_at_n(gold: str, answers: Sequence[str | None], n: int) -> float:
    """Mean majority-vote correctness over the consecutive disjoint groups of `n` answers.

    >>> cons_at_n("2", ["2", "3", "3", None, "2", None], 3)  # votes: 3 (wrong), 2 (right)
    0.5
    """
    _check_groups(len(answers), n)
    votes = [majority_vote(answers[i : i + n]) for i in range(0, len(answers), n)]
    return sum(is_equivalent(gold, vote) for vote in votes) / len(votes)


@dataclass(frozen=True)
class ProblemScore:
    """One problem's metrics as fractions in [0, 1], keyed by their report names, and its sample counts."""

    metrics: dict[str, float]
    samples: int  # k
    no_answer: int  # samples with no answer

    def with_metric(self, name: str, value: float) -> ProblemScore:
        """A copy with one more metric, e.g. `score.with_metric("a2r@4", mean(synthesizer_correct))`."""
        if name in self.metrics:
            raise ValueError(f"metric {name!r} is already set")
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"metric {name!r} must be a fraction in [0, 1], got {value}")
        return ProblemScore({**self.metrics, name: value}, self.samples, self.no_answer)


def score_problem(gold: str, answers: Sequence[str | None], n: int) -> ProblemScore:
    """pass@1, cons@N and pass@N of one problem's k sampled answers (k a multiple of N).

    >>> score_problem("5", ["5", "4", "4", "5"], 2).metrics  # both votes are ties, won by the first seen
    {'pass@1': 0.5, 'cons@2': 0.5, 'pass@2': 0.8333333333333333}
    """
    _check_groups(len(answers), n)
    correct = sum(is_equivalent(gold, answer) for answer in answers)
    metrics = {
        "pass@1": correct / len(answers),
        f"cons@{n}": cons_at_n(gold, answers, n),
        f"pass@{n}": pass_at_k(len(answers), correct, n),
    }
    no_answer = sum(not _answered(answer) for answer in answers)
    return ProblemScore(metrics, samples=len(answers), no_answer=no_answer)


@dataclass(frozen=True)
class Summary:
    """Metrics in percent, averaged over problems, with the counts they rest on."""

    metrics: dict[str, float]
    problems: int
    samples: int
    no_answer: int  # samples with no answer, over all problems

    def as_dict(self) -> dict[str, float | int]:
        return {
            **self.metrics,
            "problems": self.problems,
            "samples": self.samples,
            "no_answer": self.no_answer,
        }


def aggregate(scores: Sequence[ProblemScore]) -> Summary:
    """Average per-problem scores into percentages; every problem must carry the same metrics.

    >>> aggregate([score_problem("1", ["1", None], 1), score_problem("2", ["3", "3"], 1)]).as_dict()
    {'pass@1': 25.0, 'cons@1': 25.0, 'problems': 2, 'samples': 4, 'no_answer': 1}
    """
    if not scores:
        raise ValueError("no problems to aggregate")
    names = list(scores[0].metrics)
    for i, score in enumerate(scores):
        if set(score.metrics) != set(names):
            raise ValueError(
                f"problem {i} has metrics {sorted(score.metrics)}, problem 0 has {sorted(names)}"
            )
    metrics = {name: 100.0 * sum(s.metrics[name] for s in scores) / len(scores) for name in names}
    return Summary(
        metrics,
        problems=len(scores),
        samples=sum(s.samples for s in scores),
        no_answer=sum(s.no_answer for s in scores),
    )
