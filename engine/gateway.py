"""SGLang's gateway, `smg`, in front of several SGLang workers: launch it, read its workers, abort through it.

    smg launch --host 127.0.0.1 --port 30000 --policy cache_aware --worker-warmup-divert-every 0 \
        --worker-urls http://w1:30001 http://w2:30002

The gateway forwards `/generate`, `/get_model_info` and `/get_server_info` to its workers, and with cache-aware
routing sends a prompt to the worker whose radix cache holds it, so a fork's N paths land where their
prompt's prefill did. It has no `/abort_request` (404) and no `/v1/loads`: `GatewayEndpoint` sends each abort
to every worker itself, and `GatewayEndpoint.workers` gives the worker URLs whose loads a caller reads.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from engine.endpoint import PathEndpoint, check_abortable
from engine.launch import log_tail, post, start, stop, wait_ready
from engine.ports import check_port_free, free_ports
from engine.spec import EngineError, EngineSpec
from engine.workers import Worker, answers, check_workers, describe

# SGLang's gateway (`pip install smg`, the successor of sglang-router), run as its `smg` command runs it.
GATEWAY = ("-m", "smg")
POLICY = "cache_aware"
GATEWAY_READY_S = 60.0  # the gateway itself starts in seconds; this covers registering slow workers
# A worker's Prometheus counters (`--enable-metrics`): requests it finished, and aborts that found their request.
SERVED, ABORTED = "sglang:num_requests_total", "sglang:num_aborted_requests_total"
WORKER_CHECK_S = 5.0  # how long a worker may take to answer an abort, or to say it is alive


class WorkerLost(RuntimeError):
    """A request failed because a worker behind the gateway stopped answering: the problem it served fails alone
    (its record says which worker), and the others go on on the workers left."""


class GatewayEndpoint(PathEndpoint):
    """SGLang's frontend backend for a gateway: requests go through the gateway, aborts to every worker.

    Aborts are sent to each worker rather than to one chosen by routing a problem's paths here: the gateway's
    cache-aware choice (and its retry on another worker when one fails) stays the gateway's, and an abort for an
    id a worker does not hold costs it nothing (SGLang drops it). The workers are read from the gateway at each
    abort, so one added or removed since is aborted on too, or not."""

    def __init__(self, base_url: str, dp_size: int = 1, api_key: str | None = None) -> None:
        super().__init__(base_url, dp_size, api_key)  # the key goes to the gateway and to every worker
        self.seen: dict[str, None] = {}  # every worker the gateway listed: one it dropped since can be named
        self.workers()

    def workers(self) -> list[Worker]:
        workers = check_workers(self.base_url, describe(self.base_url, self.api_key))
        self.seen.update(dict.fromkeys(w.url for w in workers))
        return workers

    def abort(self, rid: str) -> None:
        check_abortable(rid)
        for each in self.workers():
            with contextlib.suppress(OSError, EngineError):  # a worker that is gone runs nothing to abort
                post(each.url, "/abort_request", {"rid": rid}, timeout=WORKER_CHECK_S, key=self.api_key)

    def lost(self, error: Exception) -> Exception:
        """What a request's `error` means: `WorkerLost` naming the workers that no longer answer while others
        still do, else `error` itself (the gateway or every worker is gone: nothing is left to serve the run)."""
        try:
            self.workers()
        except EngineError:
            return error
        alive = {url: answers(url, self.api_key, WORKER_CHECK_S) for url in self.seen}
        gone = [url for url, up in alive.items() if not up]
        if not gone or len(gone) == len(alive):
            return error
        return WorkerLost(
            f"worker {', '.join(gone)} behind the gateway {self.base_url} stopped answering: {error}"
        )


def gateway_command(
    worker_urls: list[str], host: str, port: int, metrics_port: int, *extra: str
) -> list[str]:
    """The argv that starts the gateway over `worker_urls`: cache-aware routing, which never moves a prompt's
    cache hits away from the worker holding it (by default smg diverts one hit in 8 to a worker it is warming,
    which splits a fork's paths from their prompt), and its metrics on `metrics_port` (the default port, 29000,
    allows one gateway per machine)."""
    return [sys.executable, *GATEWAY, "launch", "--host", host, "--port", str(port), "--policy", POLICY,
            "--worker-warmup-divert-every", "0", "--prometheus-host", host, "--prometheus-port", str(metrics_port),
            "--worker-urls", *worker_urls, *extra]  # fmt: skip


def worker_specs(model: str, count: int, cores: list[int], **fields: object) -> list[EngineSpec]:
    """`count` CPU workers of `model` on free ports, counting their requests (`counted`): each on its
    own cores where there are enough, else all on the same ones."""
    if count < 1:
        raise ValueError(f"a gateway needs at least one worker, got {count}")
    share = len(cores) // count
    ports = free_ports(count)
    return [
        EngineSpec(
            model,
            device="cpu",
            port=port,
            extra_args=("--enable-metrics",),
            cpu_cores=tuple(cores[i * share : (i + 1) * share] if share else cores),
            **fields,
        )  # type: ignore[arg-type]
        for i, port in enumerate(ports)
    ]


def wait_gateway(url: str, process: subprocess.Popen, log: Path, count: int, timeout: float) -> None:
    """Wait until the gateway lists `count` workers, or raise with its log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EngineError(
                f"the gateway exited with code {process.returncode}; last lines of {log}:\n{log_tail(log)}"
            )
        with contextlib.suppress(EngineError):
            if len(describe(url) or []) == count:
                return
        time.sleep(0.3)
    raise EngineError(
        f"the gateway did not list its {count} workers after {timeout:.0f} s; last lines of {log}:\n"
        f"{log_tail(log)}"
    )


@contextlib.contextmanager
def serve_workers(workers: list[EngineSpec], log_dir: Path) -> Iterator[list[subprocess.Popen]]:
    """Start `workers` (`log_dir/worker<i>.log`) for the block, all at once, and stop them after; yields their
    processes, `processes[i]` running `workers[i]`."""
    processes: list[subprocess.Popen] = []
    logs = [log_dir / f"worker{i}.log" for i in range(len(workers))]
    try:
        for spec, log in zip(workers, logs, strict=True):
            processes.append(start(spec, log))
        for spec, process, log in zip(workers, processes, logs, strict=True):
            wait_ready(spec, process, log, spec.ready_timeout or GATEWAY_READY_S)
        yield processes
    finally:
        for process in reversed(processes):
            stop(process)


@contextlib.contextmanager
def serve_gateway(
    worker_urls: list[str], log_dir: Path, *gateway_args: str, host: str = "127.0.0.1"
) -> Iterator[str]:
    """Start the gateway over `worker_urls` (with `gateway_args`, `smg launch` flags) for the block; yields its
    URL once it lists every worker, and stops it after."""
    log_dir.mkdir(parents=True, exist_ok=True)
    port, metrics_port = free_ports(2, host)
    check_port_free(host, port)
    log = log_dir / "gateway.log"
    argv = gateway_command(worker_urls, host, port, metrics_port, *gateway_args)
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "engine.tether", str(os.getpid()), *argv],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        url = f"http://{host}:{port}"
        wait_gateway(url, process, log, len(worker_urls), GATEWAY_READY_S)
        yield url
    finally:
        stop(process)


def counted(url: str, metric: str = SERVED) -> int:
    """The SGLang worker's counter `metric` since it started, over all its labels (a worker launched with
    `--enable-metrics`, as `worker_specs` launches them)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=WORKER_CHECK_S) as response:
        text = response.read().decode()
    return int(
        sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(metric + "{"))
    )
