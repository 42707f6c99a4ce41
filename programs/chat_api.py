"""The OpenAI chat-completions format as A2R's server speaks it: requests read and checked, responses and
stream chunks built, errors in OpenAI's error object. No engine and no HTTP here, so every rule is testable
alone.

The rule for message shapes: `messages` is a non-empty list of `system` (or `developer`, read as system),
`user` and `assistant` messages whose content is text (a string, or a list of `text` parts; an assistant's may
be null), and the last one is the user's question, not empty. The explorer reads the whole conversation
through its chat template; the synthesizer's Query is the last user message alone, since the paper's template
has one query and the references. What OpenAI's API offers and this server cannot do (tools, structured
output, log-probabilities, penalties) is refused with a 400 rather than silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

from programs.core import records
from programs.core.config import RunConfig
from programs.core.grading import is_equivalent
from programs.core.prompts import THINK_END, THINK_START, split_thinking
from programs.core.records import UNANIMOUS, ProblemRecord
from programs.core.stopping import STOP_FORMS

MODELS = {
    "a2r": "explore N paths, then synthesize a final answer over their answer parts",
    "self-consistency": "explore N paths and answer with one of the paths that gave the majority answer",
}
# Each role a message may have, and the role the chat template reads it as (newer OpenAI SDKs send
# `developer` where older ones sent `system`).
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Fields this server cannot honour, refused unless they ask for nothing (null, false, 0, empty, "none", text).
UNSUPPORTED = {
    "tools": "this server calls no tools",
    "tool_choice": "this server calls no tools",
    "functions": "this server calls no functions",
    "function_call": "this server calls no functions",
    "parallel_tool_calls": "this server calls no tools",
    "response_format": "replies are free text (no JSON mode or schema)",
    "logprobs": "replies carry no log-probabilities",
    "top_logprobs": "replies carry no log-probabilities",
    "logit_bias": "the synthesizer's sampling takes no logit bias",
    "presence_penalty": "the synthesizer's sampling takes no penalties",
    "frequency_penalty": "the synthesizer's sampling takes no penalties",
}
MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_N = 64  # paths per request
# A conversation longer than this many characters per token of the explorer's context cannot fit it (tokens
# run 2-5 characters), and tokenizing costs ~250 MB per MB of text: refused (413) before it is tokenized.
CHARS_PER_CONTEXT_TOKEN = 16
A2R_KNOBS = (
    "n",
    "explorer_max_tokens",
    "explorer_temperature",
    "explorer_top_p",
    "stop",
    "keep_confident",
    "online_confidence",
    "force_answer",
    "syntheses",
    "return_references",
)


class ApiError(Exception):
    """An answer in OpenAI's error format: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @property
    def kind(self) -> str:
        return {
            401: "authentication_error",
            404: "not_found_error",
            500: "server_error",
            503: "service_unavailable",
        }.get(self.status, "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatRequest:
    """One checked request: the conversation, the query, and the run configuration it asks for."""

    model: str
    messages: tuple[dict[str, str], ...]
    query: str
    config: RunConfig
    stream: bool = False
    include_usage: bool = False
    return_references: bool = False
    stop: tuple[str, ...] = ()  # the synthesizer's stop sequences
    seeded: bool = False  # the body gave a seed: the run is named by its conversation (`problem_id`)
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def parse(cls, body: Any, base: RunConfig, max_chars: int | None = None) -> ChatRequest:
        """Read `body` against the server's `base` configuration; a bad field is an ApiError naming it, and a
        conversation over `max_chars` characters is a 413."""
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str):
            raise ApiError(400, f"model must be a string, one of {', '.join(MODELS)}", "model")
        if model not in MODELS:
            raise ApiError(
                404,
                f"model {model!r} does not exist; this server has {', '.join(MODELS)}",
                "model",
                "model_not_found",
            )
        refuse_unsupported(body)
        messages = read_messages(body.get("messages"))
        chars = sum(len(m["content"]) for m in messages)
        if max_chars is not None and chars > max_chars:
            raise ApiError(
                413,
                f"the messages hold {chars} characters, more than the {max_chars} the context can take",
                "messages",
                "context_length_exceeded",
            )
        if body.get("n") not in (None, 1) or isinstance(body.get("n"), bool):
            raise ApiError(
                400,
                f"n must be 1, got {body['n']!r}: every request returns one choice (a2r.n sets the paths)",
                "n",
            )
        knobs = body.get("a2r") or {}
        if not isinstance(knobs, dict) or set(knobs) - set(A2R_KNOBS):
            unknown = sorted(set(knobs) - set(A2R_KNOBS)) if isinstance(knobs, dict) else knobs
            raise ApiError(400, f"a2r takes {', '.join(A2R_KNOBS)}; got {unknown}", "a2r")
        stop = stop_sequences(body.get("stop"))
        if stop and model != "a2r":
            raise ApiError(
                400, "stop applies to the synthesizer, which model self-consistency does not run", "stop"
            )
        stream_options = body.get("stream_options") or {}
        if not isinstance(stream_options, dict):
            raise ApiError(400, "stream_options must be an object", "stream_options")
        return cls(
            model=model,
            messages=messages,
            query=messages[-1]["content"],
            config=configure(base, body, knobs, synthesize=model == "a2r"),
            stream=flag(body, "stream", "stream"),
            include_usage=flag(stream_options, "include_usage", "stream_options.include_usage"),
            return_references=flag(knobs, "return_references", "a2r.return_references"),
            stop=stop,
            seeded=body.get("seed") is not None,
        )

    def problem_id(self, batch: str) -> str:
        """What the run's seeds derive from, with `RunConfig.seed` (`RunConfig.path_seed`): with a `seed` in the
        body, the conversation, so the same request with the same seed explores with the same path seeds (and
        synthesizes with the same seed and reference order) each time it is sent; without one, `batch`, new
        for every request."""
        if not self.seeded:
            return batch
        return "c" + hashlib.sha256(json.dumps(self.messages, sort_keys=True).encode()).hexdigest()[:16]


def flag(source: dict[str, Any], key: str, param: str) -> bool:
    """A boolean field: true, false or absent (null), never a string that merely looks like one."""
    value = source.get(key)
    if value is not None and not isinstance(value, bool):
        raise ApiError(400, f"{param} must be true or false, got {value!r}", param)
    return bool(value)


def refuse_unsupported(body: dict[str, Any]) -> None:
    """A 400 for the first field in UNSUPPORTED that asks for something (a harness's `logprobs: false` asks
    for nothing and passes)."""
    for key, why in UNSUPPORTED.items():
        value = body.get(key)
        if value not in (None, False, 0, "none", [], {}, {"type": "text"}):
            raise ApiError(400, f"{key} is not supported: {why}", key, "unsupported_parameter")


def stop_sequences(stop: Any) -> tuple[str, ...]:
    """OpenAI's `stop`: null, one string, or a list of up to MAX_STOP non-empty strings."""
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOP
        or not all(isinstance(x, str) and x for x in stops)
    ):
        raise ApiError(400, f"stop must be a string or a list of up to {MAX_STOP} non-empty strings", "stop")
    return tuple(stops)


def read_messages(messages: Any) -> tuple[dict[str, str], ...]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", "messages")
    read = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role == "tool" or isinstance(message, dict) and message.get("tool_calls"):
            raise ApiError(400, f"{where}: tool calls are not supported (this server calls no tools)", where)
        if not isinstance(role, str) or role not in ROLES:
            raise ApiError(400, f"{where} must have a role of {', '.join(ROLES)}", where)
        content = message.get("content")
        if content is None and role == "assistant":  # an assistant turn may carry no text
            content = ""
        read.append({"role": ROLES[role], "content": text_content(content, where)})
    if read[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's question", f"messages[{len(read) - 1}]")
    if not read[-1]["content"].strip():
        raise ApiError(400, "the last user message is empty", f"messages[{len(read) - 1}].content")
    return tuple(read)


def text_content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        return "".join(p["text"] for p in content)
    raise ApiError(
        400, f"{where}.content must be text (a string or a list of text parts)", f"{where}.content"
    )


def configure(base: RunConfig, body: dict[str, Any], knobs: dict[str, Any], synthesize: bool) -> RunConfig:
    """The run a request asks for: OpenAI's sampling fields govern the synthesizer only (the explorer's own
    sampling is what makes its paths differ, so `temperature: 0` still explores N distinct paths); `a2r`
    sets N, the explorer and the adaptive policies."""

    def number(source: dict[str, Any], key: str, kind: type, low: float, high: float, param: str) -> Any:
        value = source.get(key)
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or (kind is int and value != int(value))
        ):
            raise ApiError(400, f"{param} must be a finite {kind.__name__}, got {value!r}", param)
        if not low <= value <= high:
            raise ApiError(400, f"{param} must be between {low} and {high}, got {value}", param)
        return kind(value)

    budget = number(body, "max_completion_tokens", int, 1, 1 << 20, "max_completion_tokens")
    budget = budget or number(body, "max_tokens", int, 1, 1 << 20, "max_tokens")
    synthesizer = {
        "max_tokens": budget,
        "temperature": number(body, "temperature", float, 0, 2, "temperature"),
        "top_p": number(body, "top_p", float, 1e-6, 1, "top_p"),
    }
    explorer = {
        "max_tokens": number(knobs, "explorer_max_tokens", int, 1, 1 << 20, "a2r.explorer_max_tokens"),
        "temperature": number(knobs, "explorer_temperature", float, 0, 2, "a2r.explorer_temperature"),
        "top_p": number(knobs, "explorer_top_p", float, 1e-6, 1, "a2r.explorer_top_p"),
    }
    adaptive = {
        "keep_confident": number(knobs, "keep_confident", float, 0, 1, "a2r.keep_confident"),
        "online_confidence": number(knobs, "online_confidence", float, 0, 1, "a2r.online_confidence"),
        "force_answer": number(knobs, "force_answer", int, 1, 1 << 20, "a2r.force_answer"),
        "syntheses": number(knobs, "syntheses", int, 1, MAX_N, "a2r.syntheses"),
    }
    stop = knobs.get("stop")
    if stop is not None and not isinstance(stop, str):
        raise ApiError(400, f"a2r.stop must be a policy string: {STOP_FORMS}; got {stop!r}", "a2r.stop")
    seed = number(body, "seed", int, -(1 << 63), (1 << 63) - 1, "seed")
    try:
        return replace(
            base,
            n=number(knobs, "n", int, 1, MAX_N, "a2r.n") or base.n,
            explorer=replace(base.explorer, **{k: v for k, v in explorer.items() if v is not None}),
            synthesizer=replace(base.synthesizer, **{k: v for k, v in synthesizer.items() if v is not None}),
            synthesize=synthesize,
            skip_synthesis_if_unanimous=synthesize and base.skip_synthesis_if_unanimous,
            stop=stop if stop is not None else base.stop,
            **{k: v for k, v in adaptive.items() if v is not None},
            seed=base.seed if seed is None else seed,
        )
    except ValueError as exc:
        raise ApiError(400, f"a2r: {exc}", "a2r") from None


class ThinkSplitter:
    """Splits a streamed reply into its thinking and its content as pieces arrive, as `split_thinking` splits
    a whole one; it holds back only what could be the start of a think tag cut between pieces."""

    def __init__(self) -> None:
        self.buffer, self.state = "", "start"  # start -> thinking -> content

    def feed(self, piece: str) -> tuple[str, str]:
        """(new thinking, new content) from one more piece."""
        self.buffer += piece
        if self.state == "start":
            if THINK_START.startswith(self.buffer.lstrip()):
                return "", ""
            self.buffer, self.state = self.buffer.lstrip().removeprefix(THINK_START).lstrip(), "thinking"
        if self.state == "thinking":
            head, sep, tail = self.buffer.partition(THINK_END)
            if sep:
                self.buffer, self.state = tail.lstrip(), "content"
                return head, self._content()
            cut = len(head) - next(
                (k for k in range(len(THINK_END) - 1, 0, -1) if head.endswith(THINK_END[:k])), 0
            )
            self.buffer = head[cut:]
            return head[:cut], ""
        return "", self._content()

    def _content(self) -> str:
        out, self.buffer = self.buffer, ""
        return out

    def flush(self) -> tuple[str, str]:
        out = self._content()
        return ("", out) if self.state == "content" else (out, "")


def usage(record: ProblemRecord) -> dict[str, Any]:
    """OpenAI's usage over every engine call of the request, with the per-stage breakdown (a unanimous
    answer's skipped synthesis counts nothing), added up by `records.usage` as every other figure is."""
    used = records.usage([record])
    explorer = {
        "paths": used.paths,
        "prompt_tokens": used.explorer_prompt_tokens,
        "completion_tokens": used.explorer_completion_tokens,
        "cached_tokens": used.explorer_cached_tokens,
        "probe_tokens": used.explorer_probe_tokens,  # asking running paths for their answers
    }
    synthesizer = {
        "calls": used.syntheses,  # a2r.syntheses samples them, each counted
        "prompt_tokens": used.synthesizer_prompt_tokens,
        "completion_tokens": used.synthesizer_completion_tokens,
        "cached_tokens": used.synthesizer_cached_tokens,
    }
    prompt = used.explorer_prompt_tokens + used.synthesizer_prompt_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": used.output_tokens,
        "total_tokens": prompt + used.output_tokens,
        "prompt_tokens_details": {
            "cached_tokens": used.explorer_cached_tokens + used.synthesizer_cached_tokens
        },
        "a2r": {"explorer": explorer, "synthesizer": synthesizer},
    }


def references(record: ProblemRecord) -> dict[str, Any]:
    """What `a2r.return_references` adds: each path's answer, the self-consistency answer and, when
    `a2r.syntheses` sampled several, each synthesis's answer (the reply is the first that gave their vote)."""
    paths = [
        {
            "answer": p.answer,
            "answer_part": p.answer_part,
            "completion_tokens": p.completion_tokens,
            "kept": p.kept,
            "stopped_by": p.stopped_by,
            "probes": p.probes,
            "wave": p.wave,
            "forced_answer": p.forced_answer,
        }
        for p in record.paths
    ]
    syntheses = {"syntheses": [s.answer for s in record.syntheses]} if record.syntheses else {}
    return {"paths": paths, "self_consistency": record.self_consistency["answer"], **syntheses}


def answer_text(record: ProblemRecord, model: str) -> tuple[str, str | None]:
    """The reply the client gets and the engine's finish reason: the synthesis, or (self-consistency) the
    first kept path that gave the voted answer."""
    synthesis = record.synthesizer
    if model == "a2r" and synthesis is not None:
        if synthesis.finish_reason == UNANIMOUS:
            return f"\\boxed{{{synthesis.answer}}}", "stop"
        return synthesis.text, synthesis.finish_reason
    vote = record.self_consistency["answer"]
    kept = [p for p in record.paths if p.kept]
    chosen = next(
        (p for p in kept if vote is not None and p.answer and is_equivalent(vote, p.answer)), kept[0]
    )
    return chosen.text, chosen.finish_reason


def finish_reason(engine_reason: str | None) -> str:
    """OpenAI's finish reason for the engine's: a reply cut at its budget is `length`, any other end `stop`."""
    return "length" if engine_reason == "length" else "stop"


def completion(request: ChatRequest, response_id: str, record: ProblemRecord) -> dict[str, Any]:
    """The whole (non-streamed) response to `request`, its thinking apart in `reasoning_content`."""
    text, reason = answer_text(record, request.model)
    reasoning, content = split_thinking(text)
    message = {"role": "assistant", "content": content, "reasoning_content": reasoning}
    body = {
        "id": response_id,
        "object": "chat.completion",
        "created": request.created,
        "model": request.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(reason)}],
        "usage": usage(record),
    }
    if request.return_references:
        body["a2r"] = references(record)
    return body


def chunk(
    request: ChatRequest,
    response_id: str,
    delta: dict[str, Any] | None,
    finish: str | None = None,
    **extra: Any,
) -> str:
    """One SSE chunk of the response to `request`; `delta` None gives the chunk with no choices that carries
    usage."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    body = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": request.created,
        "model": request.model,
        "choices": choices,
        **extra,
    }
    return f"data: {json.dumps(body)}\n\n"


def deltas(reasoning: str, content: str) -> list[dict[str, str]]:
    """The stream deltas for new thinking and new content, the empty ones left out."""
    return [d for d in ({"reasoning_content": reasoning}, {"content": content}) if next(iter(d.values()))]
