"""A path's confidence as DeepConf (Fu et al., 2025) defines it, from the engine's top-k log-probabilities.

Token confidence is the negated mean of the top-k log-probabilities at a position: high when the model was
sure. A group is a sliding window of tokens, and a path scores its lowest group mean, so one stretch of
confusion marks the whole path. The paper slides 2,048 tokens over budgets of 32k-64k; the window here keeps
that proportion of the budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

TOP_K = 20  # log-probabilities asked for per generated token
WINDOW_SHARE = 16  # budget / window
STREAM_INTERVAL = 8  # tokens per streamed chunk on an explorer engine we launch for the online mode


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


@dataclass(frozen=True)
class OnlineStop:
    """DeepConf's online mode within one fork: the first `warmup` paths to finish set a threshold at the
    (1 - keep) quantile of their lowest group confidences, and a path still decoding stops as soon as its
    last `window` tokens fall below it. (DeepConf warms up on paths run before the rest; here all N run at
    once, so the warm-up paths are the first to finish, which are also the shortest.)"""

    keep: float  # DeepConf's eta: the share of warm-up-like paths the threshold would let through
    warmup: int
    window: int

    @classmethod
    def for_run(cls, keep: float, n: int, budget: int) -> OnlineStop:
        """Warm up on 1/8 of the paths, at least 2 (the paper warms up on 16); refuse what cannot stop any."""
        if not 0 < keep < 1:
            raise ValueError(f"--online-confidence must be a fraction in (0, 1), got {keep}")
        warmup = max(2, math.ceil(n / 8))
        if warmup >= n:
            raise ValueError(
                f"--online-confidence warms up on {warmup} paths, so it needs N > {warmup}, got {n}"
            )
        return cls(keep, warmup, window_for(budget))

    def threshold(self, warm: Sequence[float]) -> float:
        return float(np.quantile(warm, 1 - self.keep))
