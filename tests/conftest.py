"""One real SGLang engine on the CPU, with the tiny model, shared by every test that needs an engine."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.launch import serve
from engine.layout import EngineConfig, Engines, plan
from engine.ports import free_port
from programs.offline.model import tiny_model_path


def pytest_sessionstart(session: pytest.Session) -> None:
    # A killed test run (CI's time limit, `timeout`) must still stop its engines: SIGTERM takes the
    # Ctrl-C path, which runs fixture teardown.
    signal.signal(signal.SIGTERM, signal.default_int_handler)


@pytest.fixture
def port() -> int:
    """A port nothing listens on (the next one up is almost always free too, for a second engine)."""
    return free_port()


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return tiny_model_path(seed=0)


@pytest.fixture(scope="session")
def cpu_engine(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    """The tiny model serving both roles (symmetric A2R), on all cores."""
    config = EngineConfig(explorer_model=str(tiny_model), port=free_port())
    engines = plan(config, device="cpu")
    with serve(engines, tmp_path_factory.mktemp("engine-logs")) as running:
        yield running
