"""Path confidence from the engine's top log-probabilities (the lowest group confidence), the window it is read
over, and what the online stop refuses. Pure: no engine."""

from __future__ import annotations

import pytest

from programs.core.confidence import (
    OnlineStop,
    lowest_group_confidence,
    path_confidence,
    token_confidences,
    window_for,
)


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


def test_online_stop_refuses_what_cannot_stop_a_path():
    with pytest.raises(ValueError, match="N > 2"):
        OnlineStop.for_run(0.9, 2, 512)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        OnlineStop.for_run(1.0, 8, 512)
