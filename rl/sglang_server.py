"""The SGLang server process behind one rollout engine (its settings, and a launch that dies with the Ray actor),
kept apart from the actor's OpenRLHF calls in `rl.sglang_rollout`."""

from __future__ import annotations

import subprocess
import threading
from concurrent.futures import Future
from pathlib import Path

from engine.launch import new_key, start
from engine.spec import EngineSpec


def rollout_spec(
    model: str,
    *,
    port: int,
    device: str = "cuda",
    seed: int = 0,
    max_model_len: int | None = None,
    gpu_memory_utilization: float | None = None,
    enable_prefix_caching: bool = True,
    enable_sleep: bool = False,
    deterministic: bool = False,
    enforce_eager: bool = False,
    env: dict[str, str] | None = None,
) -> EngineSpec:
    """The SGLang server for one rollout engine, from the settings OpenRLHF gives its vLLM engines."""
    if enable_sleep and device != "cuda":
        raise ValueError(
            "sleep/wake needs SGLang's memory saver, which needs CUDA; on the CPU run without sleep"
        )
    extra = ["--random-seed", str(seed)]
    extra += ["--disable-radix-cache"] if not enable_prefix_caching else []
    extra += ["--disable-cuda-graph"] if enforce_eager else []
    # The first rollout runs before any weight sync, so weights released by sleep() must come back.
    extra += ["--enable-memory-saver", "--enable-weights-cpu-backup"] if enable_sleep else []
    return EngineSpec(
        model=model,
        device=device,
        mem_fraction_static=gpu_memory_utilization if device == "cuda" else None,
        context_length=max_model_len,
        deterministic=deterministic,
        port=port,
        extra_args=tuple(extra),
        env=dict(env or {}),
        api_key=new_key(),  # its weight and memory routes answer only the actor that launched it
    )


def launch_tied(spec: EngineSpec, log: Path) -> subprocess.Popen:
    """`engine.launch.start` from a thread that lives as long as this process, so the server dies with the
    Ray actor even when Ray SIGKILLs it.

    The server's parent-death signal fires when the *thread* that started it ends, and a Ray actor's calls
    may run on threads that do not last.
    """
    ready: Future[subprocess.Popen] = Future()

    def keeper() -> None:
        try:
            ready.set_result(start(spec, log))
        except BaseException as exc:
            ready.set_exception(exc)
            return
        threading.Event().wait()  # never set: this thread lives as long as the process, and so does the server

    threading.Thread(target=keeper, name="sglang-server-keeper", daemon=True).start()
    return ready.result()
