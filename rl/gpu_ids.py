"""Which GPU a rollout engine's SGLang server runs on, decided in its Ray actor without opening a CUDA context.

The actor itself computes nothing on the GPU: its server is a separate process. A `torch.cuda` call in the
actor would create a CUDA context there that SGLang's sleep never frees (about 0.5 GB per GPU), so GPU
identities come from Ray and NVML instead. OpenRLHF's vLLM actor has the same two concerns
(openrlhf/trainer/ray/vllm_engine.py): under `RAY_EXPERIMENTAL_NOSET_*_VISIBLE_DEVICES` Ray leaves
CUDA_VISIBLE_DEVICES alone, so the actor must name its Ray-assigned GPU itself or every engine starts on GPU 0;
and CUDA-IPC weight handles are keyed by the GPU they were made on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

CUDA_VISIBLE = "CUDA_VISIBLE_DEVICES"


def server_gpu_env(env: Mapping[str, str], ray_gpu_ids: Sequence[int | str]) -> dict[str, str]:
    """Environment the server needs on top of the actor's: its Ray GPU when Ray was told not to set it."""
    from openrlhf.trainer.ray.utils import ray_noset_visible_devices  # OpenRLHF's list of NOSET variables

    if not ray_noset_visible_devices(env):
        return {}  # Ray already set CUDA_VISIBLE_DEVICES to this actor's GPU; the server inherits it
    if not ray_gpu_ids:
        raise RuntimeError(
            "RAY_EXPERIMENTAL_NOSET_*_VISIBLE_DEVICES is set but Ray assigned this rollout actor no GPU, "
            "so its SGLang server would start on GPU 0"
        )
    return {CUDA_VISIBLE: ",".join(map(str, ray_gpu_ids))}


def visible_device_uuid(visible: str | None, nvml_uuids: Sequence[str], index: int = 0) -> str:
    """NVML's UUID of CUDA device `index` in a process whose CUDA_VISIBLE_DEVICES is `visible`.

    Entries are NVML indices or (prefixes of) UUIDs, as CUDA reads them. Indices assume CUDA enumerates GPUs
    in NVML's (PCI bus) order, which holds for identical GPUs and is what Ray's own GPU ids assume.
    """
    entries = [e.strip() for e in visible.split(",")] if visible else [str(i) for i in range(len(nvml_uuids))]
    if not 0 <= index < len(entries):
        raise ValueError(f"CUDA device {index} does not exist with {CUDA_VISIBLE}={visible!r}")
    entry = entries[index]
    if entry.isdigit():
        if int(entry) >= len(nvml_uuids):
            raise ValueError(f"{CUDA_VISIBLE} names GPU {entry}, but NVML sees {len(nvml_uuids)} GPUs")
        return nvml_uuids[int(entry)]
    matches = [uuid for uuid in nvml_uuids if uuid.startswith(entry)]
    if len(matches) != 1:
        raise ValueError(
            f"{CUDA_VISIBLE} entry {entry!r} matches {len(matches)} of this node's GPUs, not one"
        )
    return matches[0]


def _bare(uuid: str) -> str:
    return uuid.lower().removeprefix("gpu-")  # NVML writes "GPU-<uuid>", torch's str(props.uuid) "<uuid>"


def handle_for_gpu(ipc_handles: Mapping[str, Any], uuid: str) -> Any:
    """The trainer's CUDA-IPC handle that was made on GPU `uuid` (OpenRLHF keys them by torch's device UUID)."""
    for key, handle in ipc_handles.items():
        if _bare(key) == _bare(uuid):
            return handle
    raise RuntimeError(
        f"the trainer sent no weight handle made on this engine's GPU {uuid} (it sent {sorted(ipc_handles)}): "
        "CUDA-IPC weight sync needs each engine on a GPU of a trainer rank (colocated)"
    )


def nvml_uuids() -> list[str]:
    """Every GPU's UUID on this node in NVML's order; NVML opens no CUDA context."""
    import pynvml

    pynvml.nvmlInit()
    try:
        uuids = [
            pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
            for i in range(pynvml.nvmlDeviceGetCount())
        ]
    finally:
        pynvml.nvmlShutdown()
    return [u.decode() if isinstance(u, bytes) else u for u in uuids]
