"""`programs.serve` through the official `openai` client, on a real CPU engine with the offline model."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import openai
import pytest
import requests
from fastapi import FastAPI

from engine.launch import post
from engine.layout import ENGINE_KEY_ENV
from engine.ports import free_port
from programs import planning
from programs.chat_api import ApiError, ChatRequest
from programs.core.config import RunConfig, SamplingConfig
from programs.core.grading import extract_boxed
from programs.core.metrics import majority_vote
from programs.core.records import UNANIMOUS
from programs.engine_handle import EngineHandle
from programs.http_server import HEADER_TIMEOUT_S, http_server
from programs.profile import PAPER
from programs.serve import API_KEY_ENV, Service, answer_text, build_app, main, parse_args, server_key

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-test"
QUESTION = "What is (3 + 4) * 2 - 5?"
CONFIG = RunConfig(4, SamplingConfig(512), SamplingConfig(160), "tiny", "tiny")
BOXED = re.compile(r"\\boxed\{([^}]*)\}")
MAX_QUEUE = 9


@dataclass
class Served:
    url: str
    service: Service

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=300)

    def post(self, body: object, key: str = KEY, raw: bytes | None = None) -> requests.Response:
        data = raw if raw is not None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        return requests.post(f"{self.url}/v1/chat/completions", data=data, headers=headers, timeout=300)

    def active(self, within_s: float) -> int:
        """The requests the service holds once none is left, or as they stand after `within_s`: a cancelled
        request's slot is freed only once its cancelled stage has unwound."""
        deadline = time.monotonic() + within_s
        while self.service.active and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.service.active


def serving(service: Service, app_server: Callable) -> Iterator[Served]:
    with app_server(build_app(service, KEY)) as (url, _, _):
        yield Served(url, service)


@pytest.fixture(scope="module")
def served(cpu_engine, app_server) -> Iterator[Served]:
    handle = EngineHandle.attach(cpu_engine.explorer)
    yield from serving(Service(CONFIG, handle, handle, max_queue=MAX_QUEUE), app_server)


def ask(served: Served, model: str = "a2r", **extra: object):
    return served.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], **extra
    )


def test_models_health_and_the_api_key(served):
    assert [m.id for m in served.client().models.list()] == ["a2r", "self-consistency"]
    assert requests.get(f"{served.url}/health", timeout=30).json() == {"status": "ok"}
    with pytest.raises(openai.AuthenticationError):
        served.client(key="wrong").models.list()
    assert served.post({"model": "a2r"}, key="").status_code == 401


def test_a2r_answers_with_the_synthesis_and_usage_adds_up_to_the_engines_counts(served):
    reply = ask(served, extra_body={"a2r": {"return_references": True}})
    message, usage = reply.choices[0].message, reply.usage.model_dump()
    assert BOXED.search(message.content) and message.model_extra["reasoning_content"]
    assert reply.choices[0].finish_reason in ("stop", "length")
    paths = reply.model_extra["a2r"]["paths"]
    stages = usage["a2r"]
    assert len(paths) == 4 == stages["explorer"]["paths"]
    assert stages["explorer"]["completion_tokens"] == sum(p["completion_tokens"] for p in paths)
    assert (
        usage["completion_tokens"]
        == stages["explorer"]["completion_tokens"] + stages["synthesizer"]["completion_tokens"]
    )
    assert (
        usage["prompt_tokens"] == stages["explorer"]["prompt_tokens"] + stages["synthesizer"]["prompt_tokens"]
    )
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert stages["synthesizer"]["completion_tokens"] > 0 and stages["explorer"]["cached_tokens"] > 0


def test_a2r_syntheses_answer_with_the_vote_of_the_samples_and_usage_counts_each(served):
    reply = ask(served, extra_body={"a2r": {"syntheses": 3, "return_references": True}})
    answers, used = reply.model_extra["a2r"]["syntheses"], reply.usage.model_dump()["a2r"]["synthesizer"]
    assert len(answers) == 3 == used["calls"]
    assert extract_boxed(reply.choices[0].message.content) == majority_vote(answers)
    # Streamed, the samples cannot be shown as they decode: the voted reply comes whole once they are done.
    chunks = list(ask(served, stream=True, extra_body={"a2r": {"syntheses": 3}}))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert BOXED.search(content) and "</think>" not in content


def test_streaming_sends_thinking_then_content_then_usage(served):
    chunks = list(ask(served, stream=True, stream_options={"include_usage": True}))
    reasoning = "".join(
        c.choices[0].delta.model_extra.get("reasoning_content") or "" for c in chunks if c.choices
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert reasoning and BOXED.search(content) and "</think>" not in reasoning + content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_self_consistency_answers_with_a_path_that_gave_the_vote(served):
    reply = ask(served, "self-consistency", extra_body={"a2r": {"return_references": True}})
    vote = reply.model_extra["a2r"]["self_consistency"]
    answers = [p["answer"] for p in reply.model_extra["a2r"]["paths"]]
    assert vote in answers and BOXED.findall(reply.choices[0].message.content)[-1] == vote
    assert reply.usage.model_extra["a2r"]["synthesizer"]["completion_tokens"] == 0


def test_the_a2r_object_takes_policies_that_widen_and_probe(served):
    # posterior:0.01 never settles on one wave of 4, even on 4 agreeing answers (the leader then stays with
    # probability 0.97), so the second wave always starts.
    knobs = {"n": 8, "stop": "posterior:0.01,wave=4,probe=16", "return_references": True}
    reply = ask(served, extra_body={"a2r": knobs})
    paths = reply.model_extra["a2r"]["paths"]
    assert [p["wave"] for p in paths] == [0] * 4 + [1] * 4
    assert sum(len(p["probes"]) for p in paths) > 0
    assert reply.usage.model_extra["a2r"]["explorer"]["probe_tokens"] > 0  # probes are paid for, and said


def test_temperature_zero_still_explores_distinct_paths(served):
    reply = ask(served, temperature=0, extra_body={"a2r": {"return_references": True, "n": 6}})
    paths = reply.model_extra["a2r"]["paths"]
    assert len(paths) == 6 and len({(p["answer_part"], p["completion_tokens"]) for p in paths}) > 1


def test_eight_concurrent_requests_all_answer(served):
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: ask(served), range(8)))
    assert all(BOXED.search(r.choices[0].message.content or "") for r in replies)


def test_past_the_queue_limit_a_request_gets_503_with_retry_after(served):
    body = {"model": "self-consistency", "messages": [{"role": "user", "content": QUESTION}]}
    with ThreadPoolExecutor(MAX_QUEUE + 4) as pool:
        replies = list(pool.map(lambda _: served.post(body), range(MAX_QUEUE + 4)))
    busy = [r for r in replies if r.status_code == 503]
    assert busy and all(r.headers["Retry-After"] for r in busy)
    assert busy[0].json()["error"]["type"] == "service_unavailable"
    assert {r.status_code for r in replies} == {200, 503}


GOOD = {"model": "a2r", "messages": [{"role": "user", "content": QUESTION}]}


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "a2r"}, 400, "messages"),
        ({**GOOD, "model": "gpt-4"}, 404, "model"),
        ({**GOOD, "messages": [{"role": "user", "content": "  "}]}, 400, "messages[0].content"),
        (
            {
                **GOOD,
                "messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "7"}],
            },
            400,
            "messages[1]",
        ),
        (
            {**GOOD, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            400,
            "messages[0].content",
        ),
        ({**GOOD, "n": 2}, 400, "n"),
        ({**GOOD, "a2r": {"n": 0}}, 400, "a2r.n"),
        ({**GOOD, "a2r": {"n": 1000}}, 400, "a2r.n"),
        ({**GOOD, "a2r": {"paths": 4}}, 400, "a2r"),
        ({**GOOD, "a2r": {"stop": "vote:3"}}, 400, "a2r"),
        ({**GOOD, "a2r": {"force_answer": 0}}, 400, "a2r.force_answer"),
        ({**GOOD, "temperature": "hot"}, 400, "temperature"),
        ({**GOOD, "messages": [{"role": "user", "content": "1 + " * 3000 + "1"}]}, 413, "messages"),
    ],
)
def test_bad_input_gets_an_openai_error_and_the_server_goes_on(served, body, status, param):
    reply = served.post(body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param and error["message"]
    assert served.post(GOOD).status_code == 200


def test_malformed_json_is_a_400(served):
    reply = served.post(None, raw=b'{"model": "a2r", "messages": [')
    assert reply.status_code == 400 and "not valid JSON" in reply.json()["error"]["message"]


def test_a_client_that_leaves_mid_stream_has_its_engine_requests_aborted(served, explorer_load):
    # 24 paths at temperature 2 rarely stop on their own: left alone they would decode for a minute or more.
    body = {
        **GOOD,
        "stream": True,
        "a2r": {"n": 24, "explorer_max_tokens": 3000, "explorer_temperature": 2.0},
    }
    headers = {"Authorization": f"Bearer {KEY}"}
    with requests.post(f"{served.url}/v1/chat/completions", json=body, headers=headers, stream=True) as reply:
        assert next(reply.iter_lines()).startswith(b"data: ")  # the role chunk: the paths are exploring
        # Paths are decoding when the client leaves (a loaded machine may not show all 24 at one instant). The
        # count asserted is the one waited for: a second reading could miss a request that was passing through.
        assert explorer_load.at_least(2, within_s=60) >= 2  # fork's prefix commit alone is one request
    assert explorer_load.settled(15) == 0  # the server notices the client left, then aborts
    assert served.active(within_s=15) == 0


@pytest.mark.parametrize("syntheses", [1, 3])
def test_a_client_that_leaves_during_synthesis_has_its_syntheses_aborted(
    cpu_engine, app_server, explorer_load, syntheses
):
    # One short path, then syntheses that ignore EOS (the tiny synthesizer ends its own within a second): left
    # alone they would decode 3000 tokens each long after the client is gone. Explorer and synthesizer are one
    # engine here.
    handle = EngineHandle.attach(cpu_engine.explorer)
    config = replace(CONFIG, synthesizer=SamplingConfig(3000, ignore_eos=True))
    body = {**GOOD, "stream": True, "a2r": {"n": 1, "explorer_max_tokens": 64, "syntheses": syntheses}}
    headers = {"Authorization": f"Bearer {KEY}"}
    for served in serving(Service(config, handle, handle), app_server):
        with requests.post(
            f"{served.url}/v1/chat/completions", json=body, headers=headers, stream=True
        ) as reply:
            lines = (line for line in reply.iter_lines() if line.startswith(b"data: "))
            next(lines)  # the role chunk
            if syntheses == 1:
                next(lines)  # the synthesis's first streamed text
            else:  # M syntheses stream nothing until all end: the engine shows them decoding side by side
                assert explorer_load.at_least(syntheses, within_s=60) >= syntheses
        assert explorer_load.settled(15) == 0
        assert served.active(within_s=15) == 0


def test_an_engine_that_died_answers_503(cpu_engine, app_server):
    handle = EngineHandle.attach(cpu_engine.explorer)
    backend = copy.copy(handle.backend)  # the engine it was attached to, gone since
    backend.base_url = f"http://127.0.0.1:{free_port()}"
    dead = replace(handle, backend=backend)
    for served in serving(Service(CONFIG, dead, dead), app_server):
        reply = served.post(GOOD)
        assert reply.status_code == 503 and reply.headers["Retry-After"]
        assert "engines failed" in reply.json()["error"]["message"]


@pytest.mark.parametrize(("argv", "port"), [([], 8000), (["--port", "18441"], 18441)])
def test_launched_engines_never_take_the_servers_port(argv, port):
    args = parse_args(["--n", "4", "--device", "cpu", "--explorer-model", "org/model", *argv])
    engines = planning.plan_engines(args, PAPER, "cpu", None)
    assert port not in {engines.explorer.port, engines.synthesizer.port}


def test_a_port_in_use_is_refused_in_one_line_before_anything_starts(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["--n", "4", "--port", str(port), "--output", str(tmp_path)])
    assert code == 2
    out = capsys.readouterr()
    lines = (out.out + out.err).strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "--port" in lines[0], lines
    assert not list(tmp_path.iterdir())  # no engine was started, no log written


def started(process: subprocess.Popen, within_s: float) -> str:
    """The address `programs.serve` printed once its engines were up (it also reports a failed start)."""
    seen: list[str] = []
    deadline = time.monotonic() + within_s
    for line in process.stdout:
        seen.append(line)
        if match := re.search(r"A2R on (http://\S+)/v1", line):
            return match.group(1)
        assert time.monotonic() < deadline, "".join(seen)
    raise AssertionError(f"exited with {process.wait()} before serving:\n{''.join(seen)}")


@pytest.mark.engine
def test_the_command_as_typed_launches_its_engines_and_answers_only_as_a2r(tmp_path, offline_pair):
    port = free_port()
    argv = [sys.executable, "-m", "programs.serve", "--n", "4", "--port", str(port), "--api-key", KEY,
            "--output", str(tmp_path)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != ENGINE_KEY_ENV}  # its engines get a key of their own
    process = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        url = started(process, within_s=600)
        assert url == f"http://127.0.0.1:{port}"
        served = Served(url, None)  # type: ignore[arg-type]
        reply = served.client().chat.completions.create(
            model="a2r", messages=[{"role": "user", "content": QUESTION}]
        )
        assert BOXED.search(reply.choices[0].message.content)
        # A2R's routes only: its health body, its models behind the key, none of the engine's own routes.
        assert requests.get(f"{url}/health", timeout=30).json() == {"status": "ok"}
        assert [m.id for m in served.client().models.list()] == ["a2r", "self-consistency"]
        assert requests.get(f"{url}/v1/models", timeout=30).status_code == 401
        assert requests.get(f"{url}/get_model_info", timeout=30).status_code == 404
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    assert process.returncode in (0, 130), output


def test_the_command_fronts_running_engines_and_stops_on_sigterm(cpu_engine, tmp_path):
    port = free_port()
    argv = [sys.executable, "-m", "programs.serve", "--explorer-url", cpu_engine.explorer.base_url,
            "--port", str(port), "--output", str(tmp_path), "--explorer-max-tokens", "512",
            "--synthesizer-max-tokens", "160"]  # fmt: skip
    process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=5).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        served = Served(f"http://127.0.0.1:{port}", None)  # type: ignore[arg-type]
        reply = served.client(key="none").chat.completions.create(
            model="a2r", messages=[{"role": "user", "content": QUESTION}]
        )
        assert BOXED.search(reply.choices[0].message.content)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode in (0, 130), output


def test_self_consistency_works_on_a_server_that_skips_unanimous_syntheses():
    base = replace(CONFIG, skip_synthesis_if_unanimous=True)
    body = {"model": "self-consistency", "messages": [{"role": "user", "content": QUESTION}]}
    assert not ChatRequest.parse(body, base).config.synthesize
    assert ChatRequest.parse({**body, "model": "a2r"}, base).config.skip_synthesis_if_unanimous


def test_max_tokens_that_fill_the_synthesizers_context_are_refused_before_exploring(served):
    reply = served.post({**GOOD, "max_tokens": 1 << 20, "a2r": {"return_references": True}})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == "max_tokens" and "(4096 tokens)" in error["message"]
    assert not re.search(r"-\d", error["message"])


def test_a_body_over_the_limit_is_a_413_declared_or_streamed(served):
    big = json.dumps({**GOOD, "messages": [{"role": "user", "content": "x" * (5 << 20)}]}).encode()
    assert served.post(None, raw=big).status_code == 413
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))  # chunked: no Content-Length
    reply = requests.post(f"{served.url}/v1/chat/completions", data=chunks, headers=headers, timeout=300)
    assert reply.status_code == 413 and "--max-body-bytes" in reply.json()["error"]["message"]


def test_a_conversation_longer_than_the_context_can_hold_is_a_413_before_tokenizing(served):
    long = {**GOOD, "messages": [{"role": "user", "content": "1 + " * 20_000 + "1"}]}
    reply = served.post(long)
    assert reply.status_code == 413 and "characters" in reply.json()["error"]["message"]


def test_the_character_cap_counts_the_whole_conversation():
    messages = [
        {"role": "user", "content": "a" * 60},
        {"role": "assistant", "content": "b" * 30},
        {"role": "user", "content": "c" * 20},
    ]
    body = {"model": "a2r", "messages": messages}
    assert ChatRequest.parse(body, CONFIG, max_chars=110).query == "c" * 20
    with pytest.raises(ApiError) as refused:
        ChatRequest.parse(body, CONFIG, max_chars=109)
    assert refused.value.status == 413 and refused.value.param == "messages"


USER = [{"role": "user", "content": QUESTION}]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"max_tokens": float("nan")}, "max_tokens"),
        ({"a2r": {"n": float("inf")}}, "a2r.n"),
        ({"model": ["a2r"]}, "model"),
        ({"a2r": {"stop": 5}}, "a2r.stop"),
        ({"a2r": {"stop": ["majority"]}}, "a2r.stop"),
        ({"stream_options": [1]}, "stream_options"),
        ({"stream_options": "x"}, "stream_options"),
        ({"stream": "false"}, "stream"),
        ({"a2r": {"return_references": "no"}}, "a2r.return_references"),
        ({"a2r": {"keep_confident": True}}, "a2r.keep_confident"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]},
            "messages[0].content",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": {"x": 1}}]}]},
            "messages[0].content",
        ),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"}, "tools"),
        ({"functions": [{"name": "f"}], "function_call": "auto"}, "functions"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
        ({"logprobs": True, "top_logprobs": 5}, "logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": 1}, "frequency_penalty"),
        ({"stop": 5}, "stop"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "self-consistency", "stop": "x"}, "stop"),
        ({"seed": "7"}, "seed"),
        ({"n": 2}, "n"),
        ({"a2r": {"syntheses": 0}}, "a2r.syntheses"),
        ({"model": "self-consistency", "a2r": {"syntheses": 3}}, "a2r"),  # nothing to sample
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function"}]},
                    {"role": "tool", "content": "4"},
                    *USER,
                ]
            },
            "messages[1]",
        ),
    ],
)
def test_a_body_the_server_cannot_honour_is_a_400_naming_the_param(extra, param):
    with pytest.raises(ApiError) as refused:
        ChatRequest.parse({"model": "a2r", "messages": USER, **extra}, CONFIG)
    assert (refused.value.status, refused.value.param) == (400, param), refused.value.message


@pytest.mark.parametrize(
    "extra",
    [
        {"messages": [{"role": "developer", "content": "Be brief."}, *USER]},
        {"messages": [*USER, {"role": "assistant", "content": None}, *USER]},
        {"n": None, "stream": None, "stream_options": None, "stop": None, "seed": None},
        {"tools": [], "logprobs": False, "response_format": {"type": "text"}, "presence_penalty": 0},
    ],
)
def test_what_openais_clients_commonly_send_is_accepted(extra):
    request = ChatRequest.parse({"model": "a2r", "messages": USER, **extra}, CONFIG)
    assert request.query == QUESTION and request.messages[0]["role"] in ("system", "user")


def test_stop_and_seed_reach_the_synthesizer_and_the_run():
    request = ChatRequest.parse({"model": "a2r", "messages": USER, "stop": "\\n\\n", "seed": 7}, CONFIG)
    assert request.stop == ("\\n\\n",) and request.config.seed == 7


def test_the_synthesizer_stops_at_a_stop_sequence(served):
    reply = ask(served, stop=["boxed"])
    message = reply.choices[0].message
    assert "boxed" not in (message.content or "") + (message.model_extra.get("reasoning_content") or "")
    assert reply.choices[0].finish_reason == "stop"


def test_nested_json_is_a_400_and_unknown_routes_are_openai_errors(served):
    reply = served.post(None, raw=b"[" * 100_000)
    assert reply.status_code == 400 and "nested" in reply.json()["error"]["message"]
    headers = {"Authorization": f"Bearer {KEY}"}
    for route in ("/docs", "/redoc", "/openapi.json", "/v1/nothing"):
        missing = requests.get(f"{served.url}{route}", headers=headers, timeout=30)
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error", route


def test_the_bearer_scheme_is_read_in_any_case(served):
    reply = requests.get(f"{served.url}/v1/models", headers={"Authorization": f"bearer {KEY}"}, timeout=30)
    assert reply.status_code == 200
    assert (
        requests.get(f"{served.url}/v1/models", headers={"Authorization": f"Bearer  {KEY}"}).status_code
        == 401
    )


def test_a_client_that_leaves_is_logged_as_cancelled(served, cpu_engine, caplog):
    engine, key = cpu_engine.explorer.base_url, cpu_engine.explorer.api_key
    with caplog.at_level(logging.INFO, logger="a2r.serve"):
        # The engine holds every request while paused, so the request is still exploring when its client leaves,
        # however fast the model would have answered.
        post(engine, "/pause_generation", {"mode": "in_place"}, timeout=30, key=key)
        try:
            with pytest.raises(requests.Timeout):
                requests.post(
                    f"{served.url}/v1/chat/completions",
                    json=GOOD,
                    timeout=2,
                    headers={"Authorization": f"Bearer {KEY}"},
                )
        finally:
            post(engine, "/continue_generation", {}, timeout=30, key=key)
        deadline = time.monotonic() + 60  # the server notices within a second; the line is its last act
        while not (lines := [r.getMessage() for r in caplog.records if r.name == "a2r.serve"]):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert " cancelled " in lines[0], lines


def test_health_is_read_from_the_engines_at_most_once_per_period(cpu_engine):
    handle = EngineHandle.attach(cpu_engine.explorer)
    service = Service(CONFIG, handle, handle)
    service.health_ttl_s = 3600
    assert service.healthy()
    backend = copy.copy(handle.backend)
    backend.base_url = f"http://127.0.0.1:{free_port()}"  # the engines are gone from here on
    service.explorer = service.synthesizer = replace(handle, backend=backend)
    assert service.healthy()  # the reading of a moment ago
    service.health_ttl_s = 0
    assert not service.healthy()


def test_the_key_is_read_from_a_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert server_key(parse_args([])) == "from-env"
    (tmp_path / "key").write_text("from-file\n")
    assert server_key(parse_args(["--api-key-file", str(tmp_path / "key")])) == "from-file"
    monkeypatch.delenv(API_KEY_ENV)
    assert server_key(parse_args([])) is None
    (tmp_path / "empty").write_text("")
    with pytest.raises(ValueError, match="empty"):
        server_key(parse_args(["--api-key-file", str(tmp_path / "empty")]))


def test_serving_every_network_without_a_key_is_warned_about(capsys, monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    with socket.socket() as busy:  # the run stops at its port, right after the warning
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        assert main(["--host", "0.0.0.0", "--port", str(busy.getsockname()[1])]) == 2
    out = capsys.readouterr().out
    assert "warning: 0.0.0.0 is not this machine alone and no API key is set" in out


# What evaluation harnesses send (docs/serving.md#evaluation-harnesses), through the `openai` client.
# lm-eval 0.4.13 `local-chat-completions` on its AIME tasks: the prompt as the task writes it, temperature 0,
# its fixed seed, the task's stop strings (the first four), and `max_gen_toks` as max_tokens (the task's 32768
# is over the CPU pair's context, so a user passes --gen_kwargs max_gen_toks=...). It reads only
# `message.content`, and scores the string after its last \boxed.
LM_EVAL = {"temperature": 0, "seed": 1234, "max_tokens": 160,
           "stop": ["Question:", "</s>", "<|im_end|>", "<|eot_id|>"]}  # fmt: skip
LM_EVAL_PROMPT = f"Question: {QUESTION}\nAnswer:"


def last_boxed(text: str) -> str | None:
    """What lm-eval's AIME scoring compares: the text inside the last \\boxed{...}."""
    found = BOXED.findall(text or "")
    return found[-1] if found else None


def test_lm_evals_aime_request_is_answered_in_content_alone(served):
    reply = served.client().chat.completions.create(
        model="a2r", messages=[{"role": "user", "content": LM_EVAL_PROMPT}], **LM_EVAL
    )
    content = reply.choices[0].message.content
    assert last_boxed(content), content  # the answer is in content, not only in reasoning_content
    assert "<think>" not in content and "</think>" not in content and "Question:" not in content
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_a_seed_gives_the_same_request_the_same_seeds_each_time_it_is_sent():
    body = {"model": "a2r", "messages": [{"role": "user", "content": LM_EVAL_PROMPT}], **LM_EVAL}
    first, again = (ChatRequest.parse(body, CONFIG) for _ in range(2))
    other = ChatRequest.parse({**body, "messages": USER}, CONFIG)
    unseeded = ChatRequest.parse({**body, "seed": None}, CONFIG)

    def seeds(request: ChatRequest, batch: str) -> list[int]:
        return [request.config.path_seed(request.problem_id(batch), i) for i in range(request.config.n + 1)]

    assert seeds(first, "b1") == seeds(again, "b2")  # every path's seed and the synthesizer's
    assert seeds(first, "b1") != seeds(other, "b1")  # another question, other seeds
    assert seeds(unseeded, "b1") != seeds(unseeded, "b2")  # no seed: a run of its own each time
    assert len(set(seeds(first, "b1"))) == CONFIG.n + 1  # the paths still differ from each other


@pytest.mark.parametrize(
    ("synthesis", "content"),
    [
        (SimpleNamespace(text="<think>0, 2, 5</think>\n\\boxed{025}", finish_reason="stop"), "\\boxed{025}"),
        (SimpleNamespace(text="", answer="025", finish_reason=UNANIMOUS), "\\boxed{025}"),
    ],
)
def test_a_boxed_answer_is_returned_as_the_model_wrote_it_leading_zeros_included(synthesis, content):
    # lm-eval compares strings, so its AIME score counts "025" against a gold "25" as wrong, as it does for any
    # server of the same model: the reply stays the model's text, and scores stay comparable (docs/serving.md).
    text, _ = answer_text(SimpleNamespace(synthesizer=synthesis), "a2r")  # type: ignore[arg-type]
    assert text.endswith(content) and last_boxed(text) == "025"


def test_inspects_epochs_of_one_question_are_each_answered(served):
    # inspect-ai runs a sample's epochs as separate, concurrent requests with the same messages and no seed.
    def epoch(_: int):
        return served.client().chat.completions.create(
            model="a2r", messages=[{"role": "user", "content": QUESTION}], max_tokens=160
        )

    with ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(epoch, range(3)))
    assert len({r.id for r in replies}) == 3
    for reply in replies:
        assert last_boxed(reply.choices[0].message.content) and reply.usage.completion_tokens > 0


def test_evalscopes_openai_api_request_is_answered(served):
    reply = served.client().chat.completions.create(
        model="a2r",
        messages=[
            {"role": "system", "content": "You are a careful solver."},
            {"role": "user", "content": QUESTION},
        ],  # fmt: skip
        max_tokens=160,
        temperature=0.0,
        top_p=1.0,
        n=1,
        stream=False,  # fmt: skip
    )
    assert last_boxed(reply.choices[0].message.content) and reply.usage.total_tokens > 0


def sse_events(reply: requests.Response) -> list[str]:
    """The `data:` payloads of an SSE stream, checked as a strict reader takes them: every other line is a
    comment (`:`) or blank."""
    events = []
    for line in reply.iter_lines(decode_unicode=True):
        if line.startswith("data: "):
            events.append(line.removeprefix("data: "))
        else:
            assert line == "" or line.startswith(":"), line
    return events


def test_a_perf_burst_of_concurrent_streams_all_finish_with_usage(served):
    # evalscope perf: a burst of streamed requests at once, each timed to its first and last chunk and counted
    # by the usage chunk.
    body = {**GOOD, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 160}
    headers = {"Authorization": f"Bearer {KEY}"}

    def one(_: int) -> list[str]:
        url = f"{served.url}/v1/chat/completions"
        with requests.post(url, json=body, headers=headers, stream=True, timeout=300) as reply:
            assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
            return sse_events(reply)

    with ThreadPoolExecutor(6) as pool:
        streams = list(pool.map(one, range(6)))
    for events in streams:
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert served.service.active == 0


def test_a_request_held_past_every_server_timeout_with_nothing_sent_still_answers(served, cpu_engine):
    # A harness waits on one non-streamed request for as long as a problem takes, and neither side sends a
    # byte meanwhile. The server's only timeouts are the request head's (before a request arrives) and uvicorn's
    # keep-alive (between requests); the request is held past both by the paused engine, then answers.
    hold = max(HEADER_TIMEOUT_S, http_server(FastAPI()).config.timeout_keep_alive) + 2
    engine, key = cpu_engine.explorer.base_url, cpu_engine.explorer.api_key
    pool = ThreadPoolExecutor(1)
    post(engine, "/pause_generation", {"mode": "in_place"}, timeout=30, key=key)
    try:
        start = time.monotonic()
        pending = pool.submit(
            served.client().chat.completions.create,
            model="a2r",
            messages=[{"role": "user", "content": LM_EVAL_PROMPT}],
            **LM_EVAL,  # fmt: skip
        )
        time.sleep(hold)
        held = not pending.done()  # neither answered nor cut while the engine held it
    finally:
        post(engine, "/continue_generation", {}, timeout=30, key=key)
    reply = pending.result(timeout=300)  # raises if the server cut it
    pool.shutdown()
    assert held and time.monotonic() - start > hold
    assert last_boxed(reply.choices[0].message.content)
