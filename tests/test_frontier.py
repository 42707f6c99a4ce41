"""How `settled`'s defaults are chosen from the tuning grid (benchmarks.frontier's rule). Pure: no engine."""

from __future__ import annotations

from benchmarks.frontier import choose


def grid_row(wave: int, saved: float, change: float, time: float) -> dict:
    return {
        "wave": wave,
        "eps": 0.1,
        **{
            f"{k}@{n}": v
            for n in (16, 64)
            for k, v in (("saved", saved), ("cons_change", change), ("time", time))
        },
    }


def test_tuning_keeps_cons_within_a_point_then_takes_the_soonest_of_the_most_saving():
    grid = [
        grid_row(1, 90.0, -1.5, 100.0),  # saves most, but loses 1.5 points
        grid_row(2, 60.0, -0.5, 300.0),  # the largest feasible saving, but slow
        grid_row(3, 58.5, +1.0, 150.0),  # within 2 points of it and sooner: chosen
        grid_row(4, 50.0, 0.0, 90.0),  # soonest, but saves too little
    ]
    assert choose(grid)["wave"] == 3
    assert choose(grid[:1]) is None
