"""Stage 2, the synthesizer: re-reason over the query and the explorer's answer parts to one final answer.

References that would overflow the synthesizer's context are trimmed from the front, keeping each one's
end (where its conclusion and boxed answer are), and the trimming is recorded. A prompt the engine would
reject is never sent. Several syntheses over the same references (`--syntheses M`) are forked from one
prefill of the prompt, as the explorer's paths are.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import sglang as sgl

from engine.endpoint import PRIORITY_VAR, RID_VAR, SEED_VAR, SYNTHESIS_PRIORITY
from programs.core.config import RunConfig
from programs.core.prompts import chat_prompt, synthesizer_query
from programs.core.records import SynthesisRecord
from programs.engine_handle import EngineHandle, UnservableProblem


@sgl.function
def synthesize(s, prompt: str, sampling: dict, seed: int, rid: str | None):
    s.set_var(SEED_VAR, seed)
    s.set_var(PRIORITY_VAR, SYNTHESIS_PRIORITY)  # ahead of explorations waiting on a shared engine
    if rid is not None:
        s.set_var(RID_VAR, rid)
    s += prompt
    s += sgl.gen("synthesis", **sampling)


@sgl.function
def synthesize_samples(s, prompt: str, sampling: dict, seeds: list[int], rids: list[str] | None):
    s.set_var(PRIORITY_VAR, SYNTHESIS_PRIORITY)
    s += prompt
    s.text()  # the prompt applied, so fork() prefills it once and every sample is served from the cache
    samples = s.fork(len(seeds))
    for m, (sample, seed) in enumerate(zip(samples, seeds, strict=True)):
        sample.set_var(SEED_VAR, seed)
        if rids is not None:
            sample.set_var(RID_VAR, rids[m])
        sample += sgl.gen("synthesis", **sampling)
    try:
        replies = [
            (sample["synthesis"], sample.get_meta_info("synthesis"), sample.error()) for sample in samples
        ]
    finally:
        samples.join()  # ends the samples' threads
    if failed := next((error for _, _, error in replies if error is not None), None):
        raise RuntimeError(f"the synthesizer failed: {failed}")
    return [(text, meta) for text, meta, _ in replies]


def reference_order(n: int, shuffle: bool, seed: int) -> list[int]:
    order = list(range(n))
    if shuffle:
        random.Random(seed).shuffle(order)
    return order


def fit_references(
    tokenizer: Any, query: str, references: list[str], budget: int, thinking: bool = True
) -> tuple[str, list[int]]:
    """Render the synthesizer prompt within `budget` tokens; returns it and the 1-based trimmed positions.

    Each reference keeps min(its length, a fair share) of tokens, the share growing as shorter references
    leave room (water-filling), so one long reference never crowds out the others.
    """

    def render(refs: list[str]) -> str:
        return chat_prompt(tokenizer, synthesizer_query(query, refs), thinking)

    def length(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    prompt = render(references)
    if length(prompt) <= budget:
        return prompt, []
    ids = [tokenizer.encode(r, add_special_tokens=False) for r in references]
    room = budget - length(render([""] * len(references)))
    while room > 0:
        keep = water_fill([len(i) for i in ids], room)
        trimmed = [
            tokenizer.decode(i[len(i) - k :]) if k < len(i) else r
            for i, k, r in zip(ids, keep, references, strict=True)
        ]
        prompt = render(trimmed)
        overflow = length(prompt) - budget
        if overflow <= 0:
            return prompt, [p for p, (i, k) in enumerate(zip(ids, keep, strict=True), start=1) if k < len(i)]
        room -= max(overflow, len(references))  # token merges at the seams: tighten and retry
    raise UnservableProblem(
        f"the synthesizer prompt does not fit its context: the query and template alone take "
        f"{length(render([''] * len(references)))} of {budget} tokens"
    )


def water_fill(lengths: list[int], room: int) -> list[int]:
    """Tokens to keep per item so the total fits `room`, giving short items all they need first.

    >>> water_fill([10, 100, 100], 110)
    [10, 50, 50]
    """
    keep = [0] * len(lengths)
    left, pending = room, sorted(range(len(lengths)), key=lengths.__getitem__)
    while pending:
        share = left // len(pending)
        i = pending[0]
        if lengths[i] > share:
            for j in pending:
                keep[j] = share
            return keep
        keep[i] = lengths[i]
        left -= lengths[i]
        pending.pop(0)
    return keep


def run_synthesizer(
    handle: EngineHandle,
    query: str,
    answer_parts: list[str],
    config: RunConfig,
    *,
    seed: int,
    rid: str | None = None,
    on_text: Callable[[str], None] | None = None,
    stop: tuple[str, ...] = (),
) -> SynthesisRecord:
    """Synthesize over `answer_parts` (in path order) with the run's synthesizer sampling and template, as
    engine request `rid`, ending at any of the `stop` strings; with `on_text`, streamed to it piece by piece
    as the engine decodes."""
    prompt, order, trimmed = synthesis_prompt(handle, query, answer_parts, config, seed)
    gen = {**config.synthesizer.gen_kwargs(), **({"stop": list(stop)} if stop else {})}
    args = {"prompt": prompt, "sampling": gen, "seed": seed, "rid": rid}
    state = synthesize.run(**args, backend=handle.backend, stream=on_text is not None)
    if on_text is not None:
        for piece in state.text_iter("synthesis"):
            on_text(piece)
    if state.error() is not None:
        raise RuntimeError(f"the synthesizer failed: {state.error()}")
    return SynthesisRecord.from_engine(
        prompt, state["synthesis"], state.get_meta_info("synthesis"), order, trimmed
    )


def run_syntheses(
    handle: EngineHandle,
    query: str,
    answer_parts: list[str],
    config: RunConfig,
    seeds: list[int],
    *,
    rids: list[str] | None = None,
    stop: tuple[str, ...] = (),
) -> list[SynthesisRecord]:
    """One synthesis per seed over the same `answer_parts`, as engine requests `rids`, each ending at any of
    the `stop` strings: one prompt (its reference order the first seed's) forked into the samples, so the
    engine prefills it once, as each sample's `cached_tokens` says."""
    prompt, order, trimmed = synthesis_prompt(handle, query, answer_parts, config, seeds[0])
    gen = {**config.synthesizer.gen_kwargs(), **({"stop": list(stop)} if stop else {})}
    state = synthesize_samples.run(
        prompt=prompt, sampling=gen, seeds=seeds, rids=rids, backend=handle.backend
    )
    if state.error() is not None:
        raise RuntimeError(f"the synthesizer failed: {state.error()}")
    return [SynthesisRecord.from_engine(prompt, text, meta, order, trimmed) for text, meta in state.ret_value]


def synthesis_prompt(
    handle: EngineHandle, query: str, answer_parts: list[str], config: RunConfig, seed: int
) -> tuple[str, list[int], list[int]]:
    """The synthesizer's prompt over `answer_parts`, the path index of each reference in it (shuffled by
    `seed` if the run shuffles) and the positions trimmed to fit the context beside the budget."""
    order = reference_order(len(answer_parts), config.shuffle_references, seed)
    budget = handle.context_length - config.synthesizer.max_tokens - 1
    references = [answer_parts[i] for i in order]
    prompt, trimmed = fit_references(handle.tokenizer, query, references, budget, config.thinking)
    return prompt, order, trimmed
