"""Start SGLang servers, wait until they answer, and always stop what was started.

`serve(engines, log_dir)` is the one entry point: it checks ports and model paths before launching,
streams each server's log to `log_dir/<role>.log`, raises with the log's tail when a server dies or
times out, moves this process onto the cores the plan leaves the frontend, and kills every process group
it started on exit, Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from engine.layout import ENGINE_KEY_ENV, Engines
from engine.ports import check_port_free, listeners
from engine.spec import EngineError, EngineSpec, auth, is_server, launch_command, launch_env, write_key_file
from engine.workers import check_alive, check_workers, describe

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 30.0  # while an engine starts, say how long it has taken and what it is doing
REMOTE_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 40
FLUSH_WAIT_S = 30.0


def new_key() -> str:
    """A random key for one run's launched engines."""
    return secrets.token_urlsafe(24).replace("-", "x").replace("_", "y")  # plain YAML, plain header


def get_json(url: str, timeout: float = REMOTE_TIMEOUT_S, key: str | None = None) -> dict[str, Any]:
    with urllib.request.urlopen(urllib.request.Request(url, headers=auth(key)), timeout=timeout) as response:
        return json.loads(response.read())


def post(
    url: str,
    route: str,
    body: dict[str, Any] | None = None,
    timeout: float | None = None,
    key: str | None = None,
) -> bytes:
    """POST JSON to a server route; an HTTP error becomes an EngineError carrying the server's answer."""
    data = json.dumps(body or {}).encode()
    request = urllib.request.Request(f"{url}{route}", data, {"Content-Type": "application/json", **auth(key)})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise EngineError(f"{url}{route} answered {exc.code}: {detail}") from None


def flush_cache(url: str, wait_s: float = FLUSH_WAIT_S, key: str | None = None) -> None:
    """Empty the server's prefix cache. SGLang flushes only once idle, so it waits up to `wait_s` for the
    requests still running."""
    post(url, f"/flush_cache?timeout={wait_s:g}", timeout=wait_s + 10, key=key)


def server_info(spec: EngineSpec) -> dict[str, Any]:
    """SGLang's own description of a running server (`max_total_num_tokens`, limits, flags)."""
    return get_json(f"{spec.base_url}/get_server_info", key=spec.api_key)


def model_info(spec: EngineSpec) -> dict[str, Any]:
    return get_json(f"{spec.base_url}/get_model_info", key=spec.api_key)


def context_length(spec: EngineSpec) -> int:
    """The context the server enforces (prompt + new tokens): the one given (`--context-length`, which a
    gateway in front of servers needs), else the server's OpenAI-style model list."""
    if spec.context_length:
        return spec.context_length
    try:
        return int(get_json(f"{spec.base_url}/v1/models", key=spec.api_key)["data"][0]["max_model_len"])
    except (urllib.error.HTTPError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise EngineError(
            f"{spec.base_url} answers as an SGLang server but its /v1/models gives no context length ({exc}); "
            "behind a gateway (smg, sglang-router) give it with --context-length"
        ) from None


def known_context(spec: EngineSpec) -> int | None:
    """The context `spec` will enforce, where it is known before anything starts: the one given, a running
    server's own, or a local model folder's config; None for a hub id or a server that does not answer."""
    if spec.context_length:
        return spec.context_length
    if not spec.launched:
        with contextlib.suppress(EngineError, OSError):
            return context_length(spec)
        return None
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        config = json.loads((Path(spec.model).expanduser() / "config.json").read_text())
        return int(config["max_position_embeddings"])
    return None


def check_model(model: str) -> None:
    """A model is a local directory or a hub id `org/name`; anything else that looks like a path is a typo."""
    if Path(model).expanduser().is_dir():
        return
    looks_like_path = model.startswith(("/", ".", "~")) or model.count("/") != 1
    if looks_like_path:
        raise EngineError(f"model path does not exist: {model}")


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


# What an SGLang server's log says it has reached, in the order it gets there (SGLang 0.5.23's lines): while
# it starts, the run shows the last of these its log holds. A download comes while weights load.
STARTUP_PHASES = (
    ("server_args=", "starting its scheduler"),
    ("Init parallel begin", "setting up its workers"),
    ("Init torch distributed", "setting up its workers"),
    ("Load weight begin", "loading weights"),
    ("Fetching ", "downloading weights"),
    ("checkpoint shards", "loading weights"),
    ("Load weight end", "allocating its KV cache"),
    ("Memory pool end", "warming up"),
    ("graph begin", "capturing graphs"),
    ("graph end", "warming up"),
    ("Uvicorn running", "warming up"),
    ("fired up and ready", "ready"),
)


def startup_phase(log: Path) -> str:
    """What the server is doing, from the furthest of STARTUP_PHASES its log shows ("starting" before any)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    reached = [phase for marker, phase in STARTUP_PHASES if marker in text]
    return reached[-1] if reached else "starting"


def wait_ready(spec: EngineSpec, process: subprocess.Popen, log: Path, timeout: float) -> None:
    """Poll the server's health route until it answers, the process dies, or `timeout` passes, saying every
    PROGRESS_EVERY_S how long it has waited and what the server is doing (its log stays in `log`)."""
    start = time.monotonic()
    deadline, next_report = start + timeout, start + PROGRESS_EVERY_S
    while time.monotonic() < deadline:
        if time.monotonic() >= next_report:
            next_report = time.monotonic() + PROGRESS_EVERY_S
            print(
                f"starting {spec.model} on port {spec.port}: {startup_phase(log)}, "
                f"{time.monotonic() - start:.0f} s so far (timeout {timeout:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
        if process.poll() is not None:
            raise EngineError(
                f"engine for {spec.model} on port {spec.port} exited with code {process.returncode} before it "
                "was ready; "
                f"last lines of {log}:\n{log_tail(log)}"
            )
        if others := listeners(spec.port) - {process.pid}:
            raise EngineError(port_taken(spec, others, log))
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
            with urllib.request.urlopen(f"{spec.base_url}/health", timeout=5) as response:
                if response.status == 200:
                    check_ours(spec, process, log)
                    return
        time.sleep(0.5)
    raise EngineError(
        f"engine for {spec.model} was not ready after {timeout:.0f} s; last lines of {log}:\n{log_tail(log)}"
    )


def check_ours(spec: EngineSpec, process: subprocess.Popen, log: Path) -> None:
    """Refuse a server that answers on our port but is not the process we started: another run's engine
    would otherwise serve this run under our model's name."""
    if process.pid not in (pids := listeners(spec.port)):
        raise EngineError(port_taken(spec, pids, log))


def port_taken(spec: EngineSpec, pids: set[int], log: Path) -> str:
    """Why an engine cannot serve on its port: other processes listen there (any socket: a server that would
    answer in its stead, or one that took the port before the engine could bind it, which it never will)."""
    held = ", ".join(f"pid {pid} ({process_name(pid)})" for pid in sorted(pids)) or "a process not shown"
    return (
        f"port {spec.port} is held by another process ({held}), not the engine started for {spec.model}, which "
        f"cannot bind it: pick another --port, or run again (a port left to the run is picked anew); "
        f"last lines of {log}:\n{log_tail(log)}"
    )


def process_name(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "gone"


def check_remote(spec: EngineSpec) -> None:
    """Refuse a URL where no SGLang server answers, or a gateway there that cannot serve one role."""
    workers = describe(spec.base_url, spec.api_key)
    if workers is not None:
        check_alive(spec.base_url, check_workers(spec.base_url, workers), spec.api_key)
    try:
        model_info(spec)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise EngineError(
                f"{spec.base_url} wants an API key: give it with --engine-key or {ENGINE_KEY_ENV}"
            ) from None
        raise EngineError(f"no SGLang server answers at {spec.base_url} (HTTP {exc.code})") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EngineError(f"no SGLang server answers at {spec.base_url} ({reason})") from None


def stop(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Terminate the server's whole process group (SGLang forks scheduler and detokenizer workers)."""
    stop_all([process], grace_s)


def stop_all(processes: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    """Stop every server at once: each group hears one SIGTERM before any is waited for, so shutting down
    takes the slowest one's time rather than the sum (an SGLang server takes several seconds). The signal
    is never repeated: a second SIGTERM would land inside a server's own shutdown. Whoever outlives the
    shared grace period is killed."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in running:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def key_file(log: Path) -> Path:
    """Where the engine logging to `log` reads its key from (removed once the engine is stopped)."""
    return log.with_suffix(".key.yaml")


def start(spec: EngineSpec, log: Path) -> subprocess.Popen:
    """Launch `spec`, its output to `log`; both the log (SGLang writes its arguments there) and the key file
    are this user's alone."""
    check_model(spec.model)
    check_port_free(spec.host, spec.port)
    log.parent.mkdir(parents=True, exist_ok=True)
    keys = write_key_file(spec, key_file(log)) if spec.api_key else None
    with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as sink:
        os.fchmod(sink.fileno(), 0o600)
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine.tether",
                str(os.getpid()),
                *launch_command(spec, key_file=keys),
            ],
            env=launch_env(spec),
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so stop() reaches every worker
        )  # tethered: it dies with this process, even on kill -9


def stop_stale(pid_file: Path) -> None:
    """Stop the engine an earlier run of this folder left behind, if it is still up, and say so.

    Engines are tethered to their run, so only one started before tethering (or whose tether failed) can be
    left; the folder's lock (`programs.core.jsonl.lock_run_folder`) means no live run still owns it.
    """
    if not pid_file.exists():
        return
    with contextlib.suppress(ValueError, psutil.Error):
        process = psutil.Process(int(pid_file.read_text()))
        if is_server(process):
            logger.warning("stopping engine %d, left running by an earlier run of this folder", process.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    pid_file.unlink(missing_ok=True)


@contextlib.contextmanager
def pinned(cores: tuple[int, ...]) -> Iterator[None]:
    """Run this process on `cores` for the block (none: leave it be), then where it ran before.

    Linux keeps the cores per thread and a new thread inherits its creator's, so every thread alive now is
    moved, and those started inside the block (SGLang's frontend starts one per request) follow."""
    if not cores:
        yield
        return
    before = os.sched_getaffinity(0)
    set_affinity(set(cores))
    try:
        yield
    finally:
        set_affinity(before)


def set_affinity(cores: set[int]) -> None:
    for thread in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that ended since the listing
            os.sched_setaffinity(int(thread), cores)


def keyed(engines: Engines, key: str | None = None) -> Engines:
    """`engines` with every launched one that has no key given requiring `key` (default: a new random one)."""
    key = key or new_key()

    def lock(spec: EngineSpec) -> EngineSpec:
        return spec if not spec.launched or spec.api_key else replace(spec, api_key=key)

    explorer = lock(engines.explorer)
    synthesizer = explorer if engines.synthesizer is engines.explorer else lock(engines.synthesizer)
    return replace(engines, explorer=explorer, synthesizer=synthesizer)


@contextlib.contextmanager
def serve(engines: Engines, log_dir: Path, pin_frontend: bool = True) -> Iterator[Engines]:
    """Make every engine in `engines` answer for the duration of the block, each within its `ready_timeout`,
    with this process on the plan's `frontend_cores` unless `pin_frontend` is false (a process that does
    more than drive these engines, such as a test session). It yields the engines as they run: the launched
    ones behind a key (`keyed`), which every client of theirs sends."""
    engines = keyed(engines)
    for spec in (engines.explorer, engines.synthesizer):
        if not spec.launched:
            check_remote(spec)
    roles = {id(engines.synthesizer): "synthesizer", id(engines.explorer): "explorer"}
    started: list[tuple[EngineSpec, subprocess.Popen, Path]] = []
    try:
        for spec in engines.to_launch:
            log = log_dir / f"{roles[id(spec)]}.log"
            stop_stale(log.with_suffix(".pid"))
            started.append((spec, start(spec, log), log))
            log.with_suffix(".pid").write_text(f"{started[-1][1].pid}\n")
            if engines.sequential:
                wait_ready(*started[-1], spec.ready_timeout)
        for spec, process, log in started:
            wait_ready(spec, process, log, spec.ready_timeout)
        with pinned(engines.frontend_cores if pin_frontend else ()):
            yield engines
    finally:
        stop_all([process for _, process, _ in started])
        for _, _, log in started:
            log.with_suffix(".pid").unlink(missing_ok=True)  # the pid file lives as long as its engine
            key_file(log).unlink(missing_ok=True)
