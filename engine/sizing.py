"""Co-located engines' shares of one GPU, sized from the models' configs and the memory free at launch.

The split 0.40/0.45 is what A2R-Efficient (Qwen3-4B explorer, Qwen3-8B synthesizer) runs with on an H100 or
H200 and it stays wherever it gives each engine its weights and a usable KV pool and leaves SGLang the
activation reserve it keeps free after CUDA-graph capture (on an 80 GB H100 its 12.6 GB is more than the
split's 15%). Elsewhere (on 24 GB, 0.40 is less than Qwen3-4B's weights) each engine gets its weights, both
keep room for activations, and the rest is KV; a pair that cannot fit even so is refused with the numbers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIB = 2**30
DEFAULT_SHARES = (0.40, 0.45)  # explorer, synthesizer: the H100/H200 result
# What the H100 split leaves outside both static pools (activations, CUDA graphs, the CUDA contexts).
HEADROOM_SHARE = round(1 - sum(DEFAULT_SHARES), 6)
# At least this much per engine: half of the 6 GB each gets on an 80 GB GPU, where SGLang prefills in chunks of
# 8192 tokens; below 60 GB it chunks 4096, and activations scale with the chunk.
ENGINE_HEADROOM_BYTES = 3 * GIB
# SGLang 0.5.23's default prefill chunk by GPU memory (arg_groups/memory_hook.py): (below this many MiB, chunk).
PREFILL_CHUNKS = ((20 * 1024, 2048), (60 * 1024, 4096), (160 * 1024, 8192))
LARGEST_PREFILL_CHUNK = 16384
# One request of the paper's 32k-token budget must fit: with a smaller pool SGLang truncates or refuses it.
MIN_KV_TOKENS = 32768
# The explorer's part of the KV left over when sizing: it holds N paths per problem. About what the H100 split
# gives it with Qwen3-4B/8B (24.5 of 45.2 GiB).
EXPLORER_KV_SHARE = 0.55
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")


class UnsizableModel(ValueError):
    """A model whose memory cannot be read from its config (no config, mixture of experts, quantized)."""


@dataclass(frozen=True)
class ModelShape:
    """The config.json numbers a dense decoder's memory follows from."""

    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool  # the output projection shares the embedding's weights
    dtype_bytes: int
    # max_position_embeddings, the longest sequence it takes; None where the config does not say
    context: int | None = None

    @classmethod
    def from_config(cls, name: str, config: dict[str, Any]) -> ModelShape:
        if any(config.get(key) for key in MOE_KEYS):
            raise UnsizableModel(f"{name} is a mixture of experts; its weights are not sized here")
        if config.get("quantization_config"):
            raise UnsizableModel(f"{name} is quantized; its weights are not sized here")
        dtype = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
        if dtype not in DTYPE_BYTES:
            raise UnsizableModel(f"{name} has weights of dtype {dtype!r}; known: {sorted(DTYPE_BYTES)}")
        context = config.get("max_position_embeddings")
        try:
            heads = int(config["num_attention_heads"])
            return cls(
                name=name,
                layers=int(config["num_hidden_layers"]),
                hidden=int(config["hidden_size"]),
                intermediate=int(config["intermediate_size"]),
                heads=heads,
                kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or config["hidden_size"] // heads),
                vocab=int(config["vocab_size"]),
                tied=bool(config.get("tie_word_embeddings", False)),
                dtype_bytes=DTYPE_BYTES[dtype],
                context=int(context) if context else None,
            )
        except KeyError as exc:
            raise UnsizableModel(f"{name}'s config.json has no {exc.args[0]}") from None

    @property
    def params(self) -> int:
        """Embeddings, the output projection unless tied, and per layer attention, gated MLP and norms."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = 2 * self.hidden * q + 2 * self.hidden * kv
        layer = attention + 3 * self.hidden * self.intermediate + 2 * self.hidden + 2 * self.head_dim
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * layer + self.hidden

    @property
    def weight_bytes(self) -> int:
        return self.params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """Keys and values of every layer, in the model's dtype (SGLang's default KV dtype)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes


def read_config(model: str) -> dict[str, Any]:
    """A model's config.json: from its folder, or (a hub id) downloaded alone, a few kilobytes."""
    folder = Path(model).expanduser()
    try:
        if folder.is_dir():
            return json.loads((folder / "config.json").read_text())
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(model, "config.json")).read_text())
    except (OSError, ValueError) as exc:  # huggingface_hub's errors are OSErrors or ValueErrors
        raise UnsizableModel(f"cannot read {model}'s config.json: {exc}") from None


def read_shape(model: str) -> ModelShape:
    return ModelShape.from_config(model, read_config(model))


def activation_reserve(total_bytes: int, tp: int = 1) -> int:
    """What SGLang 0.5.23 keeps free for an engine's activations when it sizes its KV pool after CUDA-graph
    capture (`runtime_context.pre_capture_activation_reserve_mb`): 512 MB, 1.5 MB per token of the default
    prefill chunk for this GPU, tp/8 GB; at least 10 GB on GPUs above 60 GB.

    A co-located synthesizer, started last, keeps max(what its share leaves, this) free, so headroom below
    this is taken from its KV pool: about 0.9 GB on a 40 GB A100 with the 6 GB the H100 split would leave."""
    mib = total_bytes / 2**20
    chunk = next((size for below, size in PREFILL_CHUNKS if mib < below), LARGEST_PREFILL_CHUNK)
    reserve = 512 + 1.5 * max(chunk, 2048) + tp / 8 * 1024
    if mib > 60 * 1024:
        reserve = max(reserve, 10 * 1024)
    return int(reserve * 2**20)


def colocated_shares(
    explorer: ModelShape,
    synthesizer: ModelShape,
    free_bytes: int,
    tp: int = 1,
    given: tuple[float, float] | None = None,
    min_kv_tokens: int = MIN_KV_TOKENS,
    total_bytes: int | None = None,
) -> tuple[float, float]:
    """Each engine's share of `free_bytes` (one GPU's free memory before the explorer starts) for its weights
    and KV pool, with `tp` GPUs per engine splitting both. `given` shares are used as they are, once they
    hold the weights; otherwise DEFAULT_SHARES where they fit, else shares sized to fit; a pair that cannot
    fit is refused (ValueError) with the numbers. The headroom left for activations is at least SGLang's
    activation reserve on a GPU of `total_bytes` (default: `free_bytes`, a GPU with nothing else on it)."""
    weights = (explorer.weight_bytes / tp, synthesizer.weight_bytes / tp)
    min_kv = (
        min_kv_tokens * explorer.kv_bytes_per_token / tp,
        min_kv_tokens * synthesizer.kv_bytes_per_token / tp,
    )
    if given is not None:
        for model, share, weight in zip((explorer, synthesizer), given, weights, strict=True):
            if share * free_bytes <= weight:
                raise ValueError(
                    f"--gpu-shares gives {model.name} {share} of {gib(free_bytes)} free, {gib(share * free_bytes)}, "
                    f"less than its weights ({gib(weight)} per GPU)"
                )
        return given
    reserve = activation_reserve(total_bytes or free_bytes, tp)
    headroom = max(HEADROOM_SHARE * free_bytes, 2 * ENGINE_HEADROOM_BYTES, reserve)
    defaults_fit = HEADROOM_SHARE * free_bytes >= headroom and all(
        share * free_bytes >= weight + kv
        for share, weight, kv in zip(DEFAULT_SHARES, weights, min_kv, strict=True)
    )
    if defaults_fit:
        return DEFAULT_SHARES
    kv = free_bytes - headroom - sum(weights)
    if kv < sum(min_kv):
        need = sum(weights) + headroom + sum(min_kv)
        raise ValueError(
            f"{explorer.name} and {synthesizer.name} cannot share a GPU with {gib(free_bytes)} free: they need "
            f"{gib(weights[0])} + {gib(weights[1])} of weights, {gib(headroom)} for activations and "
            f"{gib(min_kv[0])} + {gib(min_kv[1])} of KV ({min_kv_tokens} tokens each), {gib(need)} in all. "
            "Use a GPU per engine (or more with --tp), or smaller models"
        )
    explorer_kv = min(max(EXPLORER_KV_SHARE * kv, min_kv[0]), kv - min_kv[1])
    explorer_share = (weights[0] + explorer_kv) / free_bytes
    synthesizer_share = (weights[1] + kv - explorer_kv) / free_bytes
    return floor3(explorer_share), floor3(synthesizer_share)


def floor3(share: float) -> float:
    """A share rounded down to SGLang's three decimals, so rounding never takes memory from the headroom."""
    return math.floor(share * 1000) / 1000


def gib(n_bytes: float) -> str:
    return f"{n_bytes / GIB:.1f} GiB"
