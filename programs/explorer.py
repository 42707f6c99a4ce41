"""Stage 1, the explorer: N reasoning paths for one problem, forked from one shared prompt.

`fork` lets SGLang prefill the prompt once and serve all N paths from the radix cache; the engine's
`cached_tokens` per path is recorded so sharing is measured, never assumed. Each path carries its own seed
and request id, and reports its reply to a `Watch` the moment it ends, so a stop policy can abort the paths
still running while the fork is in flight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import sglang as sgl

from engine.endpoint import ON_REPLY_VAR, RID_VAR, SEED_VAR, request_ids
from programs.core.confidence import TOP_K, path_confidence
from programs.core.config import SamplingConfig
from programs.core.records import PathRecord
from programs.core.stopping import StopPolicy


class Watch:
    """One exploration as it runs: when each path's reply came back and, once `policy` fires, which paths
    were stopped and when (seconds since the exploration began).

    A path stopped by the policy stays stopped, out of the vote and the synthesis, even when it finished on
    its own while its abort was in flight (its finish reason then says `stop` or `length`): the decision is
    the one a replay in the observed finish order makes.
    """

    def __init__(self, rids: list[str], policy: StopPolicy | None, abort: Callable[[str], None]) -> None:
        self.rids, self.policy, self.abort = rids, policy, abort
        self.started = time.perf_counter()
        self.finished_s: dict[int, float] = {}
        self.answers: list[str | None] = []  # of the paths finished before any stop, in finish order
        self.stopped: set[int] = set()
        self.stopped_s: float | None = None
        self._lock = threading.Lock()

    def on_reply(self, index: int) -> Callable[[str, dict[str, Any]], None]:
        return lambda text, meta: self._reply(index, text, meta)

    def _reply(self, index: int, text: str, meta: dict[str, Any]) -> None:
        with self._lock:
            self.finished_s[index] = time.perf_counter() - self.started
            if index in self.stopped or self.policy is None:
                return
            self.answers.append(PathRecord.from_engine(text, meta, None).answer)
            if not self.policy.settled(self.answers, len(self.rids)):
                return
            self.stopped = set(range(len(self.rids))) - set(self.finished_s)
            self.stopped_s = time.perf_counter() - self.started
        for i in sorted(self.stopped):
            self.abort(self.rids[i])

    def record(self, index: int, path: PathRecord) -> PathRecord:
        stopped = index in self.stopped
        return replace(
            path,
            finished_s=self.finished_s.get(index),
            stopped_by=str(self.policy) if stopped else None,
            stopped_s=self.stopped_s if stopped else None,
            kept=not stopped,
        )


@sgl.function
def explore(s, prompt: str, sampling: dict, seeds: list[int], rids: list[str], watch: Watch):
    s += prompt
    # fork() sends its prefix-caching prefill only if the prompt is already applied to the stream;
    # reading the text waits for that, otherwise the N paths silently prefill the prompt N times.
    s.text()
    paths = s.fork(len(seeds))  # one path per seed
    for i, (path, seed, rid) in enumerate(zip(paths, seeds, rids, strict=True)):
        path.set_var(SEED_VAR, seed)
        path.set_var(RID_VAR, rid)
        path.set_var(ON_REPLY_VAR, watch.on_reply(i))
        path += sgl.gen("path", **sampling)
    metas = [path.get_meta_info("path") for path in paths]
    for path in paths:
        if path.error() is not None:  # e.g. the engine rejected the request
            raise RuntimeError(f"an explorer path failed: {path.error()}")
    paths.join()  # gathers every path's text into s["path"], in fork order
    return metas


def run_explorer(
    backend: Any,
    prompt: str,
    sampling: SamplingConfig,
    seeds: list[int],
    policy: StopPolicy | None = None,
    confidence: bool = False,
) -> list[PathRecord]:
    """One path per seed, forked from `prompt`, ungraded until `ProblemRecord.build`.

    `policy` stops the paths still running once it fires; `confidence` asks the engine for top-k
    log-probabilities and records each path's confidence.
    """
    rids = request_ids(len(seeds))
    watch = Watch(rids, policy, backend.abort)
    kwargs = sampling.gen_kwargs()
    if confidence:
        kwargs.update(return_logprob=True, top_logprobs_num=TOP_K)
    # (`n` would be taken by `run` itself as a sampling parameter, so the path count is len(seeds).)
    state = explore.run(prompt=prompt, sampling=kwargs, seeds=seeds, rids=rids, watch=watch, backend=backend)
    if state.error() is not None:
        raise RuntimeError(f"the explorer's prompt prefill failed: {state.error()}")
    records = []
    for i, (text, meta, seed) in enumerate(zip(state["path"], state.ret_value, seeds, strict=True)):
        path = PathRecord.from_engine(text, meta, seed)
        records.append(watch.record(i, replace(path, confidence=path_confidence(meta, sampling.max_tokens))))
    return records
