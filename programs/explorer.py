"""Stage 1, the explorer: N reasoning paths for one problem, forked from one shared prompt.

`fork` lets SGLang prefill the prompt once and serve all N paths from the radix cache; the engine's
`cached_tokens` per path is recorded so sharing is measured, never assumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sglang as sgl

from engine.endpoint import SEED_VAR
from programs.core.config import SamplingConfig
from programs.core.prompts import answer_part


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


@dataclass
class ExplorerPath:
    """One explorer path with the engine's own account of it."""

    text: str
    answer_part: str
    answer_part_fallback: bool  # no </think>: the whole text stands in for the answer part
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    finish_reason: str | None
    seed: int


def finish_reason(meta: dict[str, Any]) -> str | None:
    reason = meta.get("finish_reason")
    return reason.get("type") if isinstance(reason, dict) else reason


def run_explorer(backend: Any, prompt: str, sampling: SamplingConfig, seeds: list[int]) -> list[ExplorerPath]:
    # (`n` would be taken by `run` itself as a sampling parameter, so the path count is len(seeds).)
    state = explore.run(prompt=prompt, sampling=sampling.gen_kwargs(), seeds=seeds, backend=backend)
    if state.error() is not None:
        raise RuntimeError(f"the explorer's prompt prefill failed: {state.error()}")
    texts, metas = state["path"], state.ret_value
    paths = []
    for text, meta, seed in zip(texts, metas, seeds, strict=True):
        part = answer_part(text)
        paths.append(
            ExplorerPath(
                text=text,
                answer_part=part.text,
                answer_part_fallback=part.fallback,
                prompt_tokens=meta["prompt_tokens"],
                completion_tokens=meta["completion_tokens"],
                cached_tokens=meta.get("cached_tokens", 0),
                finish_reason=finish_reason(meta),
                seed=seed,
            )
        )
    return paths
