"""Problems stream through explore -> synthesize, each stage with its own bounded concurrency.

A problem's synthesis starts the moment its own N paths are done, while later problems are still being
explored; neither stage waits for the dataset. The explorer keeps as many problems in flight as its KV
pool (the size the engine reports) holds at the expected path length.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import Any

from transformers import AutoTokenizer

from engine.endpoint import SeededEndpoint, connect
from engine.launch import context_length, model_info, server_info
from engine.layout import Engines
from engine.spec import EngineSpec
from programs.core.config import RunConfig
from programs.core.grading import extract_answer, extract_boxed, is_equivalent
from programs.core.metrics import majority_vote
from programs.core.prompts import chat_prompt
from programs.datasets import Problem
from programs.explorer import ExplorerPath, run_explorer
from programs.synthesizer import Synthesis, run_synthesizer

EXPECTED_LENGTH_SHARE = 0.6  # paths average ~0.57 of a 32k budget in the paper's Table 4
MAX_IN_FLIGHT = 64  # frontend threads per problem are cheap, but not free


@dataclass
class Stage:
    """An engine as the pipeline uses it: a frontend backend, its tokenizer, and its reported limits."""

    backend: SeededEndpoint
    tokenizer: Any
    context_length: int
    kv_tokens: int | None  # the engine's KV pool; None when it does not say (e.g. behind a router)

    @classmethod
    def attach(cls, spec: EngineSpec) -> Stage:
        info = model_info(spec)
        try:
            server = server_info(spec)
        except OSError:
            server = {}
        tokenizer = AutoTokenizer.from_pretrained(info.get("tokenizer_path") or info["model_path"])
        return cls(connect(spec), tokenizer, context_length(spec), server.get("max_total_num_tokens"))

    @classmethod
    def attach_roles(cls, engines: Engines) -> tuple[Stage, Stage]:
        """(explorer, synthesizer) stages of running engines; one engine serving both roles is one stage."""
        explorer = cls.attach(engines.explorer)
        same = engines.synthesizer is engines.explorer
        return explorer, explorer if same else cls.attach(engines.synthesizer)

    def prompt(self, text: str, budget: int, thinking: bool, label: str) -> str:
        """`text` as a chat prompt, refused before sending if it and `budget` new tokens overflow the context."""
        prompt = chat_prompt(self.tokenizer, text, thinking)
        tokens = len(self.tokenizer.encode(prompt, add_special_tokens=False))
        if tokens + budget > self.context_length:
            raise ValueError(
                f"{label}: its prompt ({tokens} tokens) plus the budget ({budget}) exceed the context "
                f"({self.context_length})"
            )
        return prompt

    def in_flight(self, tokens_per_problem: int, fallback: int = 8) -> int:
        if not self.kv_tokens:
            return fallback
        return max(1, min(MAX_IN_FLIGHT, math.ceil(self.kv_tokens / tokens_per_problem)))


def grade(gold: str, answer: str | None) -> bool | None:
    """Correctness of one answer; None when the gold answer is unknown (a free-form --question)."""
    return is_equivalent(gold, answer) if gold else None


def path_record(path: ExplorerPath, gold: str) -> dict[str, Any]:
    answer = extract_boxed(path.answer_part)
    return {**asdict(path), "answer": answer, "correct": grade(gold, answer)}


def synthesis_record(synthesis: Synthesis, gold: str) -> dict[str, Any]:
    answer = extract_answer(synthesis.text)
    return {**asdict(synthesis), "answer": answer, "correct": grade(gold, answer)}


def problem_record(
    problem: Problem,
    config: RunConfig,
    paths: list[ExplorerPath],
    synthesis: Synthesis | None,
    timings: dict[str, float],
) -> dict[str, Any]:
    path_records = [path_record(p, problem.answer) for p in paths]
    voted = majority_vote([p["answer"] for p in path_records])
    return {
        "id": problem.id,
        "problem": problem.problem,
        "gold": problem.answer,
        "config": config.to_dict(),
        "paths": path_records,
        "self_consistency": {"answer": voted, "correct": grade(problem.answer, voted)},
        "synthesizer": synthesis_record(synthesis, problem.answer) if synthesis else None,
        "timings": timings,
    }


def stage_slots(
    config: RunConfig, explorer: Stage, synthesizer: Stage | None, max_in_flight: int | None = None
) -> tuple[int, int]:
    """Problems explored and synthesized at once: what each engine's KV pool holds at the expected length."""
    expected = math.ceil(config.n * EXPECTED_LENGTH_SHARE * config.explorer.max_tokens)
    explore = min(explorer.in_flight(expected), max_in_flight or MAX_IN_FLIGHT)
    return explore, synthesizer.in_flight(config.synthesizer.max_tokens) if synthesizer else 1


class Pipeline:
    def __init__(self, config: RunConfig, explorer: Stage, synthesizer: Stage | None) -> None:
        if config.synthesize and synthesizer is None:
            raise ValueError("config.synthesize is set but no synthesizer engine was given")
        self.config, self.explorer, self.synthesizer = config, explorer, synthesizer

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def explore(self, problem: Problem, clock: dict[str, float]) -> list[ExplorerPath]:
        cfg = self.config
        prompt = self.explorer.prompt(
            problem.problem, cfg.explorer.max_tokens, cfg.thinking, f"problem {problem.id}"
        )
        seeds = [cfg.path_seed(problem.id, i) for i in range(cfg.n)]
        clock["explore_started_at"] = self.now()
        paths = run_explorer(self.explorer.backend, prompt, cfg.explorer, seeds)
        clock["explored_at"] = self.now()
        return paths

    def synthesize(self, problem: Problem, paths: list[ExplorerPath], clock: dict[str, float]) -> Synthesis:
        assert self.synthesizer is not None
        cfg = self.config
        clock["synthesis_started_at"] = self.now()
        synthesis = run_synthesizer(
            self.synthesizer.backend,
            self.synthesizer.tokenizer,
            problem.problem,
            [p.answer_part for p in paths],
            cfg.synthesizer,
            self.synthesizer.context_length,
            seed=cfg.path_seed(problem.id, cfg.n),
            shuffle=cfg.shuffle_references,
            thinking=cfg.thinking,
        )
        clock["synthesized_at"] = self.now()
        return synthesis

    def run(
        self,
        problems: Iterable[Problem],
        on_record: Callable[[dict[str, Any]], None],
        max_in_flight: int | None = None,
    ) -> None:
        """Solve every problem, handing each finished record to `on_record` as soon as it is done.

        `max_in_flight` caps the problems explored at once below what the KV pool would allow.
        Each record's `timings` hold its stage marks in seconds since the run started, and durations.
        An engine error ends the run: records already handed over stay, unfinished problems are redone by
        the next run.
        """
        cfg = self.config
        self.t0 = time.perf_counter()
        explore_slots, synth_slots = stage_slots(cfg, self.explorer, self.synthesizer, max_in_flight)
        pending = iter(problems)
        explore_pool = ThreadPoolExecutor(explore_slots, "explore")
        synth_pool = ThreadPoolExecutor(synth_slots, "synthesize")
        # future -> (problem, its clock, its paths once explored)
        running: dict[Future, tuple[Problem, dict[str, float], list[ExplorerPath] | None]] = {}

        def explore_next() -> None:
            problem = next(pending, None)
            if problem is not None:
                clock = {"queued_at": self.now()}
                running[explore_pool.submit(self.explore, problem, clock)] = (problem, clock, None)

        try:
            for _ in range(explore_slots):
                explore_next()
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    problem, clock, paths = running.pop(future)
                    synthesis = None
                    if paths is None:  # an exploration finished
                        explore_next()
                        paths = future.result()
                        if cfg.synthesize:
                            running[synth_pool.submit(self.synthesize, problem, paths, clock)] = (
                                problem,
                                clock,
                                paths,
                            )
                            continue
                    else:
                        synthesis = future.result()
                    on_record(problem_record(problem, cfg, paths, synthesis, durations(clock, self.now())))
        finally:
            # On an error or Ctrl-C do not wait for requests in flight: stopping the engines ends them.
            for pool in (explore_pool, synth_pool):
                pool.shutdown(wait=not running, cancel_futures=True)


def durations(clock: dict[str, float], finished_at: float) -> dict[str, float]:
    explore_s = clock["explored_at"] - clock["explore_started_at"]
    synthesize_s = clock.get("synthesized_at", 0.0) - clock.get("synthesis_started_at", 0.0)
    total_s = finished_at - clock["queued_at"]
    return {
        **clock,
        "finished_at": finished_at,
        "explore_s": explore_s,
        "synthesize_s": synthesize_s,
        "total_s": total_s,
    }
