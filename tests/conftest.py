"""Real SGLang engines on the CPU with the offline models, shared by every test that needs one: the small
explorer serving both roles on one engine, and the asymmetric pair on two."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from engine.launch import get_json, new_key, serve
from engine.layout import ENGINE_KEY_ENV, EngineConfig, Engines, plan
from engine.ports import free_port
from programs.offline.model import OfflineModels, offline_models

if TYPE_CHECKING:  # both import SGLang's frontend: seconds a run of pure tests need not spend
    import uvicorn
    from fastapi import FastAPI

    from programs.engine_handle import EngineHandle

ENGINE_FIXTURES = frozenset({"cpu_engine", "cpu_pair"})  # the fixtures here that start an SGLang engine


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `engine` every test that uses an engine fixture, directly or through another fixture, so that
    `pytest -m "not engine"` runs the rest in a minute. A test module names its own engine fixtures in its
    ENGINE_FIXTURES; a test that starts engines itself (a command run as a subprocess, `serve` called
    directly) carries the mark."""
    for item in items:
        engines = ENGINE_FIXTURES.union(getattr(getattr(item, "module", None), "ENGINE_FIXTURES", ()))
        if engines & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.engine)


def pytest_sessionstart(session: pytest.Session) -> None:
    # A killed test run (CI's time limit, `timeout`) must still stop its engines: SIGTERM takes the
    # Ctrl-C path, which runs fixture teardown.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # The session's engines take one key, and the commands the tests run are given it as a user gives the
    # key of engines named by URL (`--explorer-url` in a test names a session engine).
    os.environ.setdefault(ENGINE_KEY_ENV, new_key())


@pytest.fixture
def port() -> int:
    """A port nothing listens on (the next one up is almost always free too, for a second engine)."""
    return free_port()


@pytest.fixture(scope="session")
def offline_pair() -> OfflineModels:
    """The trained pair, built once per cache (so once per CI run)."""
    return offline_models(seed=0)


@pytest.fixture(scope="session")
def tiny_model(offline_pair: OfflineModels) -> Path:
    return offline_pair.explorer


@pytest.fixture(scope="session")
def cpu_engine(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    """The small explorer serving both roles (symmetric A2R), on all cores."""
    config = EngineConfig(explorer_model=str(tiny_model), port=free_port())
    engines = plan(config, device="cpu")
    with serve(engines, tmp_path_factory.mktemp("engine-logs")) as running:
        yield running


@pytest.fixture(scope="session")
def cpu_pair(offline_pair: OfflineModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    """The asymmetric pair as the CPU default runs it: two engines, each pinned to its own cores."""
    config = EngineConfig(
        explorer_model=str(offline_pair.explorer), synthesizer_model=str(offline_pair.synthesizer)
    )
    engines = plan(config, device="cpu")
    # The session runs more than the pair's frontend (model builds, other engines): it keeps all its cores.
    with serve(engines, tmp_path_factory.mktemp("pair-logs"), pin_frontend=False) as running:
        yield running


@pytest.fixture(scope="session")
def cpu_handle(cpu_engine: Engines) -> EngineHandle:
    """The session engine attached as a stage (tokenizer, backend, context), serving both roles."""
    from programs.engine_handle import EngineHandle

    return EngineHandle.attach(cpu_engine.explorer)


@pytest.fixture
def fresh_question() -> Callable[[], str]:
    """Questions the radix cache has never seen, so cached tokens can only come from the test's own forks."""
    return lambda: f"Problem {uuid.uuid4().hex}: what is 12 + 30? Put the answer in \\boxed{{}}."


@dataclass(frozen=True)
class EngineLoad:
    """What an engine reports it is decoding, read from SGLang's `/v1/loads`. That is a snapshot the scheduler
    publishes every 15 decode steps and when it goes idle, which it does only after sending its last replies:
    a reading taken the moment they arrive can still list them, so assertions of "nothing left" read `settled`.
    """

    url: str
    key: str | None

    def running(self) -> int:
        loads = get_json(f"{self.url}/v1/loads", key=self.key)["loads"]
        return sum(load["num_running_reqs"] for load in loads)

    def at_least(self, count: int, within_s: float) -> int:
        """The running count once it reaches `count`, or as it stands after `within_s`."""
        return self._until(lambda running: running >= count, within_s)

    def settled(self, within_s: float) -> int:
        """The running count once it reaches 0, or as it stands after `within_s`: a request left decoding
        outlasts any such wait."""
        return self._until(lambda running: running == 0, within_s)

    def _until(self, reached: Callable[[int], bool], within_s: float) -> int:
        deadline = time.monotonic() + within_s
        while not reached(running := self.running()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return running


@pytest.fixture(scope="session")
def explorer_load(cpu_engine: Engines) -> EngineLoad:
    return EngineLoad(cpu_engine.explorer.base_url, cpu_engine.explorer.api_key)


@contextlib.contextmanager
def running(app: FastAPI, **limits: Any) -> Iterator[tuple[str, uvicorn.Server, threading.Thread]]:
    """`app` served as `programs.serve` serves it, on a free port, in a thread; its URL, server and thread."""
    from programs.http_server import http_server, listen

    sock = listen("127.0.0.1", 0)
    server = http_server(app, **limits)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


@pytest.fixture(scope="session")
def app_server() -> Callable[..., contextlib.AbstractContextManager]:
    """`running`: an app served as `programs.serve` serves it (`with app_server(app, **limits) as (url, server,
    thread)`), for the tests of the server and of its HTTP limits."""
    return running
