"""A2R behind an OpenAI-compatible endpoint: `/v1/chat/completions` with model `a2r` or `self-consistency`.

    python -m programs.serve --n 4                       # CPU: the offline pair; GPU: the paper's models
    python -m programs.serve --explorer-url http://host:30000 --synthesizer-url http://host:30001 --api-key KEY

It launches engines the way `programs.a2r` does (or fronts running SGLang servers) and schedules every
request on the one two-stage executor the CLI uses, so concurrent requests share the engines: explorations
run as many at once as the explorer's KV pool holds, and past `--max-queue` requests in the server a new one
gets 503 with Retry-After. The message rule, the `a2r` knobs and the response fields are in
`programs.chat_api`, the HTTP layer under them (bounded bodies and slow clients, the key) in
`programs.http_server`. A client that goes away has its engine requests aborted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from rich.markup import escape
from starlette.exceptions import HTTPException

from engine.endpoint import new_batch, request_ids, synthesis_ids
from engine.launch import EngineError, get_json, log_tail, serve
from programs import cli, planning
from programs.chat_api import (
    CHARS_PER_CONTEXT_TOKEN,
    MODELS,
    ApiError,
    ChatRequest,
    ThinkSplitter,
    answer_text,
    chunk,
    completion,
    deltas,
    finish_reason,
    references,
    usage,
)
from programs.cli import console
from programs.core.config import RunConfig
from programs.core.prompts import split_thinking
from programs.core.records import UNANIMOUS, Problem, ProblemRecord
from programs.engine_handle import EngineHandle, UnservableProblem
from programs.executor import Dropped, Event, Failed, Finished, Job, TwoStageExecutor
from programs.http_server import (
    DRAIN_S,
    HEADER_TIMEOUT_S,
    MAX_BODY_BYTES,
    MAX_CONNECTIONS,
    http_server,
    key_matches,
    listen,
    read_body,
)
from programs.pipeline import Pipeline, stage_slots

logger = logging.getLogger("a2r.serve")
KEEPALIVE_S = 5.0  # an SSE comment this often while the paths are explored, so proxies keep the stream open
RETRY_AFTER_S = 2
CLIENT_LEFT = 499  # nginx's status for a request whose client closed the connection first
HEALTH_TTL_S = 1.0  # /health answers from a reading this recent: each reading costs a round trip per engine
API_KEY_ENV = "A2R_API_KEY"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class Cancelled(Exception):
    """The client went away before its request started."""


@dataclass
class Ticket:
    """One request in flight: what its stages report, carried from the executor's threads to its response."""

    request: ChatRequest
    batch: str  # names its engine requests (`engine.endpoint.request_ids`)
    problem: Problem
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.perf_counter)

    def post(self, *event: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    @property
    def id(self) -> str:
        return f"chatcmpl-{self.batch}"


class Service:
    """The engines, the executor and admission: what every request goes through."""

    def __init__(
        self,
        config: RunConfig,
        explorer: EngineHandle,
        synthesizer: EngineHandle,
        max_queue: int | None = None,
        logs: Path | None = None,
    ) -> None:
        self.config, self.explorer, self.synthesizer, self.logs = config, explorer, synthesizer, logs
        slots = stage_slots(config, explorer, synthesizer)
        self.executor = TwoStageExecutor(*slots)
        self.max_queue = max_queue or 4 * slots[0]
        self.active = 0
        self._lock = threading.Lock()
        self.health_ttl_s = HEALTH_TTL_S
        self._health = (-math.inf, False)  # (when it was read, whether every engine answered)

    @property
    def max_chars(self) -> int:
        """The longest conversation, in characters, worth tokenizing for the explorer."""
        return CHARS_PER_CONTEXT_TOKEN * self.explorer.context_length

    def submit(self, request: ChatRequest, loop: asyncio.AbstractEventLoop) -> Ticket:
        """Start a request; ApiError 503 when the server already holds `max_queue` of them, 400 when its
        synthesizer budget leaves no room in the context (found before its paths are explored)."""
        budget, context = request.config.synthesizer.max_tokens, self.synthesizer.context_length
        if request.config.synthesize and budget >= context:
            raise ApiError(
                400,
                f"max_tokens ({budget}) must be below the synthesizer's context ({context} tokens), "
                "which also holds the question and the paths' answers",
                "max_tokens",
                "context_length_exceeded",
            )
        with self._lock:
            if self.active >= self.max_queue:
                raise ApiError(503, f"the server holds {self.active} requests, its limit; retry shortly")
            self.active += 1
        batch = new_batch()
        ticket = Ticket(
            request, batch, Problem(request.problem_id(batch), request.query, "", request.messages), loop
        )
        config = request.config
        pipeline = Pipeline(config, self.explorer, self.synthesizer if config.synthesize else None)
        streamed = request.stream and config.synthesize and config.syntheses == 1  # M: only the vote's reply
        on_text = (lambda piece: ticket.post("text", piece)) if streamed else None

        def explore(problem: Problem) -> Any:
            if ticket.cancelled.is_set():
                raise Cancelled
            return pipeline.explore(problem, batch=batch)

        def syntheses(problem: Problem, paths: Any) -> list[Callable[[], Any]]:
            def synthesize() -> Any:
                if ticket.cancelled.is_set():
                    raise Cancelled
                return pipeline.answer(problem, paths, batch=batch, on_text=on_text, stop=request.stop)

            return [synthesize] if config.synthesize else []

        def notify(event: Event) -> None:
            match event:
                case Failed(error=error):
                    ticket.post("failed", error)
                case Finished(job=job, timings=timings):
                    ticket.post("done", self.record(ticket, job, timings))
            if isinstance(event, Finished | Dropped):
                with self._lock:
                    self.active -= 1

        self.executor.submit(ticket.problem, explore, syntheses, notify)
        return ticket

    def record(self, ticket: Ticket, job: Job, timings: dict[str, float]) -> ProblemRecord:
        synthesis = job.results[0] if job.results else None
        return ProblemRecord.build(
            ticket.problem, ticket.request.config.to_dict(), job.explored, synthesis, timings
        )

    def cancel(self, ticket: Ticket) -> None:
        """Stop a request whose client went away: every engine request it made or would make."""
        ticket.cancelled.set()
        with contextlib.suppress(EngineError, OSError):  # an engine that is gone has nothing to abort
            for rid in request_ids(ticket.request.config.n, ticket.batch):
                self.explorer.backend.abort(rid)
            for rid in synthesis_ids(ticket.request.config.syntheses, ticket.batch):
                self.synthesizer.backend.abort(rid)

    def failure(self, error: Exception) -> ApiError:
        """What a stage's error means to the client; an engine's failure also logs its log's tail."""
        if isinstance(error, UnservableProblem):
            return ApiError(413, str(error), "messages", "context_length_exceeded")
        if isinstance(error, ApiError):
            return error
        logger.error("engine failure: %s", error)
        for log in sorted(self.logs.glob("*.log")) if self.logs else []:
            logger.error("%s:\n%s", log, log_tail(log))
        return ApiError(503, f"the engines failed this request: {error}")

    def healthy(self) -> bool:
        """Whether every engine answers, as read at most `health_ttl_s` ago (a flood of /health calls costs
        the engines one round trip each per period, not one per call)."""
        read_at, ok = self._health
        if time.monotonic() - read_at < self.health_ttl_s:
            return ok
        ok = all(
            self._answers(handle) for handle in {h.url: h for h in (self.explorer, self.synthesizer)}.values()
        )
        self._health = (time.monotonic(), ok)
        return ok

    @staticmethod
    def _answers(handle: EngineHandle) -> bool:
        try:
            get_json(f"{handle.url}/get_model_info", timeout=5, key=handle.key)  # a gateway forwards it too
        except (OSError, ValueError):
            return False
        return True


def log_request(ticket: Ticket, record: ProblemRecord | None, status: str) -> None:
    stages = usage(record)["a2r"] if record else {}
    explorer, synthesizer = stages.get("explorer", {}), stages.get("synthesizer", {})
    logger.info(
        "%s %s %s explorer %s+%s tok (%s paths) synthesizer %s+%s tok %.2fs",
        ticket.id,
        ticket.request.model,
        status,
        explorer.get("prompt_tokens", 0),
        explorer.get("completion_tokens", 0),
        explorer.get("paths", 0),
        synthesizer.get("prompt_tokens", 0),
        synthesizer.get("completion_tokens", 0),
        time.perf_counter() - ticket.started,
    )


async def wait(service: Service, ticket: Ticket, disconnected: Callable[[], Any]) -> ProblemRecord:
    """The request's record, once done; cancels it if the client leaves first."""
    while True:
        try:
            kind, *payload = await asyncio.wait_for(ticket.events.get(), 0.5)
        except TimeoutError:
            if await disconnected():
                raise Cancelled from None
            continue
        if kind == "failed":
            raise service.failure(payload[0])
        if kind == "done":
            return payload[0]


async def stream(service: Service, ticket: Ticket) -> AsyncIterator[str]:
    """Server-Sent Events: keep-alive comments while exploring, the synthesizer's tokens as they come
    (thinking in `reasoning_content`, then `content`), the finish, usage if asked, and `[DONE]`."""
    done, record = False, None
    try:
        yield chunk(ticket.request, ticket.id, {"role": "assistant"})
        splitter = ThinkSplitter()
        while not done:
            try:
                kind, *payload = await asyncio.wait_for(ticket.events.get(), KEEPALIVE_S)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if kind == "text":
                for delta in deltas(*splitter.feed(payload[0])):
                    yield chunk(ticket.request, ticket.id, delta)
            elif kind == "failed":
                done = True
                yield f"data: {json.dumps(service.failure(payload[0]).body())}\n\n"
            elif kind == "done":
                done, record = True, payload[0]
                text, reason = answer_text(record, ticket.request.model)
                a2r = ticket.request.model == "a2r"
                if a2r and record.synthesizer.finish_reason != UNANIMOUS and not record.syntheses:
                    rest = splitter.flush()
                else:
                    rest = split_thinking(text)
                for delta in deltas(*rest):
                    yield chunk(ticket.request, ticket.id, delta)
                extra = {"a2r": references(record)} if ticket.request.return_references else {}
                yield chunk(ticket.request, ticket.id, {}, finish_reason(reason), **extra)
                if ticket.request.include_usage:
                    yield chunk(ticket.request, ticket.id, None, usage=usage(record))
        yield "data: [DONE]\n\n"
    finally:
        if not done:  # the client went away mid-stream
            service.cancel(ticket)
        log_request(ticket, record, "ok" if record else "failed" if done else "cancelled")


def build_app(service: Service, api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    # No /docs, /redoc or /openapi.json: they would answer without the key, and this API is OpenAI's.
    app = FastAPI(title="A2R", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER_S)} if error.status == 503 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:  # unknown routes and methods
        return JSONResponse(
            ApiError(error.status_code, str(error.detail)).body(), status_code=error.status_code
        )

    @app.exception_handler(Exception)
    async def server_error(_: Request, error: Exception) -> JSONResponse:  # a bug: logged with its traceback
        return JSONResponse(ApiError(500, f"internal error: {type(error).__name__}").body(), status_code=500)

    def authorize(request: Request) -> None:
        if api_key and not key_matches(request.headers.get("authorization"), api_key):
            raise ApiError(
                401, "missing or wrong API key: send 'Authorization: Bearer KEY'", code="invalid_api_key"
            )

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = await asyncio.to_thread(service.healthy)
        return JSONResponse({"status": "ok" if ok else "engines down"}, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorize(request)
        # Each model's context as SGLang's own server gives it: a2r's prompt also reaches the synthesizer.
        context = {
            "a2r": min(service.explorer.context_length, service.synthesizer.context_length),
            "self-consistency": service.explorer.context_length,
        }
        data = [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "a2r",
                "description": about,
                "max_model_len": context[name],
                "context_length": context[name],
            }
            for name, about in MODELS.items()
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        authorize(request)
        try:
            body = json.loads(await read_body(request, max_body_bytes))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the body is not valid JSON: {exc}") from None
        except RecursionError:
            raise ApiError(400, "the body is not valid JSON: nested too deeply") from None
        chat = ChatRequest.parse(body, service.config, service.max_chars)
        ticket = service.submit(chat, asyncio.get_running_loop())
        if chat.stream:
            return StreamingResponse(stream(service, ticket), media_type="text/event-stream")
        record, status = None, "failed"
        try:
            record = await wait(service, ticket, request.is_disconnected)
            status = "ok"
        except Cancelled:
            service.cancel(ticket)
            status = "cancelled"
            gone = ApiError(CLIENT_LEFT, "the client closed the connection before the reply")
            return JSONResponse(gone.body(), status_code=CLIENT_LEFT)
        finally:
            log_request(ticket, record, status)
        return completion(chat, ticket.id, record)

    return app


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m programs.serve", description=__doc__.split("\n")[0])
    server = parser.add_argument_group("server")
    server.add_argument(
        "--n", type=int, default=4, help="explorer paths per request (a request's a2r.n overrides)"
    )
    server.add_argument("--host", default="127.0.0.1", help="interface to bind (default: this machine only)")
    # Its own dest: `dataclass_from_args(EngineConfig, ...)` reads an attribute `port` as the engines' first port.
    server.add_argument("--port", type=int, default=8000, dest="http_port", help="HTTP port")
    server.add_argument(
        "--api-key",
        help=f"require 'Authorization: Bearer KEY' on every /v1 request (default: ${API_KEY_ENV}; on the command "
        "line it shows in `ps`)",
    )
    server.add_argument("--api-key-file", type=Path, help="read the API key from this file instead")
    server.add_argument(
        "--max-connections",
        type=int,
        default=MAX_CONNECTIONS,
        help=f"open connections (default: {MAX_CONNECTIONS})",
    )
    server.add_argument(
        "--header-timeout",
        type=float,
        default=HEADER_TIMEOUT_S,
        help=f"seconds a new connection has to send its request head (default: {HEADER_TIMEOUT_S:g})",
    )
    server.add_argument(
        "--drain-timeout",
        type=int,
        default=DRAIN_S,
        help=f"on SIGTERM, seconds requests in flight have to finish (default: {DRAIN_S})",
    )
    server.add_argument(
        "--max-queue", type=int, help="requests held at once before 503 (default: 4x the explorer's)"
    )
    server.add_argument(
        "--max-body-bytes",
        type=int,
        default=MAX_BODY_BYTES,
        help=f"largest request body (default: {MAX_BODY_BYTES})",
    )
    server.add_argument(
        "--output", type=Path, default=Path("runs/serve"), help="folder for the engines' logs"
    )
    cli.add_engine_args(parser, skip=("port",))  # engines take free ports; --port is the server's
    cli.add_run_args(parser, skip=("synthesize",))
    args = parser.parse_args(argv)
    cli.check_positive(parser, args, "n", "max_queue", "max_body_bytes", "max_connections")
    if args.header_timeout <= 0 or args.drain_timeout < 0:
        parser.error("--header-timeout must be positive and --drain-timeout at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run, parse_args(argv))


def server_key(args: argparse.Namespace) -> str | None:
    """The API key: from --api-key-file, --api-key or $A2R_API_KEY, in that order; None serves without one."""
    if args.api_key_file is None:
        return args.api_key or os.environ.get(API_KEY_ENV) or None
    try:
        key = args.api_key_file.read_text().strip()
    except OSError as exc:
        raise ValueError(f"--api-key-file {args.api_key_file}: {exc.strerror}") from None
    if not key:
        raise ValueError(f"--api-key-file {args.api_key_file} is empty")
    return key


def run(args: argparse.Namespace) -> int:
    with cli.refusing(ValueError):
        key = server_key(args)
        if key is None and args.host not in LOCAL_HOSTS:
            console.print(
                f"[yellow]warning:[/] {escape(args.host)} is not this machine alone and no API key is set: anyone "
                f"who reaches it uses the engines. Set ${API_KEY_ENV} or --api-key-file, and put a reverse proxy "
                "in front (docs/serving.md)"
            )
        sock = listen(args.host, args.http_port)
    with sock:
        return serve_on(sock, args, key)


def serve_on(sock: socket.socket, args: argparse.Namespace, key: str | None) -> int:
    with cli.refusing(ValueError):
        engines, config = planning.plan_run(args, *planning.profile_for(args))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logs = args.output / "logs"
    try:
        with serve(engines, logs) as running:
            service = Service(config, *EngineHandle.attach_roles(running), args.max_queue, logs)
            console.print(
                escape(
                    f"A2R on http://{args.host}:{args.http_port}/v1 (models: {', '.join(MODELS)}); engines "
                    f"({engines.layout}): explorer {config.explorer_model}, synthesizer {config.synthesizer_model}; "
                    f"logs in {logs}"
                )
            )
            app = build_app(service, key, args.max_body_bytes)
            http_server(app, args.max_connections, args.header_timeout, args.drain_timeout).run(
                sockets=[sock]
            )
    except (KeyboardInterrupt, EngineError, RuntimeError) as exc:
        for log in sorted(logs.glob("*.log")):
            logger.error("%s:\n%s", log, log_tail(log))
        return cli.stopped(exc, "engines stopped")
    return 0


if __name__ == "__main__":
    cli.exit_with(main())
