"""Ports on this machine: a free one for an engine we launch, a check before launching on a given one, and who
listens on one once it answers (so an engine is proven to be ours before it is used)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import psutil

from engine.spec import EngineError

# An engine binds its port only once its model is loaded, tens of seconds after the port is picked. Meanwhile
# the kernel hands out ports of its ephemeral range to every bind(0) and outgoing connection, the engine's
# own scheduler among them (seen here: a scheduler listening on the port picked for its server's HTTP), and
# SGLang picks the port its distributed store binds later in 22000-29999. So a launched engine's port is
# picked below both.
PICKED_PORTS = range(12000, 22000)
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
ATTEMPTS = 64
_pick = random.SystemRandom()  # not the seedable module generator: two seeded processes would pick alike


def ephemeral_low() -> int:
    """The lowest port the kernel hands out by itself (Linux's default where it does not say)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now that nothing else will be handed before the engine binds it: in
    `PICKED_PORTS` below the ephemeral range, else (a machine whose ephemeral range covers it) the OS's choice."""
    candidates = range(PICKED_PORTS.start, min(PICKED_PORTS.stop, ephemeral_low()))
    for port in _pick.sample(candidates, min(ATTEMPTS, len(candidates))):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another server listens on; like uvicorn, ignore connections lingering in TIME_WAIT."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise EngineError(
                f"port {port} on {host} is in use ({exc.strerror}); pick another --port"
            ) from None


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports nothing listens on now."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(host)
        if port not in ports:
            ports.append(port)
    return ports


def listeners(port: int) -> set[int]:
    """Process ids listening on TCP `port` (any address)."""
    return {
        c.pid
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid
    }
