"""The HTTP server `programs.serve` runs (programs.http_server): a client that sends its headers slowly is cut
off, connections past the cap are closed at once, and a shutdown waits for requests only as long as the drain
allows. No engine: a small app of its own."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from fastapi import FastAPI


def slow_app() -> FastAPI:
    app = FastAPI()

    @app.get("/")
    async def hello() -> dict[str, str]:
        return {"hello": "there"}

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        await asyncio.sleep(120)
        return {}

    return app


def closed(sock: socket.socket, within_s: float, drip: bytes = b"") -> bool:
    """Whether the server closes `sock` within `within_s`, while the client sends `drip` now and then."""
    sock.settimeout(0.3)
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if sock.recv(1024) == b"":
                return True
        except TimeoutError:
            with contextlib.suppress(OSError):
                sock.sendall(drip)
        except ConnectionResetError:
            return True
    return False


def test_a_client_that_sends_its_headers_slowly_is_cut_off_and_others_are_served(app_server):
    with app_server(slow_app(), header_timeout_s=1) as (url, _, _):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as slow:
            slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            assert requests.get(url, timeout=30).json() == {"hello": "there"}
            assert closed(slow, within_s=30, drip=b"X")


def test_past_the_connection_cap_a_new_connection_is_closed_at_once(app_server):
    with app_server(slow_app(), max_connections=2, header_timeout_s=60) as (url, _, _):
        host, port = url.removeprefix("http://").split(":")
        held = [socket.create_connection((host, int(port))) for _ in range(2)]
        with socket.create_connection((host, int(port))) as third:
            assert closed(third, within_s=30)
        for sock in held:
            assert not closed(sock, within_s=0.5)
            sock.close()


def test_a_shutdown_waits_for_requests_in_flight_only_as_long_as_the_drain_allows(app_server):
    with app_server(slow_app(), drain_s=1) as (url, server, thread):
        pending = ThreadPoolExecutor(1).submit(requests.get, f"{url}/slow", timeout=300)
        while not server.server_state.tasks:
            time.sleep(0.05)
        server.should_exit = True  # what SIGTERM does
        thread.join(60)
        assert not thread.is_alive()  # the request would have held it for 120 s
        with contextlib.suppress(requests.ConnectionError):  # cut: no reply, or an error one
            assert pending.result(timeout=60).status_code != 200
