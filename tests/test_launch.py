"""Starting, waiting for and stopping engines (engine.launch): the start-up progress, pinning to cores, every
server told to stop before any is waited for, two engines stopped on the way out, an engine that did not bind
its port, stale engines of a run folder, and the key each run gives the engines it launches."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from engine import launch
from engine.launch import (
    EngineError,
    get_json,
    keyed,
    model_info,
    serve,
    startup_phase,
    stop_stale,
    wait_ready,
)
from engine.layout import ENGINE_KEY_ENV, EngineConfig, plan
from engine.ports import check_port_free, free_port
from engine.spec import (
    SERVER_MODULE,
    EngineSpec,
    launch_command,
    launch_env,
    write_key_file,
)
from programs.core.config import RunConfig, SamplingConfig
from programs.core.records import Problem
from programs.engine_handle import EngineHandle
from programs.offline.model import offline_models
from programs.pipeline import Pipeline


def test_the_start_up_phase_is_the_furthest_the_servers_log_has_reached(tmp_path):
    log = tmp_path / "e.log"
    assert startup_phase(log) == "starting"
    log.write_text("[2026] server_args=ServerArgs(model_path='m', ...)\n  warnings.warn(\n")
    assert startup_phase(log) == "starting its scheduler"
    log.write_text(log.read_text() + "[2026] Load weight begin. avail mem=3.1 GB\nFetching 5 files:  40%|\r")
    assert startup_phase(log) == "downloading weights"
    log.write_text(log.read_text() + "[2026] Load weight end. elapsed=0.1 s\n  warnings.warn(\n")
    assert startup_phase(log) == "allocating its KV cache"


def test_waiting_for_an_engine_says_how_long_and_what_it_is_doing(tmp_path, monkeypatch, capsys, port):
    monkeypatch.setattr(launch, "PROGRESS_EVERY_S", 0.2)
    log = tmp_path / "e.log"
    log.write_text("[2026] Load weight begin. avail mem=3.1 GB\n  warnings.warn(\n")
    process = subprocess.Popen(["sleep", "30"])  # alive, answering nothing
    try:
        with pytest.raises(EngineError, match="not ready after 2 s"):
            wait_ready(EngineSpec(model="org/model", port=port), process, log, timeout=2.0)
    finally:
        process.kill()
        process.wait()
    reports = [line for line in capsys.readouterr().err.splitlines() if line.startswith("starting")]
    assert (
        len(reports) >= 2
    )  # the health route is polled every 0.5 s, each poll past 0.2 s since the last report
    for report in reports:
        assert re.fullmatch(
            rf"starting org/model on port {port}: loading weights, \d+ s so far \(timeout 2 s\)", report
        )


def test_pinned_moves_every_thread_and_gives_the_cores_back():
    before = os.sched_getaffinity(0)
    if len(before) < 2:
        pytest.skip("one core: pinning to it changes nothing that could be seen")
    target = {max(before)}
    seen: dict[str, set[int]] = {}
    release = threading.Event()

    def record(name: str) -> None:
        seen[name] = os.sched_getaffinity(threading.get_native_id())
        release.wait(10)
        seen[f"{name} after"] = os.sched_getaffinity(threading.get_native_id())

    older = threading.Thread(target=release.wait, args=(10,))
    older.start()
    with launch.pinned(tuple(target)):
        assert os.sched_getaffinity(0) == target
        assert os.sched_getaffinity(older.native_id) == target  # alive before the block: moved
        newer = threading.Thread(target=record, args=("newer",))
        newer.start()
        while "newer" not in seen:
            time.sleep(0.01)
        assert seen["newer"] == target  # started inside: inherits
    assert os.sched_getaffinity(older.native_id) == before
    release.set()
    newer.join()
    older.join()
    assert os.sched_getaffinity(0) == before and seen["newer after"] == before


SLOW_TO_STOP = """
import signal, sys, time
def stopping(*_):
    open(sys.argv[1], "a").write(f"term {sys.argv[2]}\\n")
    if sys.argv[3] == "deaf":
        return
    time.sleep(2)
    open(sys.argv[1], "a").write(f"exit {sys.argv[2]}\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, stopping)
open(sys.argv[1], "a").write(f"up {sys.argv[2]}\\n")
while True:
    time.sleep(600)
"""


def slow_servers(events: Path, **hearing: str) -> list[subprocess.Popen]:
    """One process per name, each writing to `events` when it is up, hears SIGTERM and exits; a "deaf" one
    notes the SIGTERM and goes on running."""
    processes = [
        subprocess.Popen([sys.executable, "-c", SLOW_TO_STOP, str(events), name, how], start_new_session=True)
        for name, how in hearing.items()
    ]
    while not events.exists() or events.read_text().count("up ") < len(processes):
        time.sleep(0.05)
    return processes


def test_servers_are_all_told_to_stop_once_before_any_is_waited_for(tmp_path):
    events = tmp_path / "events"
    processes = slow_servers(events, explorer="stops", synthesizer="stops")
    launch.stop_all(processes)
    seen = [line.split() for line in events.read_text().splitlines() if not line.startswith("up ")]
    assert sorted(seen[:2]) == [["term", "explorer"], ["term", "synthesizer"]]  # both heard before any exit
    assert sorted(seen[2:]) == [["exit", "explorer"], ["exit", "synthesizer"]]  # and neither heard it twice
    assert all(p.returncode == 0 for p in processes)


def test_a_server_that_ignores_sigterm_is_killed_when_the_grace_period_ends(tmp_path):
    events = tmp_path / "events"
    processes = slow_servers(events, explorer="deaf", synthesizer="stops")
    launch.stop_all(processes, grace_s=3.0)
    assert processes[0].returncode == -signal.SIGKILL
    assert processes[1].returncode == 0
    assert events.read_text().count("term explorer") == 1


def test_an_engine_that_did_not_bind_its_port_is_not_used(cpu_engine, tmp_path):
    """Two runs on one port: the second engine fails to bind, and the first one's answers must not pass
    for its own."""
    taken = cpu_engine.explorer  # a running engine already answers on this port
    spec = plan(EngineConfig(explorer_model=taken.model, port=taken.port), device="cpu").explorer
    log = tmp_path / "second.log"
    with log.open("ab") as sink:
        process = subprocess.Popen(
            launch_command(spec), env=launch_env(spec), stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        # It fails to bind and then exits, or is caught while the other engine answers for it: never used.
        with pytest.raises(EngineError, match=f"port {spec.port} (is held by another process|.*exited)"):
            wait_ready(spec, process, log, timeout=300)
    finally:
        process.kill()
        process.wait()


def test_an_engine_whose_port_another_socket_took_is_refused_at_once(tmp_path):
    """Any socket on the engine's port, one that answers no HTTP too (seen: the engine's own scheduler, on a
    port the kernel handed it before the server bound it), means the engine will never bind it: it is refused
    on the spot, naming who holds the port, not after the start-up timeout."""
    spec = EngineSpec(model="tiny", device="cpu", port=free_port())
    log = tmp_path / "engine.log"
    log.write_text("")
    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        with socket.socket() as holder:
            holder.bind((spec.host, spec.port))
            holder.listen()
            start = time.monotonic()
            held = rf"port {spec.port} is held by another process \(pid {os.getpid()} \("
            with pytest.raises(EngineError, match=held):
                wait_ready(spec, engine, log, timeout=60)
            assert time.monotonic() - start < 5
    finally:
        engine.kill()
        engine.wait()


def test_a_stale_engine_of_the_run_folder_is_stopped_and_nothing_else_is(tmp_path):
    def sleeper(*tag: str) -> subprocess.Popen:
        code = "import time; time.sleep(600)"
        return subprocess.Popen([sys.executable, "-c", code, *tag], start_new_session=True)

    stale, unrelated = sleeper(SERVER_MODULE), sleeper("something-else")
    try:
        for process, name in ((stale, "explorer.pid"), (unrelated, "synthesizer.pid")):
            (tmp_path / name).write_text(f"{process.pid}\n")
            stop_stale(tmp_path / name)
        assert stale.poll() is not None  # stopped (and reaped by the stop, which waits for it)
        assert unrelated.poll() is None  # a recycled pid of another program is never touched
        assert not list(tmp_path.glob("*.pid"))
    finally:
        for process in (stale, unrelated):
            process.kill()
            process.wait()


@pytest.mark.engine
def test_different_models_get_two_engines_that_are_stopped_afterwards(tiny_model, tmp_path, port):
    other = offline_models(
        seed=1, trained=False
    ).synthesizer  # any second model will do: random ones build fast
    config = EngineConfig(explorer_model=str(tiny_model), synthesizer_model=str(other), port=port)
    engines = plan(config, device="cpu", cpu_count=2)
    assert engines.layout == "cpu" and len(engines.to_launch) == 2
    cores_before = os.sched_getaffinity(0)
    with serve(engines, tmp_path / "logs") as running:
        assert os.sched_getaffinity(0) == set(engines.synthesizer.cpu_cores)  # the frontend, off the explorer
        assert model_info(running.explorer)["model_path"] == str(tiny_model)
        assert model_info(running.synthesizer)["model_path"] == str(other)
        sampling = SamplingConfig(max_tokens=16)
        run = RunConfig(
            n=2, explorer=sampling, synthesizer=sampling, explorer_model="a", synthesizer_model="b"
        )
        records = []
        stages = EngineHandle.attach_roles(running)
        assert stages[0] is not stages[1] and stages[0].backend.base_url != stages[1].backend.base_url
        Pipeline(run, *stages).run([Problem("x", "What is 2 + 2?", "4")], records.append)
        assert len(records) == 1 and records[0].synthesizer.completion_tokens > 0
    assert os.sched_getaffinity(0) == cores_before
    assert {p.name for p in (tmp_path / "logs").iterdir()} == {"explorer.log", "synthesizer.log"}
    for spec in engines.to_launch:  # nothing listens any more: raises if a server survived
        check_port_free(spec.host, spec.port)


def test_launched_engines_refuse_requests_without_their_key(cpu_engine):
    spec = cpu_engine.explorer
    assert spec.api_key
    for route in ("/v1/loads", "/get_server_info", "/flush_cache", "/update_weights_from_disk"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{spec.base_url}{route}", timeout=30)
        assert refused.value.code in (401, 403), route
    assert get_json(f"{spec.base_url}/v1/loads", key=spec.api_key)["loads"]
    assert urllib.request.urlopen(f"{spec.base_url}/health", timeout=30).status == 200  # readiness stays open


def test_each_run_keys_its_launched_engines_and_no_key_shows_in_their_command(monkeypatch, tmp_path):
    monkeypatch.delenv(ENGINE_KEY_ENV, raising=False)
    planned = plan(EngineConfig(explorer_model="org/a", synthesizer_model="org/b"), device="cpu")
    first, second = keyed(planned), keyed(planned)
    assert first.explorer.api_key == first.synthesizer.api_key != second.explorer.api_key
    assert len(first.explorer.api_key) >= 32 and first.explorer.api_key not in repr(first)
    key_file = write_key_file(first.explorer, tmp_path / "explorer.key.yaml")
    command = launch_command(first.explorer, key_file=key_file)
    assert first.explorer.api_key not in " ".join(command) and command[command.index("--config") + 1] == str(
        key_file
    )
    assert key_file.stat().st_mode & 0o777 == 0o600 and first.explorer.api_key in key_file.read_text()


def test_a_key_given_for_engines_reaches_remote_and_launched_ones(monkeypatch):
    monkeypatch.setenv(ENGINE_KEY_ENV, "from-the-environment")
    remote = plan(EngineConfig(explorer_url="http://10.0.0.5:30000"), device="cpu")
    assert keyed(remote).explorer.api_key == "from-the-environment"
    flagged = plan(EngineConfig(explorer_model="org/a", engine_key="from-the-flag"), device="cpu")
    assert keyed(flagged).explorer.api_key == "from-the-flag"


def test_results_that_carry_an_engines_configuration_never_carry_its_key():
    spec = EngineSpec("org/model", api_key="secret-key")
    assert "secret-key" not in json.dumps(spec.to_dict()) and spec.to_dict()["model"] == "org/model"
