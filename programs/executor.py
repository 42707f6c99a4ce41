"""The one streaming two-stage executor: explorations in one bounded pool, syntheses in another.

An item's syntheses start the moment its own exploration ends, while later items are still being explored;
neither stage waits for the whole batch. The A2R pipeline (one synthesis per problem, or none), the accuracy
protocol (one synthesis per N, some explorations already on disk) and the server (requests arriving one by
one) all schedule their work here, so stage timings are taken in one place too. `run` drives a stream of
items to the end; `explore` and `synthesize` take one item at a time, for callers that never see the end.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Explored = TypeVar("Explored")
Synthesized = TypeVar("Synthesized")


@dataclass
class Job(Generic[Item]):
    """One item on its way through the stages; `clock` holds its stage marks (seconds since the executor
    opened)."""

    item: Item
    clock: dict[str, float]
    explored: Any = None
    results: list[Any] = field(default_factory=list)
    left: int = 0  # syntheses still running
    failed: bool = False  # an item error was reported for it


# What the stages report, from their worker threads, to the `notify` a caller gave. Every job ends with
# exactly one of "finished" (all its syntheses done) or "dropped" (an error ended it):
#   ("explored", job, seconds)     ("synthesized", job, index, result, seconds)
#   ("failed", job, error, first)  first: the job's first error, from either stage
#   ("finished", job, timings)     ("dropped", job)
Event = tuple[Any, ...]
Notify = Callable[[Event], None]


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
        self._t0 = time.perf_counter()
        self._explore_pool = ThreadPoolExecutor(explore_slots, "explore")
        self._synthesize_pool = ThreadPoolExecutor(synthesize_slots, "synthesize")
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.perf_counter() - self._t0

    def close(self) -> None:
        """Drop queued work; requests in flight are not waited for (stopping the engines ends them)."""
        for pool in (self._explore_pool, self._synthesize_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    def explore(self, item: Item, explore: Callable[[Item], Explored], notify: Notify) -> Job[Item]:
        """Queue `item`'s exploration (at most `explore_slots` run at once); `notify` hears how it ended."""
        job = Job(item, {"queued_at": self.now()})

        def timed() -> None:
            job.clock["explore_started_at"] = self.now()
            try:
                job.explored = explore(item)
            except Exception as exc:  # noqa: BLE001  # the caller decides what an error means
                job.failed = True
                notify(("failed", job, exc, True))
                notify(("dropped", job))
                return
            job.clock["explored_at"] = self.now()
            notify(("explored", job, job.clock["explored_at"] - job.clock["explore_started_at"]))

        self._explore_pool.submit(timed)
        return job

    def synthesize(self, job: Job, calls: Sequence[Callable[[], Synthesized]], notify: Notify) -> None:
        """Queue an explored job's syntheses; each is reported as it ends, then the job."""
        job.results, job.left = [None] * len(calls), len(calls)
        if not calls:
            notify(("finished", job, stage_timings(job.clock, self.now())))

        def timed(index: int, call: Callable[[], Synthesized]) -> None:
            started = self.now()
            with self._lock:
                job.clock.setdefault("synthesis_started_at", started)
            try:
                result, error = call(), None
            except Exception as exc:  # noqa: BLE001
                result, error = None, exc
            with self._lock:  # one thread at a time settles the job, so it ends exactly once
                job.left -= 1
                first, last = error is not None and not job.failed, job.left == 0
                if error is None:
                    job.results[index] = result
                    job.clock["synthesized_at"] = max(self.now(), job.clock.get("synthesized_at", 0.0))
                else:
                    job.failed = True
                failed = job.failed
            if error is None:
                notify(("synthesized", job, index, result, self.now() - started))
            else:
                notify(("failed", job, error, first))
            if last:
                notify(
                    ("dropped", job) if failed else ("finished", job, stage_timings(job.clock, self.now()))
                )

        for index, call in enumerate(calls):
            self._synthesize_pool.submit(timed, index, call)

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
        """Explore every item, then run the syntheses `syntheses(item, explored)` asks for, then close.

        Items are taken from `items` only as exploration slots free up. Callbacks run in the caller's thread,
        in completion order: `on_explored` once an item is explored (with its seconds), `on_synthesized`
        with each synthesis and its seconds, `on_finished` with the item's syntheses (in the order asked) and
        its `stage_timings`. An error of one of the `item_errors` types fails that item alone: `on_failed`
        gets it (with the exploration, if it got that far) and the run goes on, the item's other syntheses
        left to finish or fail. Any other error ends the run and is raised; what the callbacks already
        received stays theirs.
        """
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        pending, open_jobs = iter(items), 0

        def explore_next() -> None:
            nonlocal open_jobs
            item = next(pending, None)
            if item is not None:
                self.explore(item, explore, events.put)
                open_jobs += 1

        try:
            for _ in range(self.explore_slots):
                explore_next()
            while open_jobs:
                kind, job, *rest = events.get()
                if kind == "failed":
                    error, first = rest
                    if not (isinstance(error, item_errors) and on_failed):
                        raise error
                    if "explored_at" not in job.clock:  # its exploration failed: the slot is free
                        explore_next()
                    if first:  # reported once; its other syntheses still run
                        on_failed(job.item, job.explored, error)
                elif kind == "explored":
                    explore_next()
                    if on_explored:
                        on_explored(job.item, job.explored, rest[0])
                    self.synthesize(job, syntheses(job.item, job.explored), events.put)
                elif kind == "synthesized":
                    if on_synthesized:
                        on_synthesized(job.item, rest[1], rest[2])
                elif kind == "finished":
                    open_jobs -= 1
                    if on_finished:
                        on_finished(job.item, job.explored, job.results, rest[0])
                else:  # dropped
                    open_jobs -= 1
        finally:
            self.close()
