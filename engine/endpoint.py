"""Addressing a running engine from SGLang's frontend language, one forked path at a time.

`sgl.gen` has no per-call seed, request id or hooks, yet parallel paths need them: a seed each so they
differ, an id each so one can be stopped, and hooks so a stop policy hears of every path the moment it
ends, or watches it decode. `PathEndpoint` is SGLang's own `RuntimeEndpoint` that reads them from variables a program
stored on the path's stream (`path.set_var(SEED_VAR, seed)`, ...). The seed is honoured by a server
launched with `--enable-deterministic-inference` (`EngineSpec.deterministic`) and ignored otherwise.
"""

from __future__ import annotations

import uuid
from typing import Any

from sglang.lang.backend.runtime_endpoint import RuntimeEndpoint

from engine.launch import post
from engine.spec import EngineSpec

SEED_VAR = "sampling_seed"
RID_VAR = "rid"
ON_REPLY_VAR = "on_reply"  # called with (text, meta_info) when the engine answers, in the path's thread
ON_PROGRESS_VAR = "on_progress"  # if set, the path streams and this sees each chunk's (cumulative) meta_info
RID_END = "."  # closes every request id: SGLang aborts by prefix, and no id ending here prefixes another


def new_batch() -> str:
    """A token naming one problem's requests, unique across runs and processes."""
    return uuid.uuid4().hex[:16]


def request_ids(n: int, batch: str | None = None) -> list[str]:
    """`n` explorer path ids of `batch` (default: a new one), none a prefix of another request's id."""
    batch = batch or new_batch()
    return [f"a2r-{batch}-p{i}{RID_END}" for i in range(n)]


def synthesis_id(batch: str) -> str:
    return f"a2r-{batch}-s{RID_END}"


class PathEndpoint(RuntimeEndpoint):
    def _add_images(self, s: Any, data: dict[str, Any]) -> None:
        # The one hook `RuntimeEndpoint.generate` calls with both the stream and the request body.
        super()._add_images(s, data)
        seed, rid = s.variables.get(SEED_VAR), s.variables.get(RID_VAR)
        if seed is not None:
            data["sampling_params"]["sampling_seed"] = int(seed)
        if rid is not None:
            data["rid"] = rid

    def generate(self, s: Any, sampling_params: Any) -> tuple[str, dict]:
        on_progress = s.variables.get(ON_PROGRESS_VAR)
        if on_progress is None:
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

    def abort(self, rid: str) -> None:
        """Stop the request `rid` (an aborted request still returns its text so far, finish reason `abort`).

        An empty id would stop every request on the engine, and an id without `RID_END` every request it
        prefixes, so both are refused."""
        if not rid.endswith(RID_END) or len(rid) == len(RID_END):
            raise ValueError(f"refusing to abort {rid!r}: only ids from request_ids() address one request")
        post(self.base_url, "/abort_request", {"rid": rid})


def connect(spec: EngineSpec) -> PathEndpoint:
    return PathEndpoint(spec.base_url)
