"""Where a local SGLang server's CPU time goes, by kind of process.

A server is three kinds of process: the one launched, which answers HTTP and tokenizes (`server`), the
scheduler, which runs the model, and the detokenizer. On a CPU engine pinned to its own cores they share those
cores, so their split shows whether handling requests or running the model takes an engine's time.
"""

from __future__ import annotations

import contextlib
from urllib.parse import urlsplit

import psutil

from engine.ports import listeners
from engine.spec import is_server

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")
# SGLang titles its workers sglang::scheduler (_TP0 ... with parallelism), sglang::detokenizer, ...
WORKER_PREFIX = "sglang::"
KINDS = ("server", "scheduler", "detokenizer")


def local_server(url: str) -> psutil.Process | None:
    """The SGLang server answering at `url` if it runs on this machine; None for a remote one, or for anything
    else listening there (a gateway's figures would be mislabeled as an engine's)."""
    parts = urlsplit(url)
    if parts.hostname not in LOCAL_HOSTS or parts.port is None:
        return None
    for pid in sorted(listeners(parts.port)):
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            if is_server(process):
                return process
    return None


def cpu_seconds(server: psutil.Process) -> dict[str, float]:
    """CPU seconds (user + system) used since it started by each kind of the server's processes: the
    schedulers, the detokenizer, and `server` for the launched process with every other helper (tokenizer
    workers, multiprocessing's resource tracker)."""
    used = dict.fromkeys(KINDS, 0.0)
    for process in [server, *server.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a worker that ended since the listing
            title = process.name()
            kind = next((k for k in KINDS if title.startswith(WORKER_PREFIX + k)), "server")
            times = process.cpu_times()
            used[kind] += times.user + times.system
    return used
