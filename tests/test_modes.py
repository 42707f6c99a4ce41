"""How the modes' records are read (benchmarks.modes): the hand-off wait of a freed slot. Pure: no engine."""

from __future__ import annotations

import pytest

from benchmarks.modes import handoff_s


def test_handoff_is_the_wait_of_a_freed_slot():
    # Two slots: problems 0 and 1 start at once; 2 starts 0.1 s after 1 ends, 3 starts 0.3 s after 0 ends.
    timings = [
        {"explore_started_at": 0.0, "explored_at": 5.0},
        {"explore_started_at": 0.0, "explored_at": 3.0},
        {"explore_started_at": 3.1, "explored_at": 8.0},
        {"explore_started_at": 5.3, "explored_at": 9.0},
    ]
    assert handoff_s(timings, slots=2) == pytest.approx(0.2)  # the median of 0.1 and 0.3
    assert handoff_s(timings[:2], slots=2) == 0.0  # nothing waited for a slot
