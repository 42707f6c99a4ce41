"""Stage 1, the explorer: N reasoning paths for one problem, forked from one shared prompt.

`fork` lets SGLang prefill the prompt once and serve all N paths from the radix cache; the engine's
`cached_tokens` per path is recorded so sharing is measured, never assumed.
"""

from __future__ import annotations

from typing import Any

import sglang as sgl

from engine.endpoint import SEED_VAR
from programs.core.config import SamplingConfig
from programs.core.records import PathRecord


@sgl.function
def explore(s, prompt: str, sampling: dict, seeds: list[int]):
    s += prompt
    # fork() sends its prefix-caching prefill only if the prompt is already applied to the stream;
    # reading the text waits for that, otherwise the N paths silently prefill the prompt N times.
    s.text()
    paths = s.fork(len(seeds))  # one path per seed
    for path, seed in zip(paths, seeds, strict=True):
        path.set_var(SEED_VAR, seed)
        path += sgl.gen("path", **sampling)
    metas = [path.get_meta_info("path") for path in paths]
    for path in paths:
        if path.error() is not None:  # e.g. the engine rejected the request
            raise RuntimeError(f"an explorer path failed: {path.error()}")
    paths.join()  # gathers every path's text into s["path"], in fork order
    return metas


def run_explorer(backend: Any, prompt: str, sampling: SamplingConfig, seeds: list[int]) -> list[PathRecord]:
    """One path per seed, forked from `prompt`; their records are ungraded until `ProblemRecord.build`."""
    # (`n` would be taken by `run` itself as a sampling parameter, so the path count is len(seeds).)
    state = explore.run(prompt=prompt, sampling=sampling.gen_kwargs(), seeds=seeds, backend=backend)
    if state.error() is not None:
        raise RuntimeError(f"the explorer's prompt prefill failed: {state.error()}")
    return [
        PathRecord.from_engine(text, meta, seed)
        for text, meta, seed in zip(state["path"], state.ret_value, seeds, strict=True)
    ]
