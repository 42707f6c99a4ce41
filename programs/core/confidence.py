"""A path's confidence as DeepConf (Fu et al., 2025) defines it, from the engine's top-k log-probabilities.

Token confidence is the negated mean of the top-k log-probabilities at a position: high when the model was
sure. A group is a sliding window of tokens, and a path scores its lowest group mean, so one stretch of
confusion marks the whole path. The paper slides 2,048 tokens over budgets of 32k-64k; the window here keeps
that proportion of the budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

TOP_K = 20  # log-probabilities asked for per generated token
WINDOW_SHARE = 16  # budget / window


def window_for(budget: int) -> int:
    return max(8, budget // WINDOW_SHARE)


def token_confidences(top_logprobs: Sequence[Sequence[Sequence[Any]] | None]) -> list[float]:
    """Per generated token, -mean of its top-k log-probabilities (SGLang's `output_top_logprobs` entries are
    [logprob, token id, text])."""
    return [-sum(entry[0] for entry in top) / len(top) for top in top_logprobs if top]


def lowest_group_confidence(confidences: Sequence[float], window: int) -> float:
    """The minimum over sliding windows of the mean token confidence; a path shorter than the window is one
    group, and an empty path scores 0 (the least confident).

    >>> lowest_group_confidence([3.0, 3.0, 0.0, 3.0, 3.0], 2)
    1.5
    """
    if not confidences:
        return 0.0
    width = min(window, len(confidences))
    total = sum(confidences[:width])
    lowest = total
    for i in range(width, len(confidences)):
        total += confidences[i] - confidences[i - width]
        lowest = min(lowest, total)
    return lowest / width


def path_confidence(meta: dict[str, Any], budget: int) -> float | None:
    """A path's lowest group confidence from its `meta_info`; None when log-probabilities were not asked for."""
    top = meta.get("output_top_logprobs")
    if top is None:
        return None
    return lowest_group_confidence(token_confidences(top), window_for(budget))
