"""The one streaming two-stage executor: explorations in one bounded pool, syntheses in another.

An item's syntheses start the moment its own exploration ends, while later items are still being explored;
neither stage waits for the whole batch. The A2R pipeline (one synthesis per problem, or none), the accuracy
protocol (one synthesis per N, some explorations already on disk) and anything else that streams explore ->
synthesize schedule their work here, so stage timings are taken in one place too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Explored = TypeVar("Explored")
Synthesized = TypeVar("Synthesized")


@dataclass
class _Job(Generic[Item]):
    item: Item
    clock: dict[str, float]
    explored: Any = None
    results: list[Any] = field(default_factory=list)
    left: int = 0  # syntheses still running
    failed: bool = False  # an item error was reported for it


def stage_timings(clock: dict[str, float], finished_at: float) -> dict[str, float]:
    """A record's `timings`: its stage marks (seconds since the run began) and the stages' durations."""
    synthesize_s = clock.get("synthesized_at", 0.0) - clock.get("synthesis_started_at", 0.0)
    return {
        **clock,
        "finished_at": finished_at,
        "explore_s": clock["explored_at"] - clock["explore_started_at"],
        "synthesize_s": synthesize_s,
        "total_s": finished_at - clock["queued_at"],
    }


class TwoStageExecutor:
    def __init__(self, explore_slots: int, synthesize_slots: int) -> None:
        if explore_slots < 1 or synthesize_slots < 1:
            raise ValueError(f"slots must be at least 1, got {explore_slots} and {synthesize_slots}")
        self.explore_slots, self.synthesize_slots = explore_slots, synthesize_slots

    def run(
        self,
        items: Iterable[Item],
        explore: Callable[[Item], Explored],
        syntheses: Callable[[Item, Explored], Sequence[Callable[[], Synthesized]]],
        on_explored: Callable[[Item, Explored, float], None] | None = None,
        on_synthesized: Callable[[Item, Synthesized, float], None] | None = None,
        on_finished: Callable[[Item, Explored, list[Synthesized], dict[str, float]], None] | None = None,
        on_failed: Callable[[Item, Explored | None, Exception], None] | None = None,
        item_errors: tuple[type[Exception], ...] = (),
    ) -> None:
        """Explore every item, then run the syntheses `syntheses(item, explored)` asks for.

        Callbacks run in the caller's thread, in completion order: `on_explored` once an item is explored
        (with its seconds), `on_synthesized` with each synthesis and its seconds, `on_finished` with the
        item's syntheses (in the order asked) and its `stage_timings`. An error of one of the `item_errors`
        types fails that item alone: `on_failed` gets it (with the exploration, if it got that far) and the
        run goes on, the item's other syntheses left to finish or fail. Any other error ends the run and is
        raised; what the callbacks already received stays theirs. Requests still in flight are not waited
        for: stopping the engines ends them.
        """
        t0 = time.perf_counter()

        def now() -> float:
            return time.perf_counter() - t0

        def explore_timed(job: _Job) -> Explored:
            job.clock["explore_started_at"] = now()
            explored = explore(job.item)
            job.clock["explored_at"] = now()
            return explored

        def synthesize_timed(job: _Job, call: Callable[[], Synthesized]) -> tuple[Synthesized, float]:
            started = now()
            job.clock.setdefault("synthesis_started_at", started)
            result = call()
            job.clock["synthesized_at"] = max(now(), job.clock.get("synthesized_at", 0.0))
            return result, now() - started

        pending = iter(items)
        explore_pool = ThreadPoolExecutor(self.explore_slots, "explore")
        synthesize_pool = ThreadPoolExecutor(self.synthesize_slots, "synthesize")
        running: dict[Future, tuple[_Job, int | None]] = {}  # future -> its job, and its synthesis index

        def explore_next() -> None:
            item = next(pending, None)
            if item is not None:
                job = _Job(item, {"queued_at": now()})
                running[explore_pool.submit(explore_timed, job)] = (job, None)

        def finish(job: _Job) -> None:
            if on_finished:
                on_finished(job.item, job.explored, job.results, stage_timings(job.clock, now()))

        try:
            for _ in range(self.explore_slots):
                explore_next()
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    job, index = running.pop(future)
                    error = future.exception()
                    if error is not None and isinstance(error, item_errors) and on_failed:
                        if index is None:
                            explore_next()
                        else:
                            job.left -= 1
                        if not job.failed:  # reported once; its other syntheses still count
                            job.failed = True
                            on_failed(job.item, job.explored, error)
                        continue
                    if index is None:  # an exploration ended
                        explore_next()
                        job.explored = future.result()
                        if on_explored:
                            seconds = job.clock["explored_at"] - job.clock["explore_started_at"]
                            on_explored(job.item, job.explored, seconds)
                        calls = syntheses(job.item, job.explored)
                        job.results, job.left = [None] * len(calls), len(calls)
                        for i, call in enumerate(calls):
                            running[synthesize_pool.submit(synthesize_timed, job, call)] = (job, i)
                        if not calls:
                            finish(job)
                        continue
                    result, seconds = future.result()
                    job.results[index], job.left = result, job.left - 1
                    if on_synthesized:
                        on_synthesized(job.item, result, seconds)
                    if job.left == 0 and not job.failed:
                        finish(job)
        finally:
            for pool in (explore_pool, synthesize_pool):
                pool.shutdown(wait=not running, cancel_futures=True)
