"""Where the explorer and synthesizer engines run: one config, planned into one or two `EngineSpec`s.

Layouts:
- same model: symmetric A2R serves both roles from one engine, never two copies of the weights;
- remote: a URL (an SGLang server or sglang-router) for either role; launched by somebody else;
- split: two engines on disjoint GPUs (each its own TP group) when there are enough GPUs;
- co-located: both engines on one GPU. `--mem-fraction-static` is a share of the memory *free when the
  process starts*, so the explorer launches first and the synthesizer's fraction is taken of what is left;
  the shares themselves are sized from the models and the GPU (`engine.sizing.colocated_shares`);
- cpu: SGLang's CPU engine, each engine pinned to its own cores so two engines do not thrash, and the frontend
  (the process driving them: SGLang's frontend threads, tokenizing, HTTP) on the synthesizer's cores. The
  explorer decodes N paths per problem to the synthesizer's one, so it is the engine that must not share.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace

from engine.gpu import GpuInfo, deterministic_refusal, radix_cache_lost
from engine.ports import free_ports
from engine.sizing import DEFAULT_SHARES, UnsizableModel, colocated_shares, read_shape
from engine.spec import CPU_READY_TIMEOUT_S, PRIORITY_FLAGS, READY_TIMEOUT_S, EngineSpec, check_server_args

logger = logging.getLogger(__name__)
ENGINE_KEY_ENV = "A2R_ENGINE_KEY"  # the engines' key, for servers given by URL


@dataclass
class EngineConfig:
    """Everything a user says about engines; `plan` turns it into specs."""

    explorer_model: str | None = field(default=None, metadata={"help": "explorer model path or hub id"})
    synthesizer_model: str | None = field(
        default=None, metadata={"help": "synthesizer model path or hub id (same as explorer: one engine)"}
    )
    explorer_url: str | None = field(
        default=None, metadata={"help": "use a running SGLang server as explorer"}
    )
    synthesizer_url: str | None = field(
        default=None,
        metadata={"help": "use a running SGLang server as synthesizer (default: the explorer's)"},
    )
    device: str | None = field(default=None, metadata={"help": "cuda or cpu (default: cuda if available)"})
    tp: int = field(default=1, metadata={"help": "tensor-parallel GPUs per engine"})
    dp: int = field(default=1, metadata={"help": "data-parallel replicas per engine"})
    gpu_shares: tuple[float, float] | None = field(
        default=None,
        metadata={
            "help": "co-located: GPU memory shares (explorer, synthesizer) for weights + KV (default: 0.40 "
            "0.45 where they fit, else sized from the models' configs and the free memory)"
        },
    )
    max_total_tokens: int | None = field(
        default=None, metadata={"help": "bound each engine's KV pool (tokens)"}
    )
    context_length: int | None = field(default=None, metadata={"help": "override the models' context length"})
    load_format: str | None = field(
        default=None, metadata={"help": "'dummy' serves random weights from config"}
    )
    deterministic: bool = field(default=False, metadata={"help": "engines honour per-path sampling seeds"})
    attention_backend: str | None = field(
        default=None,
        metadata={"help": "SGLang's attention backend (default: SGLang's choice; cpu: torch_native)"},
    )
    ready_timeout: float | None = field(
        default=None,
        metadata={
            "help": f"seconds each engine may take to start (default: {READY_TIMEOUT_S:g} on GPU, "
            f"{CPU_READY_TIMEOUT_S:g} on CPU)"
        },
    )
    port: int | None = field(
        default=None, metadata={"help": "first port; the synthesizer takes the next (default: free ports)"}
    )
    engine_key: str | None = field(
        default=None,
        metadata={
            "help": "API key of the servers given by URL, and the one launched engines take (default: "
            f"${ENGINE_KEY_ENV}, else a random key per run); the environment keeps it out of `ps`"
        },
    )
    explorer_server_args: str | None = field(
        default=None,
        metadata={
            "help": 'further SGLang server flags for the explorer engine, one string (e.g. "--kv-cache-dtype '
            "fp8_e4m3\"); checked by SGLang's own parser before anything starts"
        },
    )
    synthesizer_server_args: str | None = field(
        default=None,
        metadata={
            "help": "further SGLang server flags for the synthesizer engine, as --explorer-server-args"
        },
    )
    synthesis_priority: bool = field(
        default=True,
        metadata={
            "help": "one engine serving both roles: syntheses go ahead of waiting explorations (SGLang's "
            "priority scheduling; --no-synthesis-priority: first come, first served)"
        },
    )

    def __post_init__(self) -> None:
        if self.gpu_shares is not None:
            explorer_share, synthesizer_share = self.gpu_shares
            if explorer_share <= 0 or synthesizer_share <= 0 or explorer_share + synthesizer_share >= 1:
                raise ValueError(f"gpu_shares must be positive and sum below 1, got {self.gpu_shares}")


@dataclass(frozen=True)
class Engines:
    """The planned engines; `explorer is synthesizer` when one engine serves both roles."""

    explorer: EngineSpec
    synthesizer: EngineSpec
    layout: str
    sequential: bool = False  # start the synthesizer only once the explorer is up (co-located GPU)
    frontend_cores: tuple[int, ...] = ()  # cpu: where the process driving the engines runs (empty: anywhere)

    @property
    def to_launch(self) -> list[EngineSpec]:
        specs = [self.explorer] if self.explorer is self.synthesizer else [self.explorer, self.synthesizer]
        return [s for s in specs if s.launched]


def plan(
    config: EngineConfig,
    *,
    device: str,
    gpus: int = 0,
    cpu_count: int | None = None,
    gpu: GpuInfo | None = None,
) -> Engines:
    """Plan engines for `config` on a machine with `gpus` GPUs (cuda) or `cpu_count` cores (cpu; default: the
    cores this process may run on).

    `gpu` (GPU 0's free memory and compute capability, `engine.gpu.probe_gpu`) sizes co-located engines and
    says whether deterministic mode keeps the prefix cache; without it the H100 split is planned unchecked."""
    explorer_model = config.explorer_model
    synthesizer_model = config.synthesizer_model or explorer_model
    if explorer_model is None and config.explorer_url is None:
        raise ValueError("no explorer model: give --explorer-model or --explorer-url")
    ports = [config.port, config.port + 1] if config.port else free_ports(2)
    base = EngineSpec(
        model=explorer_model or "",
        device=device,
        tp=config.tp,
        dp=config.dp,
        max_total_tokens=config.max_total_tokens,
        context_length=config.context_length,
        load_format=config.load_format,
        deterministic=config.deterministic,
        attention_backend=config.attention_backend,
        ready_timeout=config.ready_timeout,
        port=ports[0],
        api_key=config.engine_key or os.environ.get(ENGINE_KEY_ENV) or None,
    )
    if config.deterministic and device == "cuda" and gpu is not None and config.explorer_url is None:
        refusal = deterministic_refusal(config.attention_backend, gpu.capability)
        if refusal is not None:
            raise ValueError(refusal)
        warn_if_radix_cache_lost(config.attention_backend, gpu)
    explorer_args = check_server_args(config.explorer_server_args, "--explorer-server-args")
    synthesizer_args = check_server_args(config.synthesizer_server_args, "--synthesizer-server-args")
    if explorer_args and config.explorer_url:
        raise ValueError(f"--explorer-server-args: the explorer at {config.explorer_url} is not started here")
    explorer = replace(base, url=config.explorer_url, extra_args=explorer_args)
    # An explorer URL alone serves both roles, as one model named twice does.
    synthesizer_url = config.synthesizer_url or (None if config.synthesizer_model else config.explorer_url)
    same = config.explorer_url == synthesizer_url and (
        config.explorer_url is not None or synthesizer_model == explorer_model
    )
    if same:
        if synthesizer_args:
            raise ValueError(
                "--synthesizer-server-args: one engine serves both roles; give its flags with "
                "--explorer-server-args"
            )
        if config.synthesis_priority and explorer.launched:
            explorer = replace(explorer, extra_args=(*explorer.extra_args, *PRIORITY_FLAGS))
        return Engines(explorer, explorer, layout="same-model")
    if synthesizer_args and config.synthesizer_url:
        raise ValueError(
            f"--synthesizer-server-args: the synthesizer at {config.synthesizer_url} is not started here"
        )
    synthesizer = replace(
        base,
        model=synthesizer_model or "",
        port=ports[1],
        url=config.synthesizer_url,
        extra_args=synthesizer_args,
    )
    if not (explorer.launched and synthesizer.launched):
        return Engines(explorer, synthesizer, layout="remote")
    if device == "cpu":
        cores = list(range(cpu_count)) if cpu_count else sorted(os.sched_getaffinity(0))
        half = max(1, len(cores) // 2)
        explorer_cores, synthesizer_cores = tuple(cores[:half]), tuple(cores[half:] or cores[:half])
        return Engines(
            replace(explorer, cpu_cores=explorer_cores),
            replace(synthesizer, cpu_cores=synthesizer_cores),
            layout="cpu",
            frontend_cores=synthesizer_cores,
        )
    per_engine = config.tp * config.dp
    if gpus >= 2 * per_engine:
        return Engines(explorer, replace(synthesizer, base_gpu_id=per_engine), layout="split")
    explorer_share, synthesizer_share = gpu_shares(config, explorer.model, synthesizer.model, gpu)
    return Engines(
        replace(explorer, mem_fraction_static=explorer_share),
        # What the explorer took is gone when the synthesizer measures free memory.
        replace(synthesizer, mem_fraction_static=round(synthesizer_share / (1 - explorer_share), 4)),
        layout="co-located",
        sequential=True,
    )


def gpu_shares(
    config: EngineConfig, explorer_model: str, synthesizer_model: str, gpu: GpuInfo | None
) -> tuple[float, float]:
    """The co-located engines' shares: sized for `gpu` from the models' configs, the given or default split
    when there is no GPU to size for (planning on a machine without one) or a model cannot be sized."""
    if gpu is None:
        return config.gpu_shares or DEFAULT_SHARES
    try:
        shapes = read_shape(explorer_model), read_shape(synthesizer_model)
    except UnsizableModel as exc:
        shares = config.gpu_shares or DEFAULT_SHARES
        logger.warning("co-located engines get GPU shares %s unchecked: %s", shares, exc)
        return shares
    return colocated_shares(
        *shapes, gpu.free_bytes, tp=config.tp, given=config.gpu_shares, total_bytes=gpu.total_bytes
    )


def warn_if_radix_cache_lost(backend: str | None, gpu: GpuInfo) -> None:
    """Deterministic mode with an attention backend outside SGLang's radix-capable list disables the prefix
    cache: fork then prefills the prompt once per path, silently. Say so before anything starts."""
    lost = radix_cache_lost(backend, gpu.capability)
    if lost is not None:
        major, minor = gpu.capability
        logger.warning(
            "deterministic inference on this GPU (compute capability %d.%d) runs SGLang's %s attention, which "
            "disables the radix cache: every forked path prefills the prompt again (no prefix sharing, "
            "cached_tokens 0). --attention-backend triton or fa4 keeps it.",
            major,
            minor,
            lost,
        )
