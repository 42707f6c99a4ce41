"""What planning needs to know about this machine's GPU, and what SGLang's deterministic mode will do on it.

The facts are read in a child process: measuring free memory creates a CUDA context (about 0.5 GB), which
in this process would stay on the GPU the engines share for the whole run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

from engine.spec import EngineError

PROBE = (
    "import json, torch; free, total = torch.cuda.mem_get_info(0); "
    "print(json.dumps({'free_bytes': free, 'total_bytes': total, "
    "'capability': list(torch.cuda.get_device_capability(0))}))"
)
PROBE_TIMEOUT_S = 120.0
BLACKWELL_MAJORS = (10, 12)  # where SGLang 0.5.23's deterministic mode falls back to flashinfer
FA3_MAJORS = (8, 9)  # the only GPUs SGLang 0.5.23's fa3 backend starts on (attention_registry.py asserts it)


@dataclass(frozen=True)
class GpuInfo:
    """GPU 0 as the first engine launched on it will find it."""

    free_bytes: int
    total_bytes: int
    capability: tuple[int, int]  # CUDA compute capability, e.g. (9, 0) for an H100


def probe_gpu(python: str = sys.executable) -> GpuInfo:
    """GPU 0's free memory and compute capability, from `torch.cuda` in a child process."""
    try:
        done = subprocess.run(
            [python, "-c", PROBE], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=True
        )
        facts = json.loads(done.stdout.strip().splitlines()[-1])
    except subprocess.CalledProcessError as exc:
        reason = (exc.stderr.strip().splitlines() or [f"exit code {exc.returncode}"])[-1]  # the exception
        raise EngineError(f"cannot read GPU 0's free memory: {reason}") from None
    except (subprocess.TimeoutExpired, IndexError, ValueError) as exc:
        raise EngineError(f"cannot read GPU 0's free memory: {exc}") from None
    return GpuInfo(facts["free_bytes"], facts["total_bytes"], tuple(facts["capability"]))


def deterministic_backend(backend: str | None, capability: tuple[int, int]) -> str:
    """The attention backend SGLang 0.5.23 runs `--enable-deterministic-inference` with: the one given, else
    flashinfer on Blackwell (SM100, SM120) and fa3 elsewhere (`_deterministic_attention_backend`; DeepSeek
    models get triton on Blackwell, which keeps the radix cache)."""
    if backend is not None:
        return backend
    return "flashinfer" if capability[0] in BLACKWELL_MAJORS else "fa3"


def deterministic_refusal(backend: str | None, capability: tuple[int, int]) -> str | None:
    """Why deterministic mode cannot start on this GPU, or None if it can: SGLang picks fa3 below Blackwell,
    including on Turing (7.5, a T4) where fa3 does not run, and the engine would die on an assertion only
    after loading the model. triton is deterministic and runs on every GPU SGLang supports."""
    chosen = deterministic_backend(backend, capability)
    if chosen != "fa3" or capability[0] in FA3_MAJORS:
        return None
    major, minor = capability
    return (
        f"deterministic inference on this GPU (compute capability {major}.{minor}) would run SGLang's fa3 "
        f"attention, which needs compute capability 8.x or 9.x: give --attention-backend triton, or run "
        f"without --deterministic"
    )


def radix_cache_lost(backend: str | None, capability: tuple[int, int]) -> str | None:
    """The deterministic backend that makes SGLang disable its radix cache here, or None if it keeps it."""
    from sglang.srt.arg_groups.choices import RADIX_SUPPORTED_DETERMINISTIC_ATTENTION_BACKEND

    chosen = deterministic_backend(backend, capability)
    return None if chosen in RADIX_SUPPORTED_DETERMINISTIC_ATTENTION_BACKEND else chosen
