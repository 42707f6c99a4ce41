"""An explorer path generated in chunks inside fork/join: probes of its current answer between chunks, and a
forced answer when it reaches its thinking budget still thinking.

A probe is the path's text so far, then the end-of-thinking tag and the opening of the model's answer (the
profile's `ProbeForm`), decoded greedily until the answer is complete (at most `PROBE_TOKENS`).
It is a copy of the path's stream (`path.copy()`), sent while the path decodes its next chunk. Both requests
start with the path's tokens as they were decoded (`TokenTrail`: decoded text need not tokenize back to
them), which SGLang's radix cache holds once the chunk before them has ended (a request's decoded KV enters
the tree when it finishes); the engine's
`cached_tokens` say what was served from there, and every token it had to compute for a probe, or for the
prompt of a continuing chunk, is counted in the path's `probe_tokens`.

The forced answer appends `CLOSE_THINKING` and gives the path `force_answer` more tokens. SGLang's own route,
`max_thinking_tokens`, needs a server launched with `--enable-strict-thinking`, a reasoning parser and a
grammar backend that can filter tokens, and its reply does not say whether the cap was hit; done here it works
on any server the project drives, and the path's record says it was forced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sglang as sgl

from engine.endpoint import ON_PROGRESS_VAR, ON_REPLY_VAR, RID_VAR, TRAIL_VAR, TokenTrail
from programs.core.config import BOXED_PROBE, ProbeForm
from programs.core.prompts import THINK_END
from programs.core.records import finish_reason

# Greedy tokens a probe may decode. It stops as soon as its answer is complete (after Qwen3's `\\boxed{` an
# integer and its brace take 2 to 4; after the offline explorer's `The result is `, `-37,` takes 3), so the
# cap binds only a probe whose model writes no answer in its form.
PROBE_TOKENS = 16
CLOSE_THINKING = f"\n{THINK_END}\n\n"  # what closes a path's thought, for a probe or a forced answer


@dataclass(frozen=True)
class Chunking:
    """How each path is generated beyond the paper's one request: both off by default."""

    probe_every: int | None = None  # tokens between probes of its current answer; None: no probes
    force_answer: int | None = None  # answer budget of a path cut at its thinking budget; None: not forced
    form: ProbeForm = BOXED_PROBE  # how a probe asks for the answer, in the form the model writes it
    # False: the path is still cut every `probe_every` tokens, but nothing asks it; what `benchmarks.probes`
    # sets the probes' own cost against, apart from the cost of the cuts
    ask: bool = True

    @property
    def probe(self) -> str:
        """What a probe appends to the path's text so far."""
        return CLOSE_THINKING + self.form.prefix

    def __post_init__(self) -> None:
        for name in ("probe_every", "force_answer"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1 token, got {value}")

    @property
    def on(self) -> bool:
        return self.probe_every is not None or self.force_answer is not None


@dataclass
class Generated:
    """A path's requests (its chunks, probes and forced answer) as the engine reported them, added up."""

    text: str = ""
    first: dict[str, Any] = field(default_factory=dict)  # the first chunk's meta_info: the path's prompt
    completion_tokens: int = 0
    probe_tokens: int = 0
    probes: list[tuple[int, str | None]] = field(default_factory=list)
    forced_answer: bool = False
    finish: Any = None  # the last request's finish reason, as the engine gave it

    def add(self, text: str, meta: dict[str, Any]) -> None:
        """One chunk of the path, or its forced answer (whose uncached prompt, the tag, the path wrote too)."""
        if self.first:
            self.probe_tokens += uncached(meta)
        else:
            self.first = meta
        self.text += text
        self.completion_tokens += meta["completion_tokens"]
        self.finish = meta.get("finish_reason")

    def add_probe(
        self, answer: str | None, meta: dict[str, Any], counted: Callable[[int, str | None], bool]
    ) -> None:
        """A probe made after the tokens generated so far: its tokens, and the answer it stated if `counted`
        takes it."""
        self.probe_tokens += uncached(meta) + meta["completion_tokens"]
        probe = (self.completion_tokens, answer)
        if counted(*probe):
            self.probes.append(probe)

    @property
    def thinking(self) -> bool:
        return THINK_END not in self.text

    def meta(self) -> dict[str, Any]:
        """The path as one reply: its prompt as first sent, every token it generated, how it ended."""
        return {
            "prompt_tokens": self.first.get("prompt_tokens", 0),
            "cached_tokens": self.first.get("cached_tokens", 0),
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish,
        }


def uncached(meta: dict[str, Any]) -> int:
    """Prompt tokens the engine computed rather than read from its radix cache."""
    return meta.get("prompt_tokens", 0) - meta.get("cached_tokens", 0)


def generate(
    path: Any,
    sampling: dict[str, Any],
    chunking: Chunking,
    stopped: Callable[[], bool],
    on_probe: Callable[[int, str | None], bool],
) -> Generated:
    """Decode `path` to its end in chunks of `chunking.probe_every` tokens (one chunk without probes), probing it
    while it still thinks and handing each probe's (tokens so far, answer) to `on_probe`, which says whether
    it counted (a probe that returns after the path was stopped does not). Once `stopped()` the path sends
    nothing more: the chunk an abort cut, or one held back, ends it (finish reason `abort`)."""
    budget, done = sampling["max_tokens"], Generated()
    path.set_var(TRAIL_VAR, TokenTrail())  # continuations and probes are sent as the tokens decoded
    probe = None  # a copy of the path as the last chunk left it, to probe once the next chunk is on its way
    while True:
        size = budget - done.completion_tokens
        path += sgl.gen("chunk", **{**sampling, "max_tokens": min(size, chunking.probe_every or size)})
        # The probe goes after the continuation, which the batch waits for, and is read while it decodes.
        if probe is not None:
            ask(probe[0], chunking)
            text, meta = reply(probe[0], "probe")
            probe.join()
            if finish_reason(meta) != "abort":  # else held back: the path was stopped
                done.add_probe(chunking.form.read(text), meta, on_probe)
            probe = None
        text, meta = reply(path, "chunk")
        done.add(text, meta)
        if finish_reason(meta) != "length" or stopped():
            return done
        if done.completion_tokens >= budget:
            if chunking.force_answer is not None and done.thinking:
                path += CLOSE_THINKING + sgl.gen(
                    "answer", **{**sampling, "max_tokens": chunking.force_answer}
                )
                text, meta = reply(path, "answer")
                done.add(CLOSE_THINKING + text, meta)
                done.forced_answer = True
            return done
        if chunking.probe_every is not None and chunking.ask and done.thinking:
            probe = copy(path)


def copy(path: Any) -> Any:
    """A copy of `path`'s stream as it stands, for a probe: sent under a request id the engine chooses and
    reporting to no hook. Join it once the probe's reply is read."""
    forked = path.fork(1)
    for name in (RID_VAR, ON_REPLY_VAR, ON_PROGRESS_VAR):
        forked[0].set_var(name, None)
    return forked


def ask(state: Any, chunking: Chunking) -> None:
    """Send the probe of a path's current answer on its copy `state`, decoded greedily until the answer is
    complete."""
    state += chunking.probe + sgl.gen(
        "probe", max_tokens=PROBE_TOKENS, temperature=0, stop_regex=chunking.form.answer
    )


def reply(state: Any, name: str) -> tuple[str, dict[str, Any]]:
    """The text and `meta_info` of `state`'s gen `name`, once the engine has answered."""
    meta = state.get_meta_info(name)
    if state.error() is not None:  # e.g. the engine rejected the request
        raise RuntimeError(f"an explorer path failed: {state.error()}")
    return state[name], meta
