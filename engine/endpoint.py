"""Addressing a running engine from SGLang's frontend language.

`sgl.gen` has no per-call seed, yet parallel paths need one each. `SeededEndpoint` is SGLang's own
`RuntimeEndpoint` that also forwards a `sampling_seed` a program stored on its stream with
`s.set_var(SEED_VAR, seed)`. The server honours it when launched with `--enable-deterministic-inference`
(`EngineSpec.deterministic`) and ignores it otherwise.
"""

from __future__ import annotations

from typing import Any

from sglang.lang.backend.runtime_endpoint import RuntimeEndpoint

from engine.spec import EngineSpec

SEED_VAR = "sampling_seed"


class SeededEndpoint(RuntimeEndpoint):
    def generate(self, s: Any, sampling_params: Any) -> tuple[str, dict]:
        seed = s.variables.get(SEED_VAR)
        if seed is not None:
            # `sampling_params` is this call's own copy, so patching it does not leak into other calls.
            base = sampling_params.to_srt_kwargs
            sampling_params.to_srt_kwargs = lambda: {**base(), "sampling_seed": int(seed)}
        return super().generate(s, sampling_params)


def connect(spec: EngineSpec) -> SeededEndpoint:
    return SeededEndpoint(spec.base_url)
