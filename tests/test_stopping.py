"""Stop policies on hand-built and random cases: parsing, majority, agree and first, the policies that read
probes and launch waves (posterior, settled), their replay driver, and the confident-path filter. Pure: no
engine."""

import random
import re
from collections.abc import Sequence

import pytest

from programs.core.grading import is_equivalent
from programs.core.metrics import answer_groups, majority_vote
from programs.core.stopping import (
    STOP_FORMS,
    Replayed,
    Seen,
    StopPolicy,
    Tally,
    current_answers,
    finish_order,
    leader_stays,
    most_confident,
    replay,
)

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


def test_leader_stays_is_the_beta_probability_that_the_leader_is_ahead():
    assert leader_stays(0, 0) == 0.5
    assert leader_stays(2, 0) == 0.875  # P(Beta(3, 1) > 1/2) = 1 - 1/8
    assert leader_stays(3, 1) == pytest.approx(0.8125)
    assert leader_stays(5, 5) == 0.5


def test_posterior_stops_once_the_leader_is_likely_enough():
    finals = [Seen(i, 10, a, True) for i, a in enumerate(["7", "7", "8", "7", "7"])]
    loose, strict = StopPolicy.parse("posterior:0.25"), StopPolicy.parse("posterior:0.05")
    assert not loose.settled(finals[:1], 16)  # 1:0 is 0.75, not above 0.75
    assert loose.settled(finals[:2], 16)  # 2:0 is 0.875
    assert not strict.settled(finals[:4], 16)  # 3:1 is 0.81
    assert loose.settled(finals[:4], 16)
    assert not strict.settled(finals[:5], 16)  # 4:1 is 0.89
    assert strict.settled(finals[:5], 5)  # with N=5 no path is left to overtake the leader


def test_a_probe_counts_once_it_was_stable_and_an_unreadable_probe_changes_nothing():
    tally = Tally(str.__eq__, stable=2)
    for s in [Seen(0, 10, "7", False), Seen(0, 20, None, False)]:
        tally.add(s)
    assert tally.top_two() == (0, 0) and tally.decided == 0
    tally.add(Seen(0, 30, "7", False))
    assert tally.top_two() == (1, 0) and tally.decided == 1
    tally.add(Seen(0, 40, "9", False))  # changed its mind: its vote is withdrawn until "9" repeats
    assert tally.top_two() == (0, 0) and tally.decided == 0
    tally.add(Seen(0, 45, None, True))  # ended with no answer: decided, for nobody
    assert tally.top_two() == (0, 0) and tally.decided == 1


def test_the_vote_after_a_stop_takes_stopped_paths_last_probe_answers():
    seen = [
        Seen(0, 10, "3", False),
        Seen(1, 10, "4", False),
        Seen(1, 15, "5", True),
        Seen(0, 20, None, False),
    ]
    assert current_answers(seen) == {0: "3", 1: "5"}


def test_the_policy_reads_every_observation_when_the_caller_passes_another_list():
    policy = StopPolicy.parse("agree:2")
    seen = [Seen(0, 10, "1", True), Seen(1, 10, "2", True)]
    assert not policy.settled(seen, 4)
    seen[1] = Seen(1, 10, "1", True)  # the same list, changed in place: not taken for an extension
    assert policy.settled(seen, 4)
    assert not policy.settled([Seen(2, 10, "1", True)], 4)  # another list: read from its start


@pytest.mark.parametrize(
    "spec",
    [
        "settled:3",
        "posterior:1.5",
        "agree:3,wave=0",
        "first:2,eps=0.1",
        "majority,stable=x",
        "agree:2,stable=0",
        "agree:2,wave=4,wave=4",
        "posterior:nan",
        "majority:",
    ],
)
def test_a_policy_that_does_not_parse_names_the_accepted_forms(spec):
    with pytest.raises(ValueError, match="use majority, agree:K") as error:
        StopPolicy.parse(spec)
    assert repr(spec) in str(error.value) and STOP_FORMS in str(error.value)


@pytest.mark.parametrize(
    "spec",
    [
        "posterior",
        "posterior:0.1,probe=500,stable=3",
        "agree:3,wave=4",
        "settled",
        "settled:wave=8,eps=0.1",
        "majority:probe=1000",
    ],
)
def test_policies_round_trip(spec):
    assert str(StopPolicy.parse(spec)) == spec


def test_a_wave_of_n_or_more_launches_every_path_at_once():
    StopPolicy.parse("settled").check(2)  # the recommended policy works at any N
    result = replay(StopPolicy.parse("agree:2,wave=8"), ["1", "2", "1"], [10, 20, 30])
    assert (result.waves, result.spent, result.answer_at) == (1, [10, 20, 30], 30)


def test_a_wave_that_settles_launches_no_more():
    result = replay(StopPolicy.parse("agree:2,wave=2"), ["1"] * 4, [10, 20, 30, 40])
    assert (result.spent, result.waves, result.answer_at) == ([10, 20, 0, 0], 1, 20)
    assert result.votes == ["1", "1", None, None]


def test_an_unsettled_wave_launches_the_next_where_its_last_path_ended():
    result = replay(StopPolicy.parse("agree:2,wave=2"), ["1", "2", "1", "3"], [10, 20, 30, 40])
    # Wave 2 starts at 20: path 2 ends at 50 and settles it; path 3 has decoded 30 of its 40 tokens.
    assert (result.spent, result.waves, result.answer_at, result.stop_after) == ([10, 20, 30, 30], 2, 50, 50)
    assert result.kept == [True, True, True, False]


def test_a_probe_answer_is_known_when_its_path_reaches_its_token_count():
    probes = [[(10, "5"), (20, "5")], [(10, None), (20, "5")], [(10, "6")]]
    result = replay(StopPolicy.parse("agree:2,probe=10"), ["5", "5", "6"], [100, 90, 15], probes=probes)
    # At 10 only path 0 says 5; path 2 ends at 15 with 6; at 20 path 0's second 5 is one vote, path 1's 5 two.
    assert (result.stop_after, result.spent, result.probes) == (20, [20, 20, 15], 5)
    assert result.votes == ["5", "5", "6"]


def test_probes_every_other_interval_read_every_other_probe():
    probes = [[(10, "5"), (20, "5")], [(10, "5"), (20, "5")]]
    result = replay(StopPolicy.parse("agree:2,probe=20"), ["5", "5"], [100, 100], probes=probes)
    assert (result.stop_after, result.probes) == (20, 2)


def test_an_observed_order_replays_only_what_has_neither_waves_nor_probes():
    with pytest.raises(ValueError, match="observed finish order"):
        replay(StopPolicy.parse("agree:2,wave=2"), ["1"] * 4, [1, 2, 3, 4], order=[0, 1, 2, 3])
