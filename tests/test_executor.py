"""The two-stage executor's scheduling with plain functions for stages: which errors end what, slots, each
job's single end, and the order its caller hears things in. Engines are exercised in test_pipeline and
test_serve; nothing here starts one."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from programs.executor import Dropped, Event, Explored, Failed, Finished, Synthesized, TwoStageExecutor

WAIT_S = 10.0  # bounds every wait here, so a broken executor fails a test instead of hanging it


class ItemError(Exception):
    """Stands for an error that fails one item alone (`UnservableProblem` in the pipeline)."""


def answer(item: str) -> str:
    if item.startswith("bad-synthesis"):
        raise ItemError(item)
    return f"{item}:answer"


def explore(item: str) -> str:
    if item.startswith("bad-exploration"):
        raise ItemError(item)
    return f"{item}:paths"


def one_synthesis(item: str, paths: str) -> list[Callable[[], str]]:
    return [lambda: answer(item)]


class Calls:
    """`run`'s callbacks, recorded in the order they came, with the thread each came in."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []
        self.threads: set[threading.Thread] = set()

    def _record(self, *call: object) -> None:
        self.seen.append(call)
        self.threads.add(threading.current_thread())

    def callbacks(self) -> dict[str, Callable]:
        return {
            "on_explored": lambda item, paths, seconds: self._record("explored", item, paths),
            "on_synthesized": lambda item, result, seconds: self._record("synthesized", item, result),
            "on_finished": lambda item, paths, results, timings: self._record("finished", item, results),
            "on_failed": lambda item, paths, error: self._record("failed", item, paths, str(error)),
        }

    def of(self, kind: str) -> list[tuple]:
        return [call[1:] for call in self.seen if call[0] == kind]


def ended(executor: TwoStageExecutor, events: list[Event]) -> list[Event]:
    """Every event `submit` reports, once its worker threads are done (the test's own join: the executor
    never waits for its threads)."""
    for pool in (executor._explore_pool, executor._synthesize_pool):
        pool.shutdown(wait=True)
    return events


def test_an_item_error_in_either_stage_fails_that_item_alone():
    def syntheses(item: str, paths: str) -> list[Callable[[], str]]:
        # "bad-synthesis-half": one synthesis fails, the other succeeds; the item still fails, once.
        other = (lambda: "half:answer") if item == "bad-synthesis-half" else (lambda: answer(item))
        return [lambda: answer(item), other]

    calls = Calls()
    items = ["a", "bad-exploration", "bad-synthesis", "bad-synthesis-half", "b"]
    TwoStageExecutor(2, 2).run(items, explore, syntheses, **calls.callbacks(), item_errors=(ItemError,))

    assert sorted(calls.of("finished")) == [("a", ["a:answer"] * 2), ("b", ["b:answer"] * 2)]
    assert sorted(calls.of("failed")) == [
        ("bad-exploration", None, "bad-exploration"),
        ("bad-synthesis", "bad-synthesis:paths", "bad-synthesis"),
        ("bad-synthesis-half", "bad-synthesis-half:paths", "bad-synthesis-half"),
    ]
    assert ("bad-synthesis-half", "half:answer") in calls.of("synthesized")


@pytest.mark.parametrize("stage", ["exploration", "synthesis"])
def test_a_fatal_error_ends_the_run_and_keeps_earlier_callbacks(stage: str):
    a_finished = threading.Event()
    calls = Calls()
    callbacks = calls.callbacks()
    on_finished = callbacks["on_finished"]

    def finished(item: str, *rest: object) -> None:
        on_finished(item, *rest)
        a_finished.set()

    def fail_after_a(item: str) -> None:
        if item == "b":
            assert a_finished.wait(WAIT_S)
            raise RuntimeError("the engine died")

    def explore_b(item: str) -> str:
        if stage == "exploration":
            fail_after_a(item)
        return explore(item)

    def syntheses(item: str, paths: str) -> list[Callable[[], str]]:
        def synthesize() -> str:
            if stage == "synthesis":
                fail_after_a(item)
            return answer(item)

        return [synthesize]

    with pytest.raises(RuntimeError, match="the engine died"):
        TwoStageExecutor(1, 1).run(
            ["a", "b", "c"],
            explore_b,
            syntheses,
            **{**callbacks, "on_finished": finished},
            item_errors=(ItemError,),
        )

    a = [("explored", "a", "a:paths"), ("synthesized", "a", "a:answer"), ("finished", "a", ["a:answer"])]
    assert [call for call in calls.seen if call[1] == "a"] == a
    assert not calls.of("failed") and ("finished", "b", ["b:answer"]) not in calls.seen


def test_a_failed_exploration_frees_its_slot():
    calls = Calls()
    items = ["bad-exploration-1", "a", "bad-exploration-2", "b"]
    TwoStageExecutor(1, 1).run(items, explore, one_synthesis, **calls.callbacks(), item_errors=(ItemError,))

    assert [item for item, _ in calls.of("finished")] == ["a", "b"]
    assert [item for item, *_ in calls.of("failed")] == ["bad-exploration-1", "bad-exploration-2"]


def concurrent_syntheses(size: int, failing: int) -> list[Event]:
    """What `submit` reports of a job whose `size` syntheses all return at the same moment, the first
    `failing` of them with an error."""
    executor = TwoStageExecutor(1, size)
    together = threading.Barrier(size, timeout=WAIT_S)

    def synthesis(index: int) -> int:
        together.wait()
        if index < failing:
            raise ItemError(index)
        return index

    events: list[Event] = []

    def slow_report(event: Event) -> None:
        time.sleep(0.001)  # as the server's report, which builds a record: the other threads run meanwhile
        events.append(event)

    calls = [lambda i=i: synthesis(i) for i in range(size)]
    executor.submit("a", explore, lambda item, paths: calls, slow_report)
    return ended(executor, events)


@pytest.mark.parametrize("failing", [0, 1, 4, 8])
def test_finished_or_dropped_comes_exactly_once_under_concurrent_syntheses(failing: int):
    size = 8
    for _ in range(20):
        events = concurrent_syntheses(size, failing)

        ends = [e for e in events if isinstance(e, Finished | Dropped)]
        assert len(ends) == 1 and events[-1] is ends[0]
        assert isinstance(ends[0], Dropped if failing else Finished)
        assert sum(isinstance(e, Synthesized) for e in events) == size - failing
        failed = [e for e in events if isinstance(e, Failed)]
        assert len(failed) == failing and sum(e.first for e in failed) == min(failing, 1)


def test_callbacks_come_in_order_in_the_callers_thread():
    """Explored first, each synthesis as it ends (here the last asked ends first), then finished with the
    syntheses in the order asked."""
    size = 3
    done = [threading.Event() for _ in range(size + 1)]
    done[size].set()

    def syntheses(item: str, paths: str) -> list[Callable[[], str]]:
        def synthesis(index: int) -> str:
            assert done[index + 1].wait(WAIT_S)  # each waits for the one after it
            done[index].set()
            return f"{item}:{index}"

        return [lambda i=i: synthesis(i) for i in range(size)]

    calls = Calls()
    TwoStageExecutor(1, size).run(["a"], explore, syntheses, **calls.callbacks())

    assert calls.seen == [
        ("explored", "a", "a:paths"),
        *[("synthesized", "a", f"a:{i}") for i in reversed(range(size))],
        ("finished", "a", [f"a:{i}" for i in range(size)]),
    ]
    assert calls.threads == {threading.current_thread()}


def test_a_job_ends_only_after_every_synthesis_is_reported():
    """A synthesis slow to report (its notify still running) holds back the job's end, though the other
    synthesis ended later."""
    executor = TwoStageExecutor(1, 2)
    reporting, ended_early = threading.Event(), threading.Event()
    events: list[Event] = []

    def first() -> str:
        return "first"

    def second() -> str:
        assert reporting.wait(WAIT_S)  # ends while the first is being reported
        return "second"

    def notify(event: Event) -> None:
        if isinstance(event, Synthesized) and event.result == "first":
            reporting.set()
            ended_early.wait(0.5)  # long enough for the second to end the job, were that allowed
        if isinstance(event, Finished | Dropped):
            ended_early.set()
        events.append(event)

    executor.submit("a", explore, lambda item, paths: [first, second], notify)
    events = ended(executor, events)

    assert [type(e) for e in events] == [Explored, Synthesized, Synthesized, Finished]
