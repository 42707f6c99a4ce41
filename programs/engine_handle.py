"""A running engine as the A2R programs use it: its frontend backend, its tokenizer and its reported limits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from transformers import AutoTokenizer

from engine.endpoint import PathEndpoint, connect
from engine.gateway import GatewayEndpoint
from engine.launch import EngineError, context_length, flush_cache, model_info, post, server_info
from engine.layout import Engines
from engine.spec import EngineSpec
from engine.workers import check_workers, describe
from programs.core.prompts import chat_prompt

MAX_IN_FLIGHT = 64  # frontend threads per problem are cheap, but not free


class UnservableProblem(ValueError):
    """A problem the engine cannot take (its prompt overflows the context), found before anything is sent:
    that problem fails alone, the run goes on."""


@dataclass
class EngineHandle:
    backend: PathEndpoint
    tokenizer: Any
    context_length: int
    kv_tokens: int | None  # the engine's KV pools, every replica's; None when it does not say (a router)

    @classmethod
    def attach(cls, spec: EngineSpec) -> EngineHandle:
        # A URL may be SGLang's gateway: its workers' model and context, their KV pools added up.
        workers = None if spec.launched else describe(spec.base_url, spec.api_key)
        if workers is not None:
            workers = check_workers(spec.base_url, workers)
            spec = replace(
                spec, context_length=spec.context_length or min(w.context_length or 0 for w in workers)
            )
        info, context = model_info(spec), context_length(spec)
        try:
            server = server_info(spec)
        except OSError:
            server = {}
        path = info.get("tokenizer_path") or info["model_path"]
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise EngineError(
                f"cannot load the tokenizer {path} that {spec.base_url} serves: {exc}"
            ) from None
        # SGLang reports one data-parallel replica's pool; each replica has its own.
        dp = int(server.get("dp_size") or spec.dp)
        kv = server.get("max_total_num_tokens")
        incremental = bool(server.get("incremental_streaming_output"))
        if workers is None:
            return cls(connect(spec, dp, incremental), tokenizer, context, kv * dp if kv else None)
        return cls(
            GatewayEndpoint(spec.base_url, dp, spec.api_key),
            tokenizer,
            context,
            kv * dp * len(workers) if kv else None,
        )

    @classmethod
    def attach_roles(cls, engines: Engines) -> tuple[EngineHandle, EngineHandle]:
        """(explorer, synthesizer) handles of running engines; one engine serving both roles is one handle."""
        explorer = cls.attach(engines.explorer)
        same = engines.synthesizer is engines.explorer
        return explorer, explorer if same else cls.attach(engines.synthesizer)

    @property
    def url(self) -> str:
        return self.backend.base_url

    @property
    def key(self) -> str | None:
        """The engine's API key, which every request to it carries."""
        return self.backend.api_key

    def post(self, route: str, body: dict[str, Any]) -> bytes:
        """A raw request to one of the engine's routes (`/generate`), with its key."""
        return post(self.url, route, body, key=self.key)

    def flush_cache(self) -> None:
        flush_cache(self.url, key=self.key)

    def prompt(self, text: str | Sequence[dict[str, str]], budget: int, thinking: bool, label: str) -> str:
        """`text` as a chat prompt, refused before sending if it and `budget` new tokens overflow the context."""
        prompt = chat_prompt(self.tokenizer, text, thinking)
        tokens = len(self.tokenizer.encode(prompt, add_special_tokens=False))
        if tokens + budget > self.context_length:
            raise UnservableProblem(
                f"{label}: its prompt ({tokens} tokens) plus the budget ({budget}) exceed the context "
                f"({self.context_length})"
            )
        return prompt

    def in_flight(self, tokens_per_problem: int, fallback: int = 8) -> int:
        """Problems this engine's KV pool holds at once at `tokens_per_problem` each."""
        if not self.kv_tokens:
            return fallback
        return max(1, min(MAX_IN_FLIGHT, math.ceil(self.kv_tokens / tokens_per_problem)))
