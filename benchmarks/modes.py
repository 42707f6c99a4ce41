"""The four ways the throughput benchmark serves the same problems on the same engines, and one mode's figures.

- sc:        the pipeline with synthesis off (fork N paths per problem, majority vote);
- a2r:       the pipeline: each problem's synthesis starts as soon as its own paths are done;
- raw:       the same chat-templated prompts POSTed straight to the explorer's `/generate` with `n`=N: the
             engine's own ceiling for the exploration work;
- two-phase: explore every problem, then synthesize every problem, as offline batch scripts do: the baseline
             for the pipeline's claim that streaming brings answers sooner at no cost in throughput.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from statistics import mean, median
from typing import Any

import numpy as np

from programs.core.config import RunConfig
from programs.core.records import PathRecord, Problem, ProblemRecord, usage
from programs.engine_handle import EngineHandle
from programs.executor import stage_timings
from programs.pipeline import Pipeline

MODES = ("sc", "a2r", "raw", "two-phase")


class PaperSizedReferences(Pipeline):
    """Fixed-length A2R: each answer part cut to its last `reference_tokens` tokens before synthesis.

    With random weights no path closes `</think>`, so a whole path (thousands of tokens) stands in for its
    answer part and the synthesizer would read many times the paper's prompt; this keeps it the paper's size.
    """

    def __init__(
        self, config: RunConfig, explorer: EngineHandle, synthesizer: EngineHandle, reference_tokens: int
    ) -> None:
        super().__init__(config, explorer, synthesizer)
        self.reference_tokens = reference_tokens

    def explore(self, problem: Problem, first_path: int = 0, batch: str | None = None) -> list[PathRecord]:
        tokenizer, keep = self.explorer.tokenizer, self.reference_tokens

        def cut(text: str) -> str:
            ids = tokenizer.encode(text, add_special_tokens=False)
            return text if len(ids) <= keep else tokenizer.decode(ids[-keep:])

        paths = super().explore(problem, first_path, batch)
        return [replace(p, answer_part=cut(p.answer_part)) for p in paths]


def raw_params(config: RunConfig) -> dict[str, Any]:
    """SGLang sampling parameters for N of the explorer's paths in one request."""
    params = config.explorer.gen_kwargs()
    params.update(max_new_tokens=params.pop("max_tokens"), n=config.n)
    return params


def prompts(explorer: EngineHandle, problems: list[Problem], config: RunConfig) -> dict[str, str]:
    """Each problem's chat-templated prompt, as the explorer program builds it, by problem id."""
    budget, thinking = config.explorer.max_tokens, config.thinking
    return {p.id: explorer.prompt(p.problem, budget, thinking, p.id) for p in problems}


def run_raw(
    explorer: EngineHandle, problems: list[Problem], config: RunConfig, slots: int
) -> list[ProblemRecord]:
    """Each problem's prompt as one `/generate` request with `n`=N, `slots` problems in flight."""
    params = raw_params(config)
    texts = prompts(explorer, problems, config)
    start = time.perf_counter()

    def solve(problem: Problem) -> ProblemRecord:
        started = time.perf_counter() - start
        body = {"text": texts[problem.id], "sampling_params": params}
        outputs = json.loads(explorer.post("/generate", body))
        finished = time.perf_counter() - start
        outputs = outputs if isinstance(outputs, list) else [outputs]
        paths = [PathRecord.from_engine(out["text"], out["meta_info"], None) for out in outputs]
        clock = {"queued_at": started, "explore_started_at": started, "explored_at": finished}
        return ProblemRecord(
            problem.id, problem.problem, problem.answer, {}, paths, {}, None, stage_timings(clock, finished)
        )

    with ThreadPoolExecutor(slots, "raw") as pool:
        return list(pool.map(solve, problems))


def run_two_phase(pipeline: Pipeline, problems: list[Problem], slots: tuple[int, int]) -> list[ProblemRecord]:
    """Every problem explored (`slots[0]` at once), and only then every problem synthesized (`slots[1]`)."""
    start, config = time.perf_counter(), pipeline.config.to_dict()
    clocks: list[dict[str, float]] = [{} for _ in problems]

    def explore(index: int) -> list[PathRecord]:
        clocks[index]["queued_at"] = clocks[index]["explore_started_at"] = time.perf_counter() - start
        paths = pipeline.explore(problems[index])
        clocks[index]["explored_at"] = time.perf_counter() - start
        return paths

    def synthesize(index: int) -> ProblemRecord:
        clock = clocks[index]
        clock["synthesis_started_at"] = time.perf_counter() - start
        synthesis = pipeline.synthesize(problems[index], explored[index])
        clock["synthesized_at"] = time.perf_counter() - start
        timings = stage_timings(clock, clock["synthesized_at"])
        return ProblemRecord.build(problems[index], config, explored[index], synthesis, timings)

    indices = range(len(problems))
    with ThreadPoolExecutor(slots[0], "explore") as pool:
        explored = list(pool.map(explore, indices))
    with ThreadPoolExecutor(slots[1], "synthesize") as pool:
        return list(pool.map(synthesize, indices))


def handoff_s(timings: list[dict[str, float]], slots: int) -> float:
    """The median time from one problem's exploration ending to the next one's starting in the freed slot."""
    done = sorted(t["explored_at"] for t in timings)
    started = sorted(t["explore_started_at"] for t in timings)[slots:]
    # The k-th exploration to end frees the slot the (slots + k)-th one starts in; the last few free slots for none.
    gaps = [next_start - end for end, next_start in zip(done, started, strict=False)]
    return median(gaps) if gaps else 0.0


def summarize(records: list[ProblemRecord], wall_s: float, in_flight: int) -> dict[str, Any]:
    """One mode's figures from its records: rates over the wall time, and per problem its latency (from when
    it got an in-flight slot to its final answer), when its answer came (since the mode started: the time to
    answer a user waits with the whole batch submitted at once), how its time split between the stages, and
    how long a freed slot waited for its next problem."""
    used = usage(records)
    timings = [r.timings for r in records]
    latency = [t["total_s"] for t in timings]
    answered = [t["finished_at"] for t in timings]
    stages = {stage: used.stage_seconds[f"{stage}_s"] for stage in ("explore", "synthesize")}
    return {
        "problems": len(records),
        "sequences": used.paths + used.syntheses,
        "explorer_prompt_tokens": used.explorer_prompt_tokens,
        "explorer_cached_tokens": used.explorer_cached_tokens,
        "output_tokens": used.output_tokens,
        "wall_s": wall_s,
        "problems_per_s": len(records) / wall_s,
        "tokens_per_s": used.output_tokens / wall_s,
        "latency_p50_s": float(np.percentile(latency, 50)),
        "latency_p95_s": float(np.percentile(latency, 95)),
        "time_to_answer_s": mean(answered),
        "time_to_answer_p50_s": float(np.percentile(answered, 50)),
        "first_answer_s": min(answered),
        "explorer_cache_hit_ratio": used.prefix_cache_hit_ratio,
        "stage_share": {k: v / sum(stages.values()) for k, v in stages.items()},
        "in_flight": in_flight,
        "handoff_s": handoff_s(timings, in_flight),
    }
