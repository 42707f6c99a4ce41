"""Recursive aggregation in the manner of RSA (recursive self-aggregation), on A2R's engines and template.

The explorer's N answer parts are the first population. Each of T rounds makes a new population of N: member
i aggregates K members of the last one, drawn at random, with the synthesizer's template and model, and its
answer part (what it wrote after its thinking) is what the next round reads. The answer is the vote over the
last population (`ProblemRecord.build`). A round's N aggregations run at once; the rounds of one problem run
in its synthesis stage, while later problems explore (`programs.pipeline`).

    python -m programs.a2r --n 4 --method rsa --rounds 2 --subset 2
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial

from programs.core.config import RunConfig
from programs.core.records import Problem, SynthesisRecord
from programs.engine_handle import EngineHandle
from programs.synthesizer import run_synthesizer


def subsets(seed: int, problem_id: str, n: int, k: int, rounds: int) -> list[list[list[int]]]:
    """Per round, per member, the K distinct members of the last population it aggregates, in the order
    drawn. Drawn from the run's seed and the problem alone, so a rerun draws the same, whatever the engine
    answers.

    >>> subsets(0, "p1", 3, 2, 1) == subsets(0, "p1", 3, 2, 1) != subsets(1, "p1", 3, 2, 1)
    True
    """
    rng = random.Random(f"{seed}/{problem_id}/rsa")
    return [[rng.sample(range(n), k) for _ in range(n)] for _ in range(rounds)]


def member_seed(config: RunConfig, problem_id: str, round: int, member: int) -> int:
    """The sampling seed of a round's member: the problem's path seeds after the explorer's N (round t's
    members take paths t*N to t*N + N - 1)."""
    return config.path_seed(problem_id, round * config.n + member)


def run_rounds(
    handle: EngineHandle, problem: Problem, population: list[str], config: RunConfig
) -> list[SynthesisRecord]:
    """Every aggregation of `config.rounds` rounds over `population` (the paths' answer parts), round by
    round, member by member. Each record's `round` says its round and its `reference_order` which members
    of the round before it read, in prompt order."""
    assert config.rounds is not None and config.subset is not None
    drawn = subsets(config.seed, problem.id, config.n, config.subset, config.rounds)
    calls: list[SynthesisRecord] = []
    with ThreadPoolExecutor(config.n, thread_name_prefix="aggregate") as pool:
        for round, members in enumerate(drawn, start=1):
            member = partial(aggregate, handle, problem, population, config, round)
            made = list(pool.map(member, range(config.n), members))
            calls += made
            population = [call.answer_part for call in made]
    return calls


def aggregate(
    handle: EngineHandle,
    problem: Problem,
    population: list[str],
    config: RunConfig,
    round: int,
    member: int,
    chosen: list[int],
) -> SynthesisRecord:
    """Member `member` of round `round`: the synthesizer over the `chosen` members of `population`."""
    seed = member_seed(config, problem.id, round, member)
    record = run_synthesizer(handle, problem.problem, [population[j] for j in chosen], config, seed=seed)
    return replace(record, reference_order=[chosen[j] for j in record.reference_order], round=round)
