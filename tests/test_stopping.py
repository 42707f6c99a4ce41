"""Adaptive exploration on hand-built and random cases: stop policies, their replay, confidence and the
confident-path filter. Pure: no engine."""

import random
import re
from collections.abc import Sequence

import pytest

from programs.core.confidence import (
    lowest_group_confidence,
    path_confidence,
    token_confidences,
    window_for,
)
from programs.core.grading import is_equivalent
from programs.core.metrics import answer_groups, majority_vote
from programs.core.stopping import Replayed, Seen, StopPolicy, finish_order, most_confident, replay

# Mostly plain digits (compared in-process); one equivalent pair and two kinds of no-answer.
ALPHABET: list[str | None] = ["1", "2", "3", "0.5", "1/2", None, ""]
CASES = 3000


@pytest.mark.parametrize(
    ("spec", "policy"),
    [
        ("majority", StopPolicy("majority")),
        ("agree:3", StopPolicy("agree", 3)),
        ("first:2", StopPolicy("first", 2)),
    ],
)
def test_parse_accepts_and_round_trips(spec: str, policy: StopPolicy) -> None:
    assert StopPolicy.parse(spec) == policy
    assert str(policy) == spec


@pytest.mark.parametrize("spec", ["majority:2", "agree", "agree:0", "first:x", "vote", "first:-1", ""])
def test_parse_rejects_with_the_bad_spec_named(spec: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(spec))):
        StopPolicy.parse(spec)


@pytest.mark.parametrize("spec", ["agree:3", "first:3", "first:4"])
def test_check_refuses_a_count_that_never_stops(spec: str) -> None:
    with pytest.raises(ValueError, match="N=3"):
        StopPolicy.parse(spec).check(3)


@pytest.mark.parametrize("spec", ["majority", "agree:2", "first:2"])
def test_check_accepts_a_count_below_n(spec: str) -> None:
    StopPolicy.parse(spec).check(3)


def test_alphabet_has_an_equivalent_pair() -> None:
    """The property below must see equivalent spellings, not only identical strings."""
    assert is_equivalent("0.5", "1/2")
    assert len(answer_groups(ALPHABET)) == 4


def finals(answers: Sequence[str | None]) -> list[Seen]:
    """Paths 0, 1, ... ending in that order with `answers`."""
    return [Seen(i, 10 * (i + 1), answer, final=True) for i, answer in enumerate(answers)]


class _GreedyMajority(StopPolicy):
    """`majority` one vote too eager: it also stops when the running paths could still force a tie."""

    def settled(self, seen: Sequence[Seen], n: int) -> bool:
        tally = self.tally(seen)
        first, second = tally.top_two()
        return first >= second + (n - tally.decided)


def _same_answer(vote: str | None, other: str | None) -> bool:
    """Votes are compared as graded: the winning group's first-seen spelling may differ ("1/2" or "0.5")."""
    if vote is None or other is None:
        return vote is other
    return is_equivalent(vote, other)


def _majority_property(policy: StopPolicy, seed: int = 0) -> tuple[int, int]:
    """Over random cases: how many change the self-consistency answer, and how many stop a path."""
    rng = random.Random(seed)
    changed = stopped = 0
    for _ in range(CASES):
        n = rng.randint(1, 9)
        favourite, bias = rng.choice(ALPHABET), rng.random()  # skewed votes, so majorities form often
        answers = [favourite if rng.random() < bias else rng.choice(ALPHABET) for _ in range(n)]
        lengths = [rng.randint(1, 100) for _ in range(n)]
        result = replay(policy, answers, lengths, order=rng.sample(range(n), n))
        kept_answers = [answers[i] for i in range(n) if result.kept[i]]
        changed += not _same_answer(majority_vote(answers), majority_vote(kept_answers))
        stopped += not all(result.kept)
    return changed, stopped


def test_majority_stop_never_changes_the_vote() -> None:
    changed, stopped = _majority_property(StopPolicy.parse("majority"))
    assert changed == 0
    assert stopped > CASES // 5  # the property was exercised, not vacuously true


def test_majority_property_catches_a_greedier_rule() -> None:
    changed, _ = _majority_property(_GreedyMajority("majority"))
    assert changed > 0


def test_majority_waits_while_a_tie_is_possible() -> None:
    majority = StopPolicy.parse("majority")
    assert not majority.settled(finals(["7", "7", None]), 5)  # 2 > 0 + 2 fails
    assert majority.settled(finals(["7", "7", "7"]), 5)
    assert not majority.settled(
        finals(["7"]), 2
    )  # the other path could tie, and a tie goes to the path index


def _kept_count(policy: StopPolicy, answers: Sequence[str | None]) -> int:
    """How many paths finished before the stop, finishing in index order."""
    return sum(replay(policy, answers, list(range(1, len(answers) + 1))).kept)


@pytest.mark.parametrize(
    ("spec", "answers", "kept"),
    [
        ("agree:2", ["1", "2", "3", "2", "1", "1"], 4),
        ("agree:2", ["0.5", "2", "1/2", "2", "1"], 3),  # equivalent spellings agree
        ("agree:3", ["1", None, "1", "", "2", "1", "1"], 6),  # no-answers never agree
        ("agree:2", ["1", "2", "3", None, "4"], 5),  # never fires
    ],
)
def test_agree_stops_once_k_finished_answers_agree(spec: str, answers: list[str | None], kept: int) -> None:
    assert _kept_count(StopPolicy.parse(spec), answers) == kept


def stops(result: Replayed) -> tuple[list[bool], list[int], int | None]:
    return result.kept, result.spent, result.stop_after


def test_first_keeps_the_first_m_in_finish_order() -> None:
    result = replay(StopPolicy.parse("first:2"), ["1"] * 4, [10, 20, 30, 40], order=[3, 0, 1, 2])
    assert stops(result) == ([True, False, False, True], [10, 10, 10, 40], 10)


def test_a_stopped_path_shorter_than_the_stop_spends_its_length() -> None:
    result = replay(StopPolicy.parse("first:2"), ["1"] * 3, [50, 5, 30], order=[0, 2, 1])
    assert stops(result) == ([True, False, True], [50, 5, 30], 30)


def test_finish_order_is_by_length_then_index() -> None:
    assert finish_order([3, 1, 3, 2, 1]) == [1, 4, 3, 0, 2]


def test_replay_defaults_to_finish_order() -> None:
    result = replay(StopPolicy.parse("first:2"), ["1"] * 5, [3, 1, 3, 2, 1])
    assert stops(result) == ([False, True, False, False, True], [1, 1, 1, 1, 1], 1)


def test_no_policy_keeps_everything() -> None:
    assert stops(replay(None, ["1"] * 4, [4, 3, 2, 1])) == ([True] * 4, [4, 3, 2, 1], None)


def test_most_confident_keeps_the_top_fraction_rounded_up() -> None:
    assert most_confident([0.5, 2.0, 1.0, 3.0, 0.1], [True] * 5, 0.5) == [False, True, True, True, False]


def test_most_confident_keeps_at_least_one() -> None:
    assert most_confident([0.5, 2.0, 1.0], [True] * 3, 0.01) == [False, True, False]


def test_most_confident_ties_go_to_the_earlier_path() -> None:
    assert most_confident([1.0, 2.0, 2.0, 2.0], [True] * 4, 0.5) == [False, True, True, False]


def test_most_confident_never_resurrects_a_dropped_path() -> None:
    kept = [True, False, True, True]
    assert most_confident([1.0, 9.0, 2.0, 3.0], kept, 1.0) == kept
    assert most_confident([1.0, 9.0, 2.0, 3.0], kept, 0.5) == [False, False, True, True]
    assert most_confident([1.0, None, 2.0, 3.0], kept, 0.3) == [False, False, False, True]
    assert most_confident([1.0, 2.0], [False, False], 0.5) == [False, False]


def test_most_confident_needs_log_probabilities_of_kept_paths() -> None:
    with pytest.raises(ValueError, match="log-probabilities"):
        most_confident([1.0, None, 2.0], [True, True, True], 0.5)


@pytest.mark.parametrize("fraction", [0.0, 1.5, -0.5])
def test_most_confident_rejects_a_fraction_outside_zero_one(fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        most_confident([1.0], [True], fraction)


def test_token_confidence_is_the_negated_mean_top_logprob() -> None:
    top = [[[-1.0, 5, None], [-3.0, 7, None]], None, [[-0.5, 1, None]]]
    assert token_confidences(top) == pytest.approx(
        [2.0, 0.5]
    )  # a position without log-probabilities is skipped


@pytest.mark.parametrize("start", [0, 4, 7])
def test_lowest_group_confidence_finds_the_worst_window(start: int) -> None:
    confidences = [2.0] * 10
    confidences[start : start + 3] = [0.5, 0.5, 0.5]
    assert lowest_group_confidence(confidences, 3) == pytest.approx(0.5)
    assert lowest_group_confidence(confidences, 3) < lowest_group_confidence([2.0] * 10, 3)


def test_a_path_shorter_than_the_window_is_one_group() -> None:
    assert lowest_group_confidence([1.0, 2.0, 6.0], 8) == pytest.approx(3.0)


def test_an_empty_path_scores_zero() -> None:
    assert lowest_group_confidence([], 8) == 0.0


def test_window_keeps_a_share_of_the_budget_with_a_floor() -> None:
    assert window_for(32768) == 2048
    assert window_for(16) == 8


def test_path_confidence_reads_the_meta_info() -> None:
    top = [[[-2.0, 1, None]]] * 4 + [[[-0.5, 1, None]]] * 8
    assert path_confidence({"output_top_logprobs": top}, 128) == pytest.approx(0.5)  # window 8
    assert path_confidence({"output_tokens": 12}, 128) is None
