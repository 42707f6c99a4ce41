"""Stage 1, the explorer: N reasoning paths for one problem, forked from one shared prompt.

`fork` lets SGLang prefill the prompt once and serve all N paths from the radix cache; the engine's
`cached_tokens` per path is recorded so sharing is measured, never assumed. Each path carries its own seed
and request id, and reports its reply to a `Watch` the moment it ends, so a stop policy can abort the paths
still running while the fork is in flight. A policy that reads running paths' answers has each path generated
in chunks with probes between them (`programs.chunked`), and one that widens launches the paths in waves,
each forked from the same cached prompt once the wave before it has ended and only while nothing is settled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from typing import Any

import sglang as sgl

from engine.endpoint import (
    NOT_SENT,
    ON_PROGRESS_VAR,
    ON_REPLY_VAR,
    RID_VAR,
    SEED_VAR,
    SKIP_IF_VAR,
    request_ids,
)
from engine.spec import EngineError
from programs.chunked import Chunking, Generated, generate, reply
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

    After each observation (a path's end, or a probe of its current answer) `policy` decides whether the paths
    still running stop, and with them the waves not launched yet; with `online`, every path is streamed and
    stops alone once its recent tokens fall below the confidence threshold the first replies set. A stopped
    path stays stopped, out of the vote and the synthesis, even when it finished on its own while its abort
    was in flight (its finish reason then says `stop` or `length`): the decision is the one a replay in the
    observed order makes. A streamed path's last chunk ends it, so that chunk never stops it.
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
        self.seen: list[Seen] = []  # what the policy read, in observed order
        self.waves: dict[int, int] = {}  # path -> the wave it was launched in
        self.probed_s: dict[int, list[float]] = {i: [] for i in range(len(rids))}  # when each probe counted
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

    def on_probe(self, index: int) -> Callable[[int, str | None], bool]:
        """Hears path `index`'s probes as (tokens so far, answer); says whether the probe counted, that is
        came back before the path was stopped."""
        return lambda tokens, answer: self._probe(index, tokens, answer)

    def launches(self) -> Iterator[list[int]]:
        """The paths of each wave (all N in one without a policy that widens), each asked for once the wave
        before it has ended, and none once the policy has settled (it stopped them unlaunched)."""
        n = len(self.rids)
        size = (self.policy.wave if self.policy is not None else None) or n
        for wave, start in enumerate(range(0, n, size)):
            paths = list(range(start, min(start + size, n)))
            with self._lock:
                if start in self.stopped:
                    return
                self.waves.update(dict.fromkeys(paths, wave))
            yield paths

    def _reply(self, index: int, text: str, meta: dict[str, Any]) -> None:
        answer = PathRecord.from_engine(text, meta, None).answer if self.policy is not None else None
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
            running = self._observe(Seen(index, meta["completion_tokens"], answer, final=True))
        for i in running:
            self.abort(self.rids[i])

    def _probe(self, index: int, tokens: int, answer: str | None) -> bool:
        with self._lock:
            if index in self.stopped:
                return False
            self.probed_s[index].append(self.now())
            running = self._observe(Seen(index, tokens, answer, final=False))
        for i in running:
            self.abort(self.rids[i])
        return True

    def _observe(self, seen: Seen) -> list[int]:
        """Let the policy read one more observation (the lock held). Once it settles, stop every path not yet
        ended (those not launched are then never launched); the running ones are returned, to be aborted."""
        if self.policy is None:
            return []
        self.seen.append(seen)
        rest = [i for i in range(len(self.rids)) if i not in self.finished_s and i not in self.stopped]
        if not rest or not self.policy.settled(self.seen, len(self.rids)):
            return []
        self._stop(rest, str(self.policy))
        return [i for i in rest if i in self.waves]

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
                    pending = [
                        self.rids[i] for i in self.stopped if i in self.waves and i not in self.finished_s
                    ]
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
            probed_s=self.probed_s[index],
            wave=self.waves.get(index) if self.policy is not None and self.policy.wave else None,
        )


@sgl.function
def explore(
    s, prompt: str, sampling: dict, seeds: list[int], rids: list[str], watch: Watch, chunking: Chunking
):
    s += prompt
    # fork() sends its prefix-caching prefill only if the prompt is already applied to the stream;
    # reading the text waits for that, otherwise the N paths silently prefill the prompt N times.
    s.text()
    # Every hook exists on the problem's stream, unset: a fork's join gathers back only variables its source
    # lacks (as lists), which the next wave's forks and the prefix commit would then read as hooks.
    for name in (SEED_VAR, RID_VAR, ON_REPLY_VAR, SKIP_IF_VAR, ON_PROGRESS_VAR):
        s.set_var(name, None)
    replies: dict[int, tuple[str, dict[str, Any], Generated | None]] = {}
    for wave in watch.launches():
        paths = s.fork(len(wave))  # one path per seed; a later wave's prompt is already cached
        for i, path in zip(wave, paths, strict=True):
            path.set_var(SEED_VAR, seeds[i])
            path.set_var(RID_VAR, rids[i])
            path.set_var(SKIP_IF_VAR, watch.is_stopped(i))
            if watch.online is not None:
                path.set_var(ON_PROGRESS_VAR, watch.on_progress(i))
        if chunking.on:
            thought = partial(think, sampling=sampling, watch=watch, chunking=chunking)
            with ThreadPoolExecutor(len(wave), thread_name_prefix="path") as pool:
                for i, done in zip(wave, list(pool.map(thought, wave, paths)), strict=True):
                    replies[i] = (done.text, done.meta(), done)
        else:
            for i, path in zip(wave, paths, strict=True):
                path.set_var(ON_REPLY_VAR, watch.on_reply(i))
                path += sgl.gen("path", **sampling)
            for i, path in zip(wave, paths, strict=True):
                replies[i] = (*reply(path, "path"), None)
        paths.join()
    return [replies.get(i, ("", dict(NOT_SENT), None)) for i in range(len(seeds))]  # unlaunched: not sent


def think(i: int, path: Any, sampling: dict, watch: Watch, chunking: Chunking) -> Generated:
    """Path `i` in chunks, reporting its probes and its end to `watch`."""
    done = generate(path, sampling, chunking, watch.is_stopped(i), watch.on_probe(i))
    watch.on_reply(i)(done.text, done.meta())
    return done


def run_explorer(
    backend: Any,
    prompt: str,
    sampling: SamplingConfig,
    seeds: list[int],
    *,
    policy: StopPolicy | None = None,
    confidence: bool = False,
    online: OnlineStop | None = None,
    batch: str | None = None,
    chunking: Chunking | None = None,
) -> list[PathRecord]:
    """One path per seed, forked from `prompt`, ungraded until `ProblemRecord.build`.

    `policy` stops the paths still running once it fires and `online` each path whose confidence drops;
    `confidence` (implied by `online`) asks the engine for top-k log-probabilities and records each path's
    confidence; `chunking` generates each path in chunks, probed between them, or forces its answer at its
    budget. The paths' request ids are those of `batch` (default: a new one).
    """
    rids = request_ids(len(seeds), batch)
    chunking = chunking or Chunking()
    watch = Watch(rids, policy, backend.abort, online)
    kwargs = sampling.gen_kwargs()
    if confidence or online is not None:
        kwargs.update(return_logprob=True, top_logprobs_num=TOP_K)
    # (`n` would be taken by `run` itself as a sampling parameter, so the path count is len(seeds).)
    with watch.resending_aborts():
        state = explore.run(
            prompt=prompt,
            sampling=kwargs,
            seeds=seeds,
            rids=rids,
            watch=watch,
            chunking=chunking,
            backend=backend,
        )
    if state.error() is not None:
        raise RuntimeError(f"the explorer's prompt prefill failed: {state.error()}")
    records = []
    for i, ((text, meta, done), seed) in enumerate(zip(state.ret_value, seeds, strict=True)):
        path = PathRecord.from_engine(text, meta, seed)
        if done is not None:
            path = replace(
                path, probe_tokens=done.probe_tokens, probes=done.probes, forced_answer=done.forced_answer
            )
        records.append(watch.record(i, replace(path, confidence=path_confidence(meta, sampling.max_tokens))))
    return records
