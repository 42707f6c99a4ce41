"""Addressing a running engine from SGLang's frontend language, one forked path at a time.

`sgl.gen` has no per-call seed, request id or hooks, yet parallel paths need them: a seed each so they
differ, an id each so one can be stopped, and hooks so a stop policy hears of every path the moment it
ends, watches it decode, or holds back one it stopped before it was sent. `PathEndpoint` is SGLang's own
`RuntimeEndpoint` that reads them from variables a program stored on the path's stream
(`path.set_var(SEED_VAR, seed)`, ...). The seed is honoured by a server launched with
`--enable-deterministic-inference` (`EngineSpec.deterministic`) and ignored otherwise.

A streamed path is read by `PathEndpoint` itself, from a server that sends each chunk whole (SGLang's default:
every chunk repeats the text and log-probabilities so far, O(T^2) JSON over a T-token path) or as a delta
(`--incremental-streaming-output`, what the online confidence stop launches its explorer with); either way a
hook sees the meta_info so far, its log-probability lists grown in place.

On an engine with data-parallel replicas every request carries `routed_dp_rank`, chosen per prompt: a
fork's prefix-caching prefill and its N paths send the same text, so they reach the replica whose radix
cache holds it, while successive prompts take the replicas in turn.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from sglang.lang.backend.runtime_endpoint import RuntimeEndpoint
from sglang.lang.global_config import global_config
from sglang.utils import http_request

from engine.launch import post
from engine.spec import EngineError, EngineSpec

SEED_VAR = "sampling_seed"
RID_VAR = "rid"
ON_REPLY_VAR = "on_reply"  # called with (text, meta_info) when the engine answers, in the path's thread
ON_PROGRESS_VAR = "on_progress"  # if set, the path streams and this sees each chunk's meta_info so far
PRIORITY_VAR = "priority"  # SGLang's request priority, higher first, on an engine with priority scheduling
SYNTHESIS_PRIORITY = 1  # above explorations, which send none (SGLang ranks those lowest)
SKIP_IF_VAR = "skip_if"  # if set and true when the path is about to be sent, it is not sent (it was stopped)
TRAIL_VAR = "token_trail"  # if set, a `TokenTrail`: the path's continuations are sent as its token ids
# The reply of a path that was never sent, in the engine's own shape.
NOT_SENT = {
    "finish_reason": {"type": "abort", "message": "stopped before it was sent"},
    "prompt_tokens": 0,
    "completion_tokens": 0,
}
RID_END = "."  # closes every request id: SGLang aborts by prefix, and no id ending here prefixes another
# A top-k for requests that only prefill. Without one SGLang takes top-k as "all", and a batch holding such a
# request samples every one of its requests by sorting the whole vocabulary instead of taking the top k;
# filtering the finished request out of the batch does not undo that (SamplingBatchInfo.max_top_k).
PREFILL_TOP_K = 1
# Prompts whose replica is remembered. Forgetting one costs its next request the cached prefix, never its
# answer; this is far more than the problems a run keeps in flight.
PINNED_PROMPTS = 4096
# The meta_info lists an incremental server sends per chunk as deltas (SGLang's tokenizer manager slices these).
STREAMED_LISTS = ("output_token_logprobs", "output_top_logprobs", "output_token_ids_logprobs")
LOGPROB_ARGS = ("return_logprob", "logprob_start_len", "top_logprobs_num", "return_text_in_logprobs")


def new_batch() -> str:
    """A token naming one problem's requests, unique across runs and processes."""
    return uuid.uuid4().hex[:16]


def request_ids(n: int, batch: str | None = None) -> list[str]:
    """`n` explorer path ids of `batch` (default: a new one), none a prefix of another request's id."""
    batch = batch or new_batch()
    return [f"a2r-{batch}-p{i}{RID_END}" for i in range(n)]


def synthesis_ids(count: int, batch: str) -> list[str]:
    """The ids of the `count` syntheses of `batch` (one, or M sampled together with `--syntheses M`)."""
    return [f"a2r-{batch}-s{m}{RID_END}" for m in range(count)]


class DpRanks:
    """One data-parallel replica per prompt, taken in turn, the same one whenever that prompt comes again."""

    def __init__(self, dp_size: int) -> None:
        if dp_size < 1:
            raise ValueError(f"dp_size must be >= 1, got {dp_size}")
        self.dp_size = dp_size
        self._ranks: OrderedDict[str, int] = OrderedDict()
        self._next = 0
        self._lock = threading.Lock()  # a fork's paths send from their own threads

    def rank(self, prompt: str) -> int:
        with self._lock:
            if prompt in self._ranks:
                self._ranks.move_to_end(prompt)
                return self._ranks[prompt]
            rank, self._next = self._next, (self._next + 1) % self.dp_size
            self._ranks[prompt] = rank
            if len(self._ranks) > PINNED_PROMPTS:
                self._ranks.popitem(last=False)
            return rank


class TokenTrail:
    """The token ids of a path generated in several requests, so each continuation is sent as the very tokens
    the engine decoded.

    Sent as text, a continuation is tokenized again by the server, and decoded text need not tokenize back to
    the tokens that produced it (with random weights it seldom does; with trained ones, now and then). The
    radix cache then serves the path only up to the first difference, and the rest is prefilled again. Sent as
    ids, a continuation's prompt is exactly the cached path, and a probe's is the path and its suffix's tokens.
    Only the last two points the path reached are kept: a probe is sent at most one chunk behind its path."""

    KEPT = 2

    def __init__(self) -> None:
        self.prompt: str | None = None  # the text first sent: under data parallelism, the path's replica
        self._reached: dict[str, list[int]] = {}  # text the path reached -> its token ids
        self._lock = threading.Lock()  # a probe reads from its own thread while its path goes on

    def known(self, text: str) -> tuple[str, list[int]] | None:
        """The longest point reached that `text` starts with, and its ids."""
        with self._lock:
            found = [(k, ids) for k, ids in self._reached.items() if text.startswith(k)]
        return max(found, key=lambda item: len(item[0]), default=None)

    def reach(self, text: str, ids: list[int]) -> None:
        with self._lock:
            self._reached[text] = ids
            while len(self._reached) > self.KEPT:
                self._reached.pop(next(iter(self._reached)))


class StreamedReply:
    """One streamed reply put back together chunk by chunk, from whole chunks or deltas (`incremental`).

    `add` returns the chunk's new text and the meta_info so far. Its log-probability lists are this reply's
    own, extended in place, so a reader keeps its place in them and each token is handled once.
    """

    def __init__(self, incremental: bool) -> None:
        self.incremental = incremental
        self.length = 0  # characters of text so far
        self.lists: dict[str, list[Any]] = {}

    def add(self, chunk: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        text = chunk["text"] if self.incremental else chunk["text"][self.length :]
        self.length += len(text)
        meta = dict(chunk["meta_info"])
        for key in meta.keys() & set(STREAMED_LISTS):
            so_far = self.lists.setdefault(key, [])
            so_far.extend(meta[key] if self.incremental else meta[key][len(so_far) :])
            meta[key] = so_far
        return text, meta


class PathEndpoint(RuntimeEndpoint):
    def __init__(
        self, base_url: str, dp_size: int = 1, api_key: str | None = None, incremental: bool = False
    ) -> None:
        super().__init__(base_url, api_key=api_key)
        self.dp_ranks = DpRanks(dp_size)
        self.incremental = incremental  # the server streams deltas (--incremental-streaming-output)
        self._tokens: dict[str, list[int] | None] = {}  # `tokenize`'s answers

    def _add_images(self, s: Any, data: dict[str, Any]) -> None:
        # The one hook `RuntimeEndpoint.generate`, `generate_stream` and the prefix commit of `fork` call with
        # both the stream and the request body.
        super()._add_images(s, data)
        if data["sampling_params"].get("max_new_tokens") == 0:  # the prefix commit: it decodes nothing
            data["sampling_params"].setdefault("top_k", PREFILL_TOP_K)
        seed, rid = s.variables.get(SEED_VAR), s.variables.get(RID_VAR)
        if seed is not None:
            data["sampling_params"]["sampling_seed"] = int(seed)
        if rid is not None:
            data["rid"] = rid
        if (priority := s.variables.get(PRIORITY_VAR)) is not None:
            data["priority"] = priority
        if self.dp_ranks.dp_size > 1:
            trail = s.variables.get(TRAIL_VAR)
            prompt = data["text"] if "text" in data else data["input_ids"]  # `select` may send token ids
            if trail is not None:  # every request of a chunked path goes where its first one went
                trail.prompt = trail.prompt or prompt
                prompt = trail.prompt
            data["routed_dp_rank"] = self.dp_ranks.rank(str(prompt))

    def generate(self, s: Any, sampling_params: Any) -> tuple[str, dict]:
        on_progress, skip_if = s.variables.get(ON_PROGRESS_VAR), s.variables.get(SKIP_IF_VAR)
        # A path stopped before it was sent stays unsent: its abort, sent first, would be dropped as unknown.
        if skip_if is not None and skip_if():
            text, meta = "", dict(NOT_SENT)
        elif on_progress is None and (trail := s.variables.get(TRAIL_VAR)) is not None:
            text, meta = self.generate_on_trail(s, sampling_params, trail)
        elif on_progress is None:
            text, meta = super().generate(s, sampling_params)
        else:  # streamed through SGLang's own client, so a hook can watch the path decode
            text, meta = "", {}
            for piece, meta in self.generate_stream(s, sampling_params):
                text += piece
                on_progress(meta)
        on_reply = s.variables.get(ON_REPLY_VAR)
        if on_reply is not None:
            on_reply(text, meta)
        return text, meta

    def request(self, s: Any, sampling_params: Any) -> dict[str, Any]:
        """The `/generate` body for `s`'s next gen, as `RuntimeEndpoint` builds it, with the path's variables."""
        self._handle_dtype_to_regex(sampling_params)
        params = {
            "skip_special_tokens": global_config.skip_special_tokens_in_output,
            "spaces_between_special_tokens": global_config.spaces_between_special_tokens_in_out,
            **sampling_params.to_srt_kwargs(),
        }
        data = {"text": s.text_, "sampling_params": params}
        data |= {k: v for k in LOGPROB_ARGS if (v := getattr(sampling_params, k, None)) is not None}
        self._add_images(s, data)
        return data

    def generate_on_trail(self, s: Any, sampling_params: Any, trail: TokenTrail) -> tuple[str, dict]:
        """One request of a chunked path, sent as the token ids `trail` knows for its text (the path so far,
        then any suffix, e.g. a probe's, tokenized by the server); its first is sent as text, and asks for
        its prompt's ids. A continuation's reply extends the trail."""
        data, known = self.request(s, sampling_params), trail.known(s.text_)
        rest = None if known is None else self.tokenize(s.text_[len(known[0]) :])
        if known is None:
            data["return_prompt_token_ids"] = True
        elif rest is not None:
            data["input_ids"] = known[1] + rest
            del data["text"]
        response = http_request(
            f"{self.base_url}/generate", json=data, api_key=self.api_key, verify=self.verify
        )
        self._assert_success(response)
        reply = response.json()
        sent = reply.get("prompt_token_ids") if known is None else data.get("input_ids")
        if sent is not None and "output_ids" in reply and (known is None or known[0] == s.text_):
            trail.reach(
                s.text_ + reply["text"], sent + reply["output_ids"]
            )  # a continuation: the path so far
        return reply["text"], reply["meta_info"]

    def tokenize(self, text: str) -> list[int] | None:
        """`text`'s token ids, as the server's tokenizer gives them (no special tokens added), or None where
        the server cannot tokenize (a gateway started without a tokenizer): the request then goes as text.
        Only suffixes come here (a probe's, a forced answer's tag), a few distinct ones a run, so each is asked
        once."""
        if not text:
            return []
        if text not in self._tokens:
            body = {"prompt": text, "add_special_tokens": False}
            try:
                answer = json.loads(post(self.base_url, "/tokenize", body, key=self.api_key))
                self._tokens[text] = list(answer["tokens"])
            except (OSError, EngineError, KeyError, TypeError, ValueError):
                self._tokens[text] = None
        found = self._tokens[text]
        return None if found is None else list(found)

    def generate_stream(self, s: Any, sampling_params: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        """SGLang's streamed `/generate`, read as the server sends it: (new text, meta_info so far) per chunk.
        (`RuntimeEndpoint.generate_stream` takes every chunk's text as whole, so deltas would be cut.)"""
        data = self.request(s, sampling_params) | {"stream": True}
        response = http_request(
            f"{self.base_url}/generate", json=data, stream=True, api_key=self.api_key, verify=self.verify
        )
        self._assert_success(response)
        reply = StreamedReply(self.incremental)
        for line in self.stream_lines(response):
            if not line.startswith(b"data:"):
                continue
            if line.strip() == b"data: [DONE]":
                break
            yield self.read_chunk(reply, line[5:])

    def stream_lines(self, response: Any) -> Iterator[bytes]:
        """The lines of a streamed reply as they arrive (`benchmarks.streaming` meters this and `read_chunk`)."""
        return response.iter_lines(decode_unicode=False)

    def read_chunk(self, reply: StreamedReply, data: bytes) -> tuple[str, dict[str, Any]]:
        """One chunk's JSON, parsed and added to its reply: (new text, meta_info so far)."""
        return reply.add(json.loads(data))

    def lost(self, error: Exception) -> Exception:
        """What a failed request's `error` means for the run: one engine has no other worker to go on with."""
        return error

    def abort(self, rid: str) -> None:
        """Stop the request `rid` (an aborted request still returns its text so far, finish reason `abort`).

        An empty id would stop every request on the engine, and an id without `RID_END` every request it
        prefixes, so both are refused."""
        check_abortable(rid)
        post(self.base_url, "/abort_request", {"rid": rid}, key=self.api_key)


def check_abortable(rid: str) -> None:
    """Refuse an id that would abort more than one request (SGLang aborts every id the given one prefixes)."""
    if not rid.endswith(RID_END) or len(rid) == len(RID_END):
        raise ValueError(f"refusing to abort {rid!r}: only ids from request_ids() address one request")


def connect(spec: EngineSpec, dp_size: int = 1, incremental: bool = False) -> PathEndpoint:
    """The frontend backend of a running engine with `dp_size` data-parallel replicas that streams deltas
    when `incremental` (both as it reports them)."""
    return PathEndpoint(spec.base_url, dp_size, spec.api_key, incremental)
