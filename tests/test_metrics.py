"""Metric conventions on hand-built cases: votes, ties, missing answers, pass@k, cons@N and aggregation."""

from itertools import combinations

import pytest

from programs.core.metrics import aggregate, cons_at_n, majority_vote, pass_at_k, score_problem


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        (["3", "4", "4"], "4"),
        (["3", "4", "4", "3"], "3"),  # tie: the answer seen first
        (["4", "3", "3", "4"], "4"),
        (
            [r"\frac{1}{2}", "7", "0.5", "7", "1/2"],
            r"\frac{1}{2}",
        ),  # grouped by equivalence, first seen returned
        (["025", "7", "25"], "025"),
        ([None, "", "9", None], "9"),  # missing and blank answers do not vote
        ([None, "2", None, "3", "3"], "3"),
        ([None, None], None),
        (["", "  "], None),
        ([], None),
    ],
)
def test_majority_vote(answers, expected):
    assert majority_vote(answers) == expected


def _brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    draws = list(combinations([True] * c + [False] * (n - c), k))
    return sum(any(draw) for draw in draws) / len(draws)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_large_n_is_stable():
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    assert pass_at_k(1000, 0, 500) == 0.0
    assert pass_at_k(1000, 1000, 1) == 1.0


@pytest.mark.parametrize(
    ("n", "c", "k", "message"),
    [(0, 0, 1, "at least one sample"), (4, 5, 1, "between 0 and n"), (4, 1, 5, "k=5"), (4, 1, 0, "k=0")],
)
def test_pass_at_k_rejects_bad_arguments(n, c, k, message):
    with pytest.raises(ValueError, match=message):
        pass_at_k(n, c, k)


def test_cons_at_n_votes_per_consecutive_group():
    answers = ["5", "6", "6", "5", "5", "6", None, None, "", "5", None, None]
    # Groups of 3: [5,6,6] -> 6 wrong; [5,5,6] -> 5 right; [None,None,""] -> nobody answered, wrong;
    # [5,None,None] -> 5 right.
    assert cons_at_n("5", answers, 3) == 0.5
    # Groups of 2: [5,6] tie -> 5; [6,5] tie -> 6; [5,6] -> 5; [None,None]; ["",5] -> 5; [None,None].
    assert cons_at_n("5", answers, 2) == pytest.approx(3 / 6)
    assert cons_at_n("5", answers, 12) == 1.0  # one group: four 5s against three 6s
    assert cons_at_n("6", answers, 12) == 0.0


@pytest.mark.parametrize(("k", "n"), [(5, 2), (3, 4)])
def test_cons_at_n_refuses_to_drop_samples(k, n):
    with pytest.raises(ValueError, match=f"{k} samples cannot be split into disjoint groups of N={n}"):
        cons_at_n("1", ["1"] * k, n)


def test_score_problem():
    score = score_problem("12", ["12", "7", None, "012", "7", "7", "", "12"], 4)
    # 3 of 8 correct; groups [12,7,None,012] -> 12 (2 votes), [7,7,"",12] -> 7.
    assert score.metrics == {
        "pass@1": 3 / 8,
        "cons@4": 0.5,
        "pass@4": pytest.approx(1 - (5 * 4 * 3 * 2) / (8 * 7 * 6 * 5)),
    }
    assert (score.samples, score.no_answer) == (8, 2)


def test_score_problem_with_no_answers_at_all():
    score = score_problem("3", [None, None, None, None], 2)
    assert score.metrics == {"pass@1": 0.0, "cons@2": 0.0, "pass@2": 0.0}
    assert score.no_answer == 4


def test_aggregate_in_percent_with_an_added_metric():
    # The caller adds a2r@N from the synthesizer's answers, one per group of N.
    first = score_problem("1", ["1", "2", "2", "2"], 2).with_metric("a2r@2", 1.0)
    second = score_problem("2", ["2", None, "2", "2"], 2).with_metric("a2r@2", 0.5)
    summary = aggregate([first, second])
    assert summary.metrics == pytest.approx(
        {"pass@1": (25 + 75) / 2, "cons@2": (50 + 100) / 2, "pass@2": (50 + 100) / 2, "a2r@2": 75.0}
    )
    assert summary.as_dict()["problems"] == 2
    assert (summary.samples, summary.no_answer) == (8, 1)
    assert list(summary.as_dict()) == [
        "pass@1",
        "cons@2",
        "pass@2",
        "a2r@2",
        "problems",
        "samples",
        "no_answer",
    ]


def test_aggregate_rejects_mismatched_metrics_and_nothing():
    plain = score_problem("1", ["1", "2"], 2)
    with pytest.raises(ValueError, match="problem 1 has metrics"):
        aggregate([plain, plain.with_metric("a2r@2", 1.0)])
    with pytest.raises(ValueError, match="no problems"):
        aggregate([])


def test_with_metric_checks_its_input():
    plain = score_problem("1", ["1", "2"], 2)
    with pytest.raises(ValueError, match="already set"):
        plain.with_metric("pass@1", 1.0)
    with pytest.raises(ValueError, match="fraction"):
        plain.with_metric("a2r@2", 50.0)
