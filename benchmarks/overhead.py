"""Where self-consistency loses time against the raw engine: its fixed costs per problem, on a busy explorer.

Fork/join does per problem what one `/generate` with n=N does not:
- prompt:   the frontend builds the chat prompt (and counts its tokens against the context) in the problem's
            slot, before anything is sent: the slot decodes nothing meanwhile;
- commit:   `fork` first sends the prompt alone (a prefill-only request) and waits for it, so that the paths
            find it cached: one more HTTP round trip during which the slot decodes nothing;
- requests: the N paths are N requests, each parsed and re-tokenized by the engine, where n=N is one: engine
            time taken from decoding on the engine's own core (timed as BURST separate requests against one
            with n=BURST);
- frontend: what the fork/join program costs beyond those (its interpreter and one thread per path), as the
            remainder of one problem's end-to-end time at one token per path over the raw engine's;
- handoff:  the time from a problem's exploration ending to the next one's starting in the freed slot
            (from the run's own records).
Each is timed while as many other problems decode as the run keeps in flight, so queueing behind the running
batch counts, as it does in the run. The slot items cost their share of each slot's time per problem, the
engine item its share of the wall time; all are fixed per problem, so their shares fall as paths grow.
Self-consistency's measured loss is 1 - SC/raw from the same run, so the table shows how much of it the
budget explains.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from statistics import median
from typing import Any

from rich.table import Table

from benchmarks.modes import prompts, raw_params
from engine.endpoint import PREFILL_TOP_K
from programs.core.config import RunConfig
from programs.core.records import Problem
from programs.engine_handle import EngineHandle
from programs.pipeline import Pipeline

REPEATS = 15  # timings per item; the median is kept
BURST = 32  # one-token sequences sent as separate requests and as one with n=BURST: the cost per request
SLOT_ITEMS = ("prompt", "commit", "frontend", "handoff")


def timed(call: Callable[[], Any], repeats: int = REPEATS) -> float:
    """The median wall time of `call`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return median(times)


@contextlib.contextmanager
def steady_load(
    explorer: EngineHandle, prompts: list[str], config: RunConfig, streams: int
) -> Iterator[None]:
    """`streams` problems decoding on the explorer (n=N each, one after another) for the duration of the block:
    the engine as busy as at steady state, so each item is timed as the run pays it, queueing included."""
    stop, body = threading.Event(), {"sampling_params": raw_params(config)}

    def keep_busy(index: int) -> None:
        while not stop.is_set():
            explorer.post("/generate", {**body, "text": prompts[index % len(prompts)]})

    with ThreadPoolExecutor(max(1, streams), "load") as pool:
        busy = [pool.submit(keep_busy, i) for i in range(streams)]
        try:
            yield
        finally:
            stop.set()  # the requests in flight finish
        for future in busy:
            future.result()


def fixed_costs(
    explorer: EngineHandle, pool: list[Problem], config: RunConfig, in_flight: int
) -> dict[str, float]:
    """Each item's seconds per problem, timed with a cached prompt and one-token paths while `in_flight` - 1
    other problems decode, as they do around every problem at steady state."""
    problem, n = pool[0], config.n
    one_token = replace(config, synthesize=False, explorer=replace(config.explorer, max_tokens=1))
    sc = Pipeline(one_token, explorer, None)
    texts = prompts(explorer, pool[:in_flight], config)
    prompt, others = texts[problem.id], [texts[p.id] for p in pool[1:in_flight]]
    # The run's sampling, and the commit's top-k as `PathEndpoint` sends it: one request without a top-k
    # would slow every decode step of the load it is timed against (see engine.endpoint.PREFILL_TOP_K).
    sampling = {**raw_params(config), "max_new_tokens": 1}
    sampling.pop("n")
    commit = {"text": prompt, "sampling_params": {"max_new_tokens": 0, "top_k": PREFILL_TOP_K}}
    one = {"text": prompt, "sampling_params": sampling}
    raw = {"text": prompt, "sampling_params": {**sampling, "n": n}}
    explorer.post("/generate", commit)  # cached from here on, as in every fork after its commit

    def separate() -> None:  # BURST requests at once, as fork sends its paths
        with ThreadPoolExecutor(BURST) as threads:
            list(threads.map(lambda _: explorer.post("/generate", one), range(BURST)))

    def together() -> None:  # the same BURST sequences as one request
        explorer.post("/generate", {**one, "sampling_params": {**sampling, "n": BURST}})

    with steady_load(explorer, others or [prompt], config, in_flight - 1):
        costs = {
            "prompt_s": timed(lambda: prompts(explorer, [problem], config)),
            "commit_s": timed(lambda: explorer.post("/generate", commit)),
            "request_s": (timed(separate, repeats=5) - timed(together, repeats=5)) / BURST,
            "sc_problem_s": timed(lambda: sc.explore(problem)),
            "raw_problem_s": timed(lambda: explorer.post("/generate", raw)),
        }
    return costs


def per_problem(costs: dict[str, float], handoff: float, n: int) -> dict[str, float]:
    """Each item's seconds per problem. The frontend's is what fork/join's end-to-end time at one token per path
    leaves after the other items, signed: negative when the commit's wait overlaps the prefill the raw engine's
    own n>1 also waits for."""
    requests = (n - 1) * costs["request_s"]
    slot = costs["prompt_s"] + costs["commit_s"] + requests
    return {
        "prompt": costs["prompt_s"],
        "commit": costs["commit_s"],
        "frontend": costs["sc_problem_s"] - costs["raw_problem_s"] - slot,
        "handoff": handoff,
        "requests": n * costs["request_s"],
    }


def shares(costs: dict[str, float], result: dict[str, Any]) -> dict[str, float]:
    """Each item's share of self-consistency's time in one measured run (`benchmarks.throughput`'s result)."""
    sc, n = result["modes"]["sc"], result["config"]["run"]["n"]
    seconds = per_problem(costs, sc["handoff_s"], n)
    slot_seconds = sc["wall_s"] * sc["in_flight"] / sc["problems"]  # one slot's time per problem
    out = {item: seconds[item] / slot_seconds for item in SLOT_ITEMS}
    out["requests"] = seconds["requests"] * sc["problems"] / sc["wall_s"]
    return out


def budget_table(results: list[dict[str, Any]]) -> Table:
    """Each item's milliseconds per problem and share of SC's time in each run, beside SC's measured loss."""
    grid = Table(
        title="Self-consistency's fixed costs per problem against the raw engine: ms, share of SC's time"
    )
    grid.add_column("item")
    for r in results:
        tokens, in_flight = r["config"]["run"]["explorer"]["max_tokens"], r["modes"]["sc"]["in_flight"]
        grid.add_column(f"{tokens} tok, {in_flight} in flight", justify="right")
    n = results[0]["config"]["run"]["n"]
    seconds = [per_problem(r["overhead"]["costs"], r["modes"]["sc"]["handoff_s"], n) for r in results]
    per_run = [r["overhead"]["shares"] for r in results]
    for item in (*SLOT_ITEMS, "requests"):
        grid.add_row(
            item, *(f"{1000 * s[item]:.1f} ms, {p[item]:.1%}" for s, p in zip(seconds, per_run, strict=True))
        )
    grid.add_row("sum", *(f"{sum(p.values()):.1%}" for p in per_run))
    grid.add_row("measured 1 - SC/raw", *(f"{1 - r['ratios']['sc_over_raw']['median']:.1%}" for r in results))
    return grid
