"""What an SGLang server is (`EngineSpec`) and the one function that turns it into a launch command.

GPU and CPU launches are built by the same code, so the GPU arguments that cannot run on these CPU
machines are still produced, and tested, by the function the CPU path exercises.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    import psutil

# A pure-PyTorch stand-in for SGLang's CUDA-only kernel wheel; put on the CPU server's path only.
CPU_KERNEL_DIR = Path(__file__).resolve().parent / "cpu_kernel"

DEVICES = ("cuda", "cpu")
SERVER_MODULE = "sglang.launch_server"  # what `launch_command` runs, and how its processes are recognised
# SGLang's CPU engine, as these machines run it (the one place its defaults live):
# SGLang binds its inter-process ZMQ sockets as files in the temporary directory, and a unix socket path holds at
# most 107 bytes: past this directory length a server cannot start, so it gets a short one instead.
MAX_SOCKET_DIR = 64
SHORT_TMPDIR = "/tmp"
CPU_KV_TOKENS = 65536  # without a bound SGLang sizes the CPU KV pool from system memory (~15 GB, 30 s)
CPU_ATTENTION_BACKEND = (
    "torch_native"  # the only attention backend SGLang's CPU engine has without AMX kernels
)
# How long an engine may take to answer. On a GPU: a cold download of Qwen3-8B's 16 GB at 25 MB/s is 11
# minutes, loading and CUDA-graph capture add a few, and two engines starting at once share the link.
READY_TIMEOUT_S = 1800.0
CPU_READY_TIMEOUT_S = 600.0  # the offline models are local and small; this is a hang, not a download


# What `launch_command` sets from the plan; extra server arguments may not set these again.
PLANNED_FLAGS = ("--model-path", "--host", "--port", "--device")
# One engine serving both roles puts syntheses ahead of waiting explorations (requests carry a priority, higher
# first); without preemption, so a running path is never thrown back for one (SGLang preempts at a difference
# of 10 otherwise, and a request with no priority ranks lowest).
PRIORITY_FLAGS = ("--enable-priority-scheduling", "--disable-priority-preemption")


class ServerArgsError(ValueError):
    """Extra SGLang server arguments that SGLang's own parser refuses."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ServerArgsError(message)


def check_server_args(text: str | None, flag: str) -> tuple[str, ...]:
    """`text` (the value of `flag`) split as a shell would and parsed by SGLang's own server parser, so a
    wrong one is refused before any engine starts; the arguments, to append to the launch command."""
    if not text:
        return ()
    from sglang.srt.server_args import ServerArgs

    try:
        args = tuple(shlex.split(text))
    except ValueError as exc:
        raise ServerArgsError(f"{flag}: cannot split {text!r}: {exc}") from None
    parser = _Parser(
        prog=flag, add_help=False, allow_abbrev=False
    )  # flags recorded whole, as SGLang names them
    ServerArgs.add_cli_args(parser)
    planned = [a for a in args if a.split("=")[0] in PLANNED_FLAGS]
    if planned:
        raise ServerArgsError(f"{flag}: {', '.join(planned)} is set by the plan, not here")
    try:
        _, unknown = parser.parse_known_args(["--model-path", "m", *args])
    except ServerArgsError as exc:
        raise ServerArgsError(f"{flag}: {exc}") from None
    if unknown:
        raise ServerArgsError(f"{flag}: SGLang's server does not know {' '.join(unknown)}")
    return args


class EngineError(RuntimeError):
    """An engine could not be started or reached; the message says which and why."""


def auth(key: str | None) -> dict[str, str]:
    """The header an engine with `key` requires (none for an engine without one)."""
    return {"Authorization": f"Bearer {key}"} if key else {}


@dataclass(frozen=True)
class EngineSpec:
    """One SGLang server: launched here, or already running at `url` (then nothing else is used)."""

    model: str  # local path or hub id
    device: str = "cuda"  # "cuda" or "cpu"
    tp: int = 1  # tensor-parallel GPUs per replica
    dp: int = 1  # data-parallel replicas
    base_gpu_id: int = 0  # first GPU this server uses
    mem_fraction_static: float | None = None  # share of the GPU memory free at launch for weights + KV
    max_total_tokens: int | None = None  # bound on the KV pool, in tokens (CPU: CPU_KV_TOKENS unless set)
    context_length: int | None = None  # override the model's context length
    attention_backend: str | None = None  # None: SGLang's choice (flashinfer/fa3 on GPU), torch_native on CPU
    load_format: str | None = None  # "dummy": random weights from config.json alone
    host: str = "127.0.0.1"
    port: int = 30000
    cpu_cores: tuple[int, ...] = ()  # CPU: the cores this server is pinned to (empty: all)
    deterministic: bool = False  # honour per-request sampling seeds (SGLang's deterministic mode)
    extra_args: tuple[str, ...] = ()  # any further `sglang.launch_server` flags, passed through
    ready_timeout: float | None = None  # seconds to wait for it to answer (default by device)
    url: str | None = None  # an existing server or sglang-router: launch nothing
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the server process
    # The key it requires on every route but /health (launched: SGLang's --api-key and --admin-api-key, read
    # from a private file so `ps` does not show it; remote: sent with every request). Never printed.
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.tp < 1 or self.dp < 1:
            raise ValueError(f"tp and dp must be >= 1, got tp={self.tp} dp={self.dp}")
        if self.mem_fraction_static is not None and not 0 < self.mem_fraction_static < 1:
            raise ValueError(f"mem_fraction_static must be in (0, 1), got {self.mem_fraction_static}")
        if self.ready_timeout is not None and self.ready_timeout <= 0:
            raise ValueError(f"ready_timeout must be positive seconds, got {self.ready_timeout}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.device == "cpu" and (self.tp > 1 or self.dp > 1):
            raise ValueError("tensor/data parallel needs GPUs; on cpu use tp=1 dp=1")
        if self.device == "cpu" and self.deterministic:
            # SGLang 0.5.23 allows deterministic inference only with GPU attention backends.
            raise ValueError("deterministic sampling (per-path seeds) needs a GPU attention backend, not cpu")
        # A frozen dataclass fills its own defaults through object.__setattr__.
        timeout = self.ready_timeout or (CPU_READY_TIMEOUT_S if self.device == "cpu" else READY_TIMEOUT_S)
        object.__setattr__(self, "ready_timeout", timeout)
        if self.device == "cpu":
            object.__setattr__(self, "max_total_tokens", self.max_total_tokens or CPU_KV_TOKENS)
            object.__setattr__(self, "attention_backend", self.attention_backend or CPU_ATTENTION_BACKEND)

    def to_dict(self) -> dict[str, Any]:
        """Every field but the key, for results that carry the configuration that produced them."""
        return {k: v for k, v in asdict(self).items() if k != "api_key"}

    @property
    def base_url(self) -> str:
        return (self.url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def launched(self) -> bool:
        return self.url is None


def launch_command(spec: EngineSpec, python: str = sys.executable, key_file: Path | None = None) -> list[str]:
    """The argv that starts `spec` as an SGLang HTTP server; a keyed spec takes its key from `key_file`, which
    `engine.launch.start` writes (`write_key_file`), so the key never shows in the process list."""
    if not spec.launched:
        raise ValueError(f"{spec.base_url} is a remote engine; nothing to launch")
    args = [python, "-m", SERVER_MODULE, "--model-path", spec.model]
    args += ["--host", spec.host, "--port", str(spec.port), "--device", spec.device]
    optional = {
        "--tp-size": spec.tp if spec.tp > 1 else None,
        "--dp-size": spec.dp if spec.dp > 1 else None,
        "--base-gpu-id": spec.base_gpu_id if spec.device == "cuda" and spec.base_gpu_id else None,
        "--mem-fraction-static": spec.mem_fraction_static,
        "--max-total-tokens": spec.max_total_tokens,
        "--context-length": spec.context_length,
        "--attention-backend": spec.attention_backend,
        "--load-format": spec.load_format,
    }
    args += [a for flag, value in optional.items() if value is not None for a in (flag, str(value))]
    if spec.deterministic:
        args.append("--enable-deterministic-inference")
    if spec.device == "cpu":
        # An idle CPU scheduler otherwise spins a whole core that the other engine needs.
        args.append("--sleep-on-idle")
    args += list(spec.extra_args)
    if spec.api_key and key_file is not None:
        args += ["--config", str(key_file)]
    if spec.device == "cpu" and spec.cpu_cores:
        args = ["taskset", "-c", ",".join(map(str, spec.cpu_cores)), *args]
    return args


def write_key_file(spec: EngineSpec, path: Path) -> Path:
    """SGLang's YAML config holding `spec`'s key for both its user and admin routes, readable by this user
    alone. SGLang reads it as it starts; the key is random letters and digits, so it needs no quoting."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(f"api-key: {spec.api_key}\nadmin-api-key: {spec.api_key}\n")
    return path


def is_server(process: psutil.Process) -> bool:
    """Whether `process` is an SGLang server as `launch_command` starts one (a pid alone may have been reused,
    and a port may be held by a gateway or anything else)."""
    return SERVER_MODULE in process.cmdline()


def launch_env(spec: EngineSpec, base: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: on CPU, SGLang's CPU engine and the kernel stand-in first on its path."""
    env = dict(os.environ if base is None else base)
    if spec.device == "cpu":
        env["SGLANG_USE_CPU_ENGINE"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CPU_KERNEL_DIR), env.get("PYTHONPATH")]))
        threads = len(spec.cpu_cores) or os.cpu_count() or 1
        env["OMP_NUM_THREADS"] = str(threads)
    if len(env.get("TMPDIR", "")) > MAX_SOCKET_DIR:
        env["TMPDIR"] = SHORT_TMPDIR  # SGLang's ZMQ sockets go there; a longer path fails to bind
    env.update(spec.env)
    return env
