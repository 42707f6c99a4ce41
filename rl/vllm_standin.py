"""The `vllm` that OpenRLHF 0.11.2 imports, stood in for: SGLang serves the rollouts and vLLM is not installed.

OpenRLHF's modules import `vllm` at top level even when no vLLM engine runs. `install_vllm_standin` puts
modules holding just the names they use into `sys.modules`, in the driver and, through Ray's
`worker_process_setup_hook` (`with_standin_hook`), in every Ray worker. Most names are shapes: the sampling
parameters the trainer builds and the outputs it reads back. The process-group pair is real: it is the
trainer's end of the weight-sync group, built the way SGLang builds its own end.
"""

from __future__ import annotations

import functools
import sys
import uuid
from dataclasses import dataclass
from types import ModuleType
from typing import Any

OPENRLHF_GROUP = (
    "openrlhf"  # the weight-sync group name OpenRLHF's actor gives (ppo_actor._init_vllm_sync_group)
)
# Read by OpenRLHF only: below 0.16 it sets NCCL_CUMEM_ENABLE=0 in the trainer, which is SGLang's own default.
STANDIN_VERSION = "0.0.0+sglang"
STANDIN_HOOK = f"{__name__}.install_vllm_standin"


# -- what the trainer hands to an engine and reads back, shaped like vLLM's objects ----------------------------


@dataclass
class SamplingParams:
    """The fields of vLLM's SamplingParams that OpenRLHF sets (samples_generator._dispatch_prompts_to_vllm)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int | None = None
    min_tokens: int = 0
    skip_special_tokens: bool = True
    logprobs: int | None = None
    seed: int | None = None  # per-request sampling seed; `rl.sglang_rollout` sets one per sample


@dataclass(frozen=True)
class Logprob:
    logprob: float


@dataclass
class CompletionOutput:
    token_ids: list[int]
    text: str
    finish_reason: str | None  # "length" (budget reached) or "stop", as vLLM reports them
    logprobs: list[dict[int, Logprob]] | None  # per generated token: {token id: its log-probability}


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    num_cached_tokens: int  # prompt tokens the engine took from its prefix cache


# -- the trainer's end of the weight-sync group ---------------------------------------------------------------


@dataclass(frozen=True)
class StatelessProcessGroup:
    """Where the weight-sync group meets; the group itself is made by `PyNcclCommunicator`."""

    host: str
    port: int
    rank: int
    world_size: int

    @classmethod
    def create(cls, host: str, port: int, rank: int, world_size: int) -> StatelessProcessGroup:
        return cls(host, port, rank, world_size)


class PyNcclCommunicator:
    """Trainer rank 0 in the torch process group the SGLang engines join through `init_weights_update_group`
    (NCCL on GPUs, gloo on the CPU), made by SGLang's own helper so both ends rendezvous alike."""

    def __init__(self, group: StatelessProcessGroup, device: Any) -> None:
        import torch
        from sglang.srt.utils import init_custom_process_group

        backend = "gloo" if torch.device(device).type == "cpu" else "nccl"
        self.group = init_custom_process_group(
            backend=backend,
            init_method=f"tcp://{group.host}:{group.port}",
            world_size=group.world_size,
            rank=group.rank,
            group_name=OPENRLHF_GROUP,
        )

    def broadcast(self, tensor: Any, src: int, stream: Any = None) -> None:
        import torch

        torch.distributed.broadcast(tensor, src=src, group=self.group)


# -- the modules ---------------------------------------------------------------------------------------------


class TokensPrompt(dict):
    """vLLM's tokenized-prompt dict; imported by OpenRLHF's vLLM actor, which this backend does not use."""


def random_uuid() -> str:
    return uuid.uuid4().hex


def standin_modules() -> dict[str, ModuleType]:
    """`vllm` and the submodules OpenRLHF 0.11.2 imports from it, holding only the names it uses."""
    names = {
        "vllm": {"SamplingParams": SamplingParams, "__version__": STANDIN_VERSION},
        "vllm.inputs": {"TokensPrompt": TokensPrompt},
        "vllm.utils": {"random_uuid": random_uuid},
        "vllm.distributed": {},
        "vllm.distributed.utils": {"StatelessProcessGroup": StatelessProcessGroup},
        "vllm.distributed.device_communicators": {},
        "vllm.distributed.device_communicators.pynccl": {"PyNcclCommunicator": PyNcclCommunicator},
    }
    modules = {}
    for name, attrs in names.items():
        module = ModuleType(name, f"Stand-in installed by {__name__}: SGLang serves the rollouts.")
        module.__path__ = []  # a package, so its submodules import
        module.__dict__.update(attrs)
        modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)
    return modules


def install_vllm_standin() -> None:
    """Make `import vllm` give the stand-in in this process (the driver; Ray workers run it as their setup hook)."""
    sys.modules.update(standin_modules())


def with_standin_hook(init: Any) -> Any:
    """`ray.init` that also installs the vllm stand-in in every worker, whatever runtime_env it is given."""

    @functools.wraps(init)
    def wrapped(*args: Any, runtime_env: dict | None = None, **kwargs: Any) -> Any:
        return init(
            *args, runtime_env={"worker_process_setup_hook": STANDIN_HOOK, **(runtime_env or {})}, **kwargs
        )

    return wrapped
