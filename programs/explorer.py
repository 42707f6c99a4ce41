"""Stage 1, the explorer: N reasoning paths for one problem, forked from one shared prompt.

`fork` lets SGLang prefill the prompt once and serve all N paths from the radix cache; the engine's
`cached_tokens` per path is recorded so sharing is measured, never assumed. Each path carries its own seed
and request id, and reports its reply to a `Watch` the moment it ends, so a stop policy can abort the paths
still running while the fork is in flight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import sglang as sgl

from engine.endpoint import ON_PROGRESS_VAR, ON_REPLY_VAR, RID_VAR, SEED_VAR, SKIP_IF_VAR, request_ids
from engine.spec import EngineError
from programs.core.confidence import (
    TOP_K,
    OnlineStop,
    lowest_group_confidence,
    path_confidence,
    token_confidences,
)
from programs.core.config import SamplingConfig
from programs.core.records import PathRecord
from programs.core.stopping import Seen, StopPolicy

RESEND_ABORTS_S = 0.5  # how often a stopped path that has not replied yet is aborted again


class Watch:
    """One exploration as it runs: when each path's reply came back, and which paths were stopped, by what
    and when (seconds since the exploration began).

    After each reply `policy` decides whether the paths still running stop; with `online`, every path is
    streamed and stops alone once its recent tokens fall below the confidence threshold the first replies
    set. A stopped path stays stopped, out of the vote and the synthesis, even when it finished on its own
    while its abort was in flight (its finish reason then says `stop` or `length`): the decision is the one a
    replay in the observed finish order makes. A streamed path's last chunk ends it, so that chunk never
    stops it.
    """

    def __init__(
        self,
        rids: list[str],
        policy: StopPolicy | None,
        abort: Callable[[str], None],
        online: OnlineStop | None = None,
    ) -> None:
        self.rids, self.policy, self.abort, self.online = rids, policy, abort, online
        self.started = time.perf_counter()
        self.finished_s: dict[int, float] = {}
        self.seen: list[Seen] = []  # the paths that finished unstopped, in finish order
        self.stopped: dict[int, tuple[str, float, int | None]] = {}  # path -> (by what, when, after tokens)
        self.warm: list[float] = []  # lowest group confidences of the first paths to finish
        self.threshold: float | None = None
        self.confidences: dict[int, list[float]] = {i: [] for i in range(len(rids))}  # per decoded token
        self._read = dict.fromkeys(range(len(rids)), 0)  # `output_top_logprobs` entries read, per path
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.perf_counter() - self.started

    def on_reply(self, index: int) -> Callable[[str, dict[str, Any]], None]:
        return lambda text, meta: self._reply(index, text, meta)

    def is_stopped(self, index: int) -> Callable[[], bool]:
        return lambda: index in self.stopped

    def on_progress(self, index: int) -> Callable[[dict[str, Any]], None]:
        return lambda meta: self._progress(index, meta)

    def _reply(self, index: int, text: str, meta: dict[str, Any]) -> None:
        with self._lock:
            self.finished_s[index] = self.now()
            if index in self.stopped:
                return
            if self.online is not None and self.threshold is None:
                self.warm.append(lowest_group_confidence(self._decoded(index, meta), self.online.window))
                if len(self.warm) == self.online.warmup:
                    self.threshold = self.online.threshold(self.warm)
            if self.policy is None:
                return
            path = PathRecord.from_engine(text, meta, None)
            self.seen.append(Seen(index, path.completion_tokens, path.answer, final=True))
            running = [i for i in range(len(self.rids)) if i not in self.finished_s and i not in self.stopped]
            if not running or not self.policy.settled(self.seen, len(self.seen) + len(running)):
                return
            self._stop(running, str(self.policy))
        for i in running:
            self.abort(self.rids[i])

    def _progress(self, index: int, meta: dict[str, Any]) -> None:
        assert self.online is not None
        window = self.online.window
        with self._lock:
            if index in self.stopped or meta.get("finish_reason") is not None:
                return  # stopped already, or ended with this chunk: nothing left to decide
            recent = self._decoded(index, meta)[-window:]
            if self.threshold is None or len(recent) < window or sum(recent) / window >= self.threshold:
                return
            self._stop([index], "confidence")
        self.abort(self.rids[index])

    def _decoded(self, index: int, meta: dict[str, Any]) -> list[float]:
        """The path's token confidences so far, extended from a (cumulative) `meta_info`."""
        top = meta.get("output_top_logprobs") or []
        self.confidences[index].extend(token_confidences(top[self._read[index] :]))
        self._read[index] = len(top)
        return self.confidences[index]

    @contextmanager
    def resending_aborts(self, every_s: float = RESEND_ABORTS_S) -> Iterator[None]:
        """While the exploration runs, abort again each stopped path that has not replied. SGLang drops an
        abort for a request id it does not know yet, so a path whose request reached the engine after its
        abort (its thread starved on a loaded machine) would otherwise decode to its end, and the whole
        exploration would wait for it. (One window stays open: an abort that lands while SGLang is still
        tokenizing the request reaches its scheduler first and is dropped there, and SGLang sends no second.)"""
        if self.policy is None and self.online is None:  # nothing can stop a path: no aborts to resend
            yield
            return
        done = threading.Event()

        def resend() -> None:
            while not done.wait(every_s):
                with self._lock:
                    pending = [self.rids[i] for i in self.stopped if i not in self.finished_s]
                try:
                    for rid in pending:
                        self.abort(rid)
                except (OSError, EngineError):
                    return  # the engine is gone: the paths' own requests report that

        thread = threading.Thread(target=resend, name="resend-aborts", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def _stop(self, paths: list[int], by: str) -> None:
        """Mark `paths` stopped, with the tokens each had streamed (the engine decodes more while the abort
        is in flight, so the record's `completion_tokens` may be higher)."""
        when = self.now()
        for i in paths:
            self.stopped[i] = (by, when, len(self.confidences[i]) if self.online is not None else None)

    def record(self, index: int, path: PathRecord) -> PathRecord:
        by, when, after = self.stopped.get(index, (None, None, None))
        return replace(
            path,
            finished_s=self.finished_s.get(index),
            stopped_by=by,
            stopped_s=when,
            stopped_after=after,
            kept=by is None,
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
        path.set_var(SKIP_IF_VAR, watch.is_stopped(i))
        if watch.online is not None:
            path.set_var(ON_PROGRESS_VAR, watch.on_progress(i))
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
    online: OnlineStop | None = None,
    batch: str | None = None,
) -> list[PathRecord]:
    """One path per seed, forked from `prompt`, ungraded until `ProblemRecord.build`.

    `policy` stops the paths still running once it fires and `online` each path whose confidence drops;
    `confidence` (implied by `online`) asks the engine for top-k log-probabilities and records each path's
    confidence. The paths' request ids are those of `batch` (default: a new one).
    """
    rids = request_ids(len(seeds), batch)
    watch = Watch(rids, policy, backend.abort, online)
    kwargs = sampling.gen_kwargs()
    if confidence or online is not None:
        kwargs.update(return_logprob=True, top_logprobs_num=TOP_K)
    # (`n` would be taken by `run` itself as a sampling parameter, so the path count is len(seeds).)
    with watch.resending_aborts():
        state = explore.run(
            prompt=prompt, sampling=kwargs, seeds=seeds, rids=rids, watch=watch, backend=backend
        )
    if state.error() is not None:
        raise RuntimeError(f"the explorer's prompt prefill failed: {state.error()}")
    records = []
    for i, (text, meta, seed) in enumerate(zip(state["path"], state.ret_value, seeds, strict=True)):
        path = PathRecord.from_engine(text, meta, seed)
        records.append(watch.record(i, replace(path, confidence=path_confidence(meta, sampling.max_tokens))))
    return records
