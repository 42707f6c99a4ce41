"""A2R over a stream of problems: explore N paths (fork/join), synthesize over their answer parts, record.

Each problem's synthesis (or its M syntheses, or its RSA rounds: `Pipeline.answer`) starts the moment its own
N paths are done, while later problems are still being explored (`programs.executor`). The explorer keeps as many problems in flight as its KV pool (the size the
engine reports) holds at the expected path length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from engine.endpoint import synthesis_ids
from engine.gateway import WorkerLost
from programs.chunked import Chunking
from programs.core.config import RunConfig
from programs.core.metrics import answer_groups
from programs.core.records import PathRecord, Problem, ProblemRecord, SynthesisRecord
from programs.core.stopping import most_confident
from programs.engine_handle import MAX_IN_FLIGHT, EngineHandle, UnservableProblem
from programs.executor import TwoStageExecutor
from programs.explorer import run_explorer
from programs.rsa import run_rounds
from programs.synthesizer import run_syntheses, run_synthesizer

EXPECTED_LENGTH_SHARE = 0.6  # paths average ~0.57 of a 32k budget in the paper's Table 4


def stage_slots(
    config: RunConfig,
    explorer: EngineHandle,
    synthesizer: EngineHandle | None,
    max_in_flight: int | None = None,
) -> tuple[int, int]:
    """Problems explored and synthesized at once: what each engine's KV pool holds at the expected length (a
    problem's synthesis stage holds `synthesis_width` requests at once)."""
    expected = math.ceil(config.n * EXPECTED_LENGTH_SHARE * config.explorer.max_tokens)
    explore = min(explorer.in_flight(expected), max_in_flight or MAX_IN_FLIGHT)
    if synthesizer is None:
        return explore, 1
    return explore, synthesizer.in_flight(config.synthesis_width * config.synthesizer.max_tokens)


class Pipeline:
    """The two A2R stages on their engines; `synthesizer` None explores and votes only (self-consistency)."""

    def __init__(self, config: RunConfig, explorer: EngineHandle, synthesizer: EngineHandle | None) -> None:
        if config.synthesize and synthesizer is None:
            raise ValueError("config.synthesize is set but no synthesizer engine was given")
        self.config, self.explorer, self.synthesizer = config, explorer, synthesizer

    def explore(self, problem: Problem, first_path: int = 0, batch: str | None = None) -> list[PathRecord]:
        """N paths of `problem`; path i is seeded as the problem's path `first_path + i`, and its engine
        request is path i of `batch` (`engine.endpoint.request_ids`)."""
        cfg = self.config
        prompt = self.explorer.prompt(
            problem.conversation or problem.problem,
            cfg.explorer.max_tokens,
            cfg.thinking,
            f"problem {problem.id}",
        )
        seeds = [cfg.path_seed(problem.id, first_path + i) for i in range(cfg.n)]
        confident = cfg.keep_confident is not None
        backend = self.explorer.backend
        chunking = Chunking(cfg.probe_every, cfg.force_answer, cfg.probe)
        try:
            paths = run_explorer(
                backend,
                prompt,
                cfg.explorer,
                seeds,
                policy=cfg.stop_policy,
                confidence=confident,
                online=cfg.online_stop,
                batch=batch,
                chunking=chunking,
            )
        except RuntimeError as exc:
            raise backend.lost(exc) from exc
        if not confident:
            return paths
        keep = most_confident([p.confidence for p in paths], [p.kept for p in paths], cfg.keep_confident)
        return [replace(p, kept=k) for p, k in zip(paths, keep, strict=True)]

    def synthesize(
        self,
        problem: Problem,
        paths: list[PathRecord],
        seed: int | None = None,
        batch: str | None = None,
        on_text: Callable[[str], None] | None = None,
        stop: tuple[str, ...] = (),
    ) -> SynthesisRecord:
        """The synthesis over the kept paths' answer parts; seeded by default as the problem's path N, its
        engine request the synthesis of `batch`, its text streamed to `on_text` as it is decoded and ended
        early at any of the `stop` strings.

        With `skip_synthesis_if_unanimous`, kept paths that all give one answer return it unsynthesized: a
        record with no prompt, no tokens and the finish reason `unanimous`."""
        assert self.synthesizer is not None
        cfg = self.config
        kept = [i for i, p in enumerate(paths) if p.kept]
        if unanimous := self.unanimous(paths):
            return unanimous
        seed = cfg.path_seed(problem.id, cfg.n) if seed is None else seed
        parts = [paths[i].answer_part for i in kept]
        rid = synthesis_ids(1, batch)[0] if batch else None
        with self.synthesizer_lost():
            record = run_synthesizer(
                self.synthesizer, problem.problem, parts, cfg, seed=seed, rid=rid, on_text=on_text, stop=stop
            )
        return replace(record, reference_order=[kept[j] for j in record.reference_order])

    def answer(
        self,
        problem: Problem,
        paths: list[PathRecord],
        batch: str | None = None,
        on_text: Callable[[str], None] | None = None,
        stop: tuple[str, ...] = (),
    ) -> list[SynthesisRecord]:
        """Every synthesizer call the run's method makes over `paths`, for `ProblemRecord.build` to vote
        over: A2R's one synthesis (streamed to `on_text` if given, as `synthesize` does), or its `syntheses`
        forked from one prompt (seeded as the problem's paths N to N + M - 1, their engine requests the
        syntheses of `batch`, ended at any of the `stop` strings), or RSA's rounds (`programs.rsa`)."""
        assert self.synthesizer is not None
        cfg = self.config
        if cfg.method == "rsa":  # every path is kept: RunConfig refuses what would drop one
            with self.synthesizer_lost():
                return run_rounds(self.synthesizer, problem, [p.answer_part for p in paths], cfg)
        if cfg.syntheses == 1:
            return [self.synthesize(problem, paths, batch=batch, on_text=on_text, stop=stop)]
        if unanimous := self.unanimous(paths):
            return [unanimous]
        kept = [i for i, p in enumerate(paths) if p.kept]
        seeds = [cfg.path_seed(problem.id, cfg.n + m) for m in range(cfg.syntheses)]
        parts = [paths[i].answer_part for i in kept]
        rids = synthesis_ids(cfg.syntheses, batch) if batch else None
        with self.synthesizer_lost():
            samples = run_syntheses(
                self.synthesizer, problem.problem, parts, cfg, seeds, rids=rids, stop=stop
            )
        return [replace(s, reference_order=[kept[j] for j in s.reference_order]) for s in samples]

    def unanimous(self, paths: list[PathRecord]) -> SynthesisRecord | None:
        """With `skip_synthesis_if_unanimous`, the answer every kept path gave, as a synthesis not made."""
        kept = [i for i, p in enumerate(paths) if p.kept]
        votes = answer_groups([paths[i].answer for i in kept])
        if self.config.skip_synthesis_if_unanimous and len(votes) == 1 and len(votes[0]) == len(kept):
            return SynthesisRecord.unanimous(votes[0][0], kept)
        return None

    @contextmanager
    def synthesizer_lost(self) -> Iterator[None]:
        """A synthesizer request's failure, as the backend names it (a worker lost behind a gateway fails
        its problem alone)."""
        assert self.synthesizer is not None
        try:
            yield
        except RuntimeError as exc:
            raise self.synthesizer.backend.lost(exc) from exc

    def run(
        self,
        problems: Iterable[Problem],
        on_record: Callable[[ProblemRecord], None],
        max_in_flight: int | None = None,
        *,
        slots: tuple[int, int] | None = None,
    ) -> None:
        """Solve every problem, handing each finished record to `on_record` as soon as it is done.

        `max_in_flight` caps the problems explored at once below what the KV pool would allow; `slots` fixes
        the problems explored and synthesized at once instead of asking the engines (`stage_slots`). A problem
        the engine cannot take, or whose worker behind a gateway died, fails alone: its record carries the
        `error` (`--retry-failed` solves it again). Any other engine error ends the run: records already handed
        over stay, unfinished problems are redone by the next run.
        """
        config = self.config.to_dict()

        def syntheses(problem: Problem, paths: list[PathRecord]) -> list[Callable[[], SynthesisRecord]]:
            return [lambda: self.answer(problem, paths)] if self.config.synthesize else []

        def finished(
            problem: Problem, paths: list[PathRecord], done: list, timings: dict[str, float]
        ) -> None:
            on_record(ProblemRecord.build(problem, config, paths, done[0] if done else None, timings))

        def failed(problem: Problem, paths: list[PathRecord] | None, error: Exception) -> None:
            stage = "synthesis" if paths is not None else "exploration"
            on_record(ProblemRecord.build(problem, config, paths or [], None, {}, error=f"{stage}: {error}"))

        slots = slots or stage_slots(self.config, self.explorer, self.synthesizer, max_in_flight)
        TwoStageExecutor(*slots).run(
            problems,
            self.explore,
            syntheses,
            on_finished=finished,
            on_failed=failed,
            item_errors=(UnservableProblem, WorkerLost),
        )
