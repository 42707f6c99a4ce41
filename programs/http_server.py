"""The HTTP server under `programs.serve`: its socket taken before anything starts, slow clients and large
bodies bounded, the API key compared in constant time. No engine here."""

from __future__ import annotations

import asyncio
import functools
import hmac
import socket
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from uvicorn.protocols.http.h11_impl import H11Protocol

from programs.chat_api import ApiError

MAX_BODY_BYTES = 4 << 20  # far above what a context of 40k tokens holds, far below what hurts the server
HEADER_TIMEOUT_S = 10.0  # a connection whose request head has not arrived by then is closed
MAX_CONNECTIONS = 256  # open connections; past them a new one is closed at once
DRAIN_S = 30  # on SIGTERM, how long requests in flight may take to finish before they are cut


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, listening before anything starts: a port in use fails at once, and no engine
    launched afterwards can be given it (connections made during start-up wait for A2R to answer them)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port") from None
    return sock


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused (413) once it passes `limit` bytes, declared or as it arrives."""
    declared = request.headers.get("content-length", "")
    too_large = ApiError(
        413, f"the request body is over the server's limit of {limit} bytes (--max-body-bytes)"
    )
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise too_large
    return bytes(body)


class BoundedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with slow clients bounded. uvicorn times out only idle keep-alive
    connections, so a client that sends its headers a byte at a time holds a connection for ever: here a
    connection whose first request head has not arrived within `header_timeout_s` is closed, and past
    `max_connections` open ones a new connection is closed at once."""

    def __init__(self, *args: Any, max_connections: int, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_connections, self.header_timeout_s = max_connections, header_timeout_s

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.close()
            return
        self.loop.call_later(self.header_timeout_s, self.close_if_no_request)

    def close_if_no_request(self) -> None:
        if self.cycle is None and not self.transport.is_closing():
            self.transport.close()


def http_server(
    app: FastAPI,
    max_connections: int = MAX_CONNECTIONS,
    header_timeout_s: float = HEADER_TIMEOUT_S,
    drain_s: int = DRAIN_S,
) -> uvicorn.Server:
    """The HTTP server for `app`: slow clients bounded (`BoundedH11`), and on SIGTERM requests in flight
    given `drain_s` seconds to finish."""
    protocol = functools.partial(
        BoundedH11, max_connections=max_connections, header_timeout_s=header_timeout_s
    )
    config = uvicorn.Config(app, http=protocol, log_level="warning", timeout_graceful_shutdown=drain_s)
    return uvicorn.Server(config)


def key_matches(authorization: str | None, api_key: str) -> bool:
    """Whether an Authorization header carries `api_key` as a bearer token (the scheme in any case, RFC 7235),
    compared in constant time so the answer's timing tells nothing of the key."""
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), api_key.encode())
