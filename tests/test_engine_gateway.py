"""A2R through SGLang's gateway (`smg`, cache-aware) over two real CPU explorer workers: both serve, forked paths
keep their prompt's cache, stops and a leaving client abort on every worker, and a worker that dies fails only
the problems it held. The last test kills a worker, so it stays last."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from benchmarks.gateway import Loads
from engine.endpoint import SEED_VAR, request_ids
from engine.gateway import (
    ABORTED,
    GatewayEndpoint,
    counted,
    gateway_command,
    serve_gateway,
    serve_workers,
    worker_specs,
)
from engine.ports import free_port
from engine.spec import EngineError, EngineSpec
from engine.workers import Worker, check_workers, describe, worker
from programs.core.config import SamplingConfig
from programs.core.jsonl import read_jsonl
from programs.core.prompts import chat_prompt
from programs.core.stopping import StopPolicy
from programs.engine_handle import EngineHandle
from programs.explorer import run_explorer

# They start SGLang workers (conftest marks their tests `engine`).
ENGINE_FIXTURES = frozenset({"gateway", "workers"})

REPO = Path(__file__).resolve().parent.parent
BUDGET = 2000  # far above any path the offline explorer writes: a path below it was stopped, not cut
A_FEW_S = 5.0


def test_workers_get_their_own_cores_where_there_are_enough_and_count_their_requests():
    specs = worker_specs("m", 2, [0, 1])
    assert [s.cpu_cores for s in specs] == [(0,), (1,)] and len({s.port for s in specs}) == 2
    assert all("--enable-metrics" in s.extra_args for s in specs)
    assert [s.cpu_cores for s in worker_specs("m", 2, [0])] == [(0,), (0,)]


def test_a_worker_entry_gives_its_model_and_the_context_it_enforces():
    entry = {
        "id": "w1",
        "url": "http://a:1",
        "model_id": "m",
        "models": [{"id": "m", "context_length": 4096}],
        "labels": {"max_model_len": "2048"},
    }
    assert worker(entry) == Worker("http://a:1", "m", 2048, "w1")


def test_the_gateway_routes_cache_aware_over_every_worker_and_keeps_cache_hits_where_they_are():
    argv = gateway_command(["http://a:1", "http://b:2"], "127.0.0.1", 30000, 30001, "--disable-retries")
    assert argv[argv.index("--policy") + 1] == "cache_aware"
    assert argv[argv.index("--worker-warmup-divert-every") + 1] == "0"
    assert argv[argv.index("--prometheus-port") + 1] == "30001"
    assert argv[argv.index("--worker-urls") + 1 :] == ["http://a:1", "http://b:2", "--disable-retries"]


@pytest.fixture(scope="module")
def workers(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list, list]]:
    """Two explorer workers, each on its own core where there are two, and their processes."""
    specs = worker_specs(str(tiny_model), 2, sorted(os.sched_getaffinity(0)))
    with serve_workers(specs, tmp_path_factory.mktemp("workers")) as processes:
        yield specs, processes


@pytest.fixture(scope="module")
def gateway(workers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_gateway([w.base_url for w in workers[0]], tmp_path_factory.mktemp("gateway")) as url:
        yield url


def a2r(*args: str) -> list[str]:
    """`python -m programs.a2r` with the offline model's budgets, as a user types it."""
    return [sys.executable, "-m", "programs.a2r", "--profile", "offline", *args]


def test_a2r_through_the_gateway_is_served_by_both_workers_and_keeps_the_prefix_cache(
    workers, gateway, tmp_path
):
    urls = [w.base_url for w in workers[0]]
    before = [counted(url) for url in urls]
    done = subprocess.run(
        a2r("--explorer-url", gateway, "--n", "4", "--limit", "6", "--output", str(tmp_path)),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    served = [counted(url) - b for url, b in zip(urls, before, strict=True)]
    assert all(count > 0 for count in served), served
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["problems"] == 6 and summary["failed"] == 0
    assert (
        summary["explorer"]["prefix_cache_hit_ratio"] >= 0.9
    )  # a fork's paths reach the worker holding its prompt


class TwoPathsMayEnd(GatewayEndpoint):
    """The gateway's endpoint with every forked path but seeds 0 and 1 decoding to its budget, and those two sent
    only once the workers run the others: the stop fires while they decode, on whichever worker holds them."""

    def __init__(self, url: str, loads: Loads, others: int) -> None:
        super().__init__(url)
        self.loads, self.others = loads, others

    def _add_images(self, s, data) -> None:
        super()._add_images(s, data)
        if data["sampling_params"].get("sampling_seed", 0) >= 2:
            data["sampling_params"]["ignore_eos"] = True

    def generate(self, s, sampling_params):
        if s.variables[SEED_VAR] < 2:
            deadline = time.monotonic() + 60
            while sum(self.loads.running()) < self.others and time.monotonic() < deadline:
                time.sleep(0.05)
        return super().generate(s, sampling_params)


def test_a_first_2_stop_through_the_gateway_leaves_no_worker_running_the_problem(workers, gateway):
    loads = Loads([w.base_url for w in workers[0]])
    handle = EngineHandle.attach(EngineSpec(str(workers[0][0].model), device="cpu", url=gateway))
    prompt = chat_prompt(handle.tokenizer, "What is (9 - 7 + 4) * 5 - 4 - 3?")
    backend = TwoPathsMayEnd(gateway, loads, others=4)
    paths = run_explorer(
        backend, prompt, SamplingConfig(BUDGET), list(range(6)), policy=StopPolicy.parse("first:2")
    )
    deadline = time.monotonic() + A_FEW_S
    while any(loads.running()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert loads.running() == [0, 0]
    for path in paths[2:]:
        assert (
            path.stopped_by == "first:2" and path.finish_reason == "abort" and path.completion_tokens < BUDGET
        )


def test_a_client_that_leaves_the_server_has_its_paths_aborted_on_every_worker(workers, gateway, tmp_path):
    urls, port = [w.base_url for w in workers[0]], free_port()
    loads, aborted = Loads(urls), sum(counted(url, ABORTED) for url in urls)
    argv = [sys.executable, "-m", "programs.serve", "--explorer-url", gateway, "--profile", "offline",
            "--port", str(port), "--output", str(tmp_path)]  # fmt: skip
    server = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if requests.get(f"{url}/health", timeout=5).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        models = requests.get(f"{url}/v1/models", timeout=30).json()["data"]
        context = check_workers(gateway, describe(gateway))[0].context_length
        assert {(m["id"], m["max_model_len"], m["context_length"]) for m in models} == {
            ("a2r", context, context),
            ("self-consistency", context, context),
        }
        # 24 paths at temperature 2 rarely stop on their own: left alone they would decode for a minute or more.
        body = {
            "model": "a2r",
            "messages": [{"role": "user", "content": "What is 2 + 3?"}],
            "stream": True,
            "a2r": {"n": 24, "explorer_max_tokens": 3000, "explorer_temperature": 2.0},
        }
        with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=60) as reply:
            assert next(reply.iter_lines()).startswith(b"data: ")
            deadline = time.monotonic() + 60
            while sum(loads.running()) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert sum(loads.running()) >= 2
        deadline = time.monotonic() + 15  # the server notices the client left at its next keep-alive
        while any(loads.running()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert loads.running() == [0, 0]
        assert sum(counted(url, ABORTED) for url in urls) > aborted  # stopped, not ended on their own
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)


def test_what_is_no_gateway_or_a_gateway_without_workers_is_refused_in_one_line(workers, tmp_path):
    with pytest.raises(EngineError, match=r"^\S+ is not an smg gateway"):
        GatewayEndpoint(workers[0][0].base_url).abort(request_ids(1)[0])
    with serve_gateway([], tmp_path) as empty:
        done = subprocess.run(
            a2r("--explorer-url", empty, "--limit", "1", "--output", str(tmp_path / "run")),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode != 0
    assert f"error: the gateway at {empty} has no workers" in done.stdout


def test_a_worker_that_dies_mid_run_fails_only_the_problems_it_held_and_is_named(workers, tmp_path):
    specs, processes = workers
    victim = specs[1].base_url
    # Without the gateway's retries, a request in flight on the dead worker fails (with them it is redone on
    # the other worker, the other outcome the run accepts).
    with serve_gateway([w.base_url for w in specs], tmp_path / "gateway", "--disable-retries") as url:
        argv = a2r("--explorer-url", url, "--n", "4", "--limit", "8", "--output", str(tmp_path / "run"))
        run = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        loads = Loads([victim])
        deadline = time.monotonic() + 180
        while loads.running() == [0] and time.monotonic() < deadline:
            time.sleep(0.05)
        records = tmp_path / "run" / "records.jsonl"
        finished = records.read_text() if records.exists() else ""
        os.killpg(processes[1].pid, signal.SIGKILL)
        output, _ = run.communicate(timeout=300)
        kept = records.read_text()
        assert kept.startswith(finished)  # nothing finished is lost
        lines = [record for _, record in read_jsonl(records)]
        assert len(lines) == 8, output  # every problem has its record
        failed = [r for r in lines if r.get("error")]  # a record without an error has no such field
        assert failed and all(victim in r["error"] for r in failed), output
        assert run.returncode == 1 and victim in output and "--retry-failed" in output
        retry = [*argv, "--retry-failed"]
        # The gateway still lists the dead worker (its health check drops it only after minutes): a rerun is
        # refused up front, naming it and how to remove it, rather than failing problems one by one.
        refused = subprocess.run(retry, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert refused.returncode != 0 and f"worker {victim} behind the gateway {url} does not answer" in (
            refused.stdout
        ), refused.stdout + refused.stderr
        removal = re.search(rf"curl -X DELETE ({re.escape(url)}/workers/\S+)", refused.stdout)
        assert removal, refused.stdout
        assert requests.delete(removal.group(1), timeout=30).status_code < 300
        deadline = time.monotonic() + 60  # smg accepts the removal and carries it out in the background
        while any(w.url == victim for w in describe(url) or []) and time.monotonic() < deadline:
            time.sleep(0.5)
        again = subprocess.run(retry, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    latest = {
        r["id"]: r for _, r in read_jsonl(records)
    }  # a retried problem's record is appended after its error
    assert len(latest) == 8 and not [r for r in latest.values() if r.get("error")]
