"""The one streaming two-stage executor: explorations in one bounded pool, syntheses in another.

An item's syntheses start the moment its own exploration ends, while later items are still being explored;
neither stage waits for the whole batch. The A2R pipeline (one synthesis per problem, or none), the accuracy
protocol (one synthesis per N, some explorations already on disk) and the server (requests arriving one by
one) all schedule their work here, so stage timings are taken in one place too. `submit` takes one item
through both stages, for callers that never see the end (the server); `run` drives a stream of items to the
end through `submit`.
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
Exploration = TypeVar("Exploration")
Synthesis = TypeVar("Synthesis")


@dataclass
class Job(Generic[Item]):
    """One item on its way through the stages; `clock` holds its stage marks (seconds since the executor
    opened)."""

    item: Item
    clock: dict[str, float]
    explored: Any = None
    results: list[Any] = field(default_factory=list)
    left: int = 0  # syntheses not yet reported
    failed: bool = False  # an error was reported for it


# What `submit` reports to its caller's `notify`, from the worker threads. A job reports `Explored` before
# any of its syntheses, and ends with exactly one `Finished` or `Dropped`, after all else it reports.


@dataclass(frozen=True)
class Explored:
    job: Job
    seconds: float


@dataclass(frozen=True)
class Synthesized:
    job: Job
    index: int  # of the syntheses asked for
    result: Any
    seconds: float


@dataclass(frozen=True)
class Failed:
    """An error in either stage. `first` marks the job's first, so a caller failing the item does it once
    while the item's other syntheses run on; a later error still counts for a caller that stops on it."""

    job: Job
    error: Exception
    first: bool


@dataclass(frozen=True)
class Finished:
    """Every synthesis succeeded (or none was asked for); `job.results` holds them in the order asked."""

    job: Job
    timings: dict[str, float]  # `stage_timings`


@dataclass(frozen=True)
class Dropped:
    """An error ended the job; its `Failed` came first."""

    job: Job


Event = Explored | Synthesized | Failed | Finished | Dropped
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

    def submit(
        self,
        item: Item,
        explore: Callable[[Item], Exploration],
        syntheses: Callable[[Item, Exploration], Sequence[Callable[[], Synthesis]]],
        notify: Notify,
    ) -> Job[Item]:
        """Queue `item`'s exploration (at most `explore_slots` run at once), then, the moment it ends, the
        syntheses `syntheses(item, exploration)` asks for (at most `synthesize_slots` at once, all jobs
        together). `notify` hears every step from the worker threads, so it must not block them."""
        job = Job(item, {"queued_at": self.now()})

        def explore_job() -> None:
            job.clock["explore_started_at"] = self.now()
            try:
                job.explored = explore(item)
                calls = syntheses(item, job.explored)
            except Exception as exc:  # noqa: BLE001  # the caller decides what an error means
                job.failed = True
                notify(Failed(job, exc, first=True))
                notify(Dropped(job))
                return
            job.clock["explored_at"] = self.now()
            notify(Explored(job, job.clock["explored_at"] - job.clock["explore_started_at"]))
            self._synthesize(job, calls, notify)

        self._explore_pool.submit(explore_job)
        return job

    def _synthesize(self, job: Job, calls: Sequence[Callable[[], Synthesis]], notify: Notify) -> None:
        job.results, job.left = [None] * len(calls), len(calls)
        if not calls:
            notify(Finished(job, stage_timings(job.clock, self.now())))

        def synthesize(index: int, call: Callable[[], Synthesis]) -> None:
            started = self.now()
            with self._lock:
                job.clock.setdefault("synthesis_started_at", started)
            try:
                result = call()
            except Exception as exc:  # noqa: BLE001
                with self._lock:
                    first, job.failed = not job.failed, True
                notify(Failed(job, exc, first))
            else:
                with self._lock:
                    job.results[index] = result
                    job.clock["synthesized_at"] = max(self.now(), job.clock.get("synthesized_at", 0.0))
                notify(Synthesized(job, index, result, self.now() - started))
            # Counted once reported, so the job's end follows every synthesis's own report; under the lock,
            # so exactly one thread sees the count reach 0 and ends the job.
            with self._lock:
                job.left -= 1
                last, failed = job.left == 0, job.failed
            if last:
                notify(Dropped(job) if failed else Finished(job, stage_timings(job.clock, self.now())))

        for index, call in enumerate(calls):
            self._synthesize_pool.submit(synthesize, index, call)

    def run(
        self,
        items: Iterable[Item],
        explore: Callable[[Item], Exploration],
        syntheses: Callable[[Item, Exploration], Sequence[Callable[[], Synthesis]]],
        on_explored: Callable[[Item, Exploration, float], None] | None = None,
        on_synthesized: Callable[[Item, Synthesis, float], None] | None = None,
        on_finished: Callable[[Item, Exploration, list[Synthesis], dict[str, float]], None] | None = None,
        on_failed: Callable[[Item, Exploration | None, Exception], None] | None = None,
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
                self.submit(item, explore, syntheses, events.put)
                open_jobs += 1

        try:
            for _ in range(self.explore_slots):
                explore_next()
            while open_jobs:
                match events.get():
                    case Explored(job, seconds):
                        explore_next()
                        if on_explored:
                            on_explored(job.item, job.explored, seconds)
                    case Synthesized(job, _, result, seconds):
                        if on_synthesized:
                            on_synthesized(job.item, result, seconds)
                    case Failed(job, error, first):
                        if not (isinstance(error, item_errors) and on_failed):
                            raise error
                        if "explored_at" not in job.clock:  # its exploration failed: the slot is free
                            explore_next()
                        if first:  # reported once; its other syntheses still run
                            on_failed(job.item, job.explored, error)
                    case Finished(job, timings):
                        open_jobs -= 1
                        if on_finished:
                            on_finished(job.item, job.explored, job.results, timings)
                    case Dropped():
                        open_jobs -= 1
        finally:
            self.close()
