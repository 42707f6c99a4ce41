"""The run's configuration: sampling defaults per role and the A2R knobs, declared once.

Every record and summary carries `RunConfig.to_dict()`, so a result always says what produced it.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

# Qwen3's recommended thinking-mode sampling; both roles think.
QWEN3_THINKING = {"temperature": 0.6, "top_p": 0.95, "top_k": 20}
# Token budgets: the paper's paths run 15.7k-20.5k tokens and synthesis 4.4k-5.8k (Table 4) on a GPU; the
# CPU tiny model only needs enough room to show the pipeline working.
BUDGETS = {"cuda": {"explorer": 32768, "synthesizer": 16384}, "cpu": {"explorer": 160, "synthesizer": 160}}


@dataclass(frozen=True)
class SamplingConfig:
    """How one role samples; passed whole to `sgl.gen`."""

    max_tokens: int
    temperature: float = QWEN3_THINKING["temperature"]
    top_p: float = QWEN3_THINKING["top_p"]
    top_k: int = QWEN3_THINKING["top_k"]
    ignore_eos: bool = False  # decode exactly max_tokens (fixed-length throughput runs, random weights)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def gen_kwargs(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunConfig:
    """What an A2R run does, apart from where its engines are."""

    n: int
    explorer: SamplingConfig
    synthesizer: SamplingConfig
    explorer_model: str
    synthesizer_model: str
    seed: int = 0
    shuffle_references: bool = False
    thinking: bool = True
    synthesize: bool = True  # False: exploration and self-consistency only
    extra: dict[str, Any] = field(default_factory=dict)  # anything else that shaped the results

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def path_seed(self, problem_id: str, path: int) -> int:
        """A distinct seed per path, stable across reruns and problem order.

        One seed shared by parallel samples can make them identical (sglang PR #28805).
        """
        return zlib.crc32(f"{self.seed}/{problem_id}/{path}".encode()) & 0x7FFFFFFF
