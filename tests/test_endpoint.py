"""What the frontend's endpoint sends (engine.endpoint): request ids no abort can confuse, an abort that stops
one path alone on the real CPU engine, and what a data-parallel engine is sent, against a stand-in server that
records each request."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from engine.endpoint import (
    PINNED_PROMPTS,
    PREFILL_TOP_K,
    DpRanks,
    PathEndpoint,
    TokenTrail,
    request_ids,
)
from engine.launch import post, server_info
from engine.spec import EngineSpec
from programs.core.config import SamplingConfig
from programs.engine_handle import EngineHandle
from programs.explorer import run_explorer


def test_same_model_serves_both_roles_from_one_engine(cpu_engine):
    assert cpu_engine.explorer is cpu_engine.synthesizer
    assert len(cpu_engine.to_launch) == 1
    explorer, synthesizer = EngineHandle.attach_roles(cpu_engine)
    assert explorer is synthesizer  # one tokenizer load, one backend
    # SGLang names its replica count `dp_size`; with one, the pool it reports is the whole pool.
    info = server_info(cpu_engine.explorer)
    assert info["dp_size"] == 1 and explorer.kv_tokens == info["max_total_num_tokens"]
    assert explorer.backend.dp_ranks.dp_size == 1


@contextlib.contextmanager
def stand_in_engine(
    server: dict[str, Any], model_path: str = "org/model"
) -> Iterator[tuple[str, list[dict]]]:
    """An HTTP server answering the routes the frontend reads as SGLang would (`server` is its
    /get_server_info), and every /generate with one short reply; yields its URL and the bodies it got."""
    bodies: list[dict] = []
    answers = {
        "/get_model_info": {"model_path": model_path, "tokenizer_path": model_path},
        "/v1/models": {"data": [{"max_model_len": 4096}]},
        "/get_server_info": server,
    }
    reply = {
        "text": " \\boxed{4}",
        "meta_info": {"prompt_tokens": 5, "completion_tokens": 3, "finish_reason": {"type": "stop"}},
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path in answers:
                self.answer(answers[self.path])
            else:  # as SGLang answers a route it does not have, such as a gateway's /workers
                self.send_error(404)

        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.answer(reply)

        def answer(self, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", bodies
    finally:
        httpd.shutdown()
        httpd.server_close()


def explore(backend: PathEndpoint, bodies: list[dict], prompt: str) -> list[dict]:
    """The request bodies one fork of 3 paths from `prompt` sends."""
    bodies.clear()
    run_explorer(backend, prompt, SamplingConfig(max_tokens=8), seeds=[1, 2, 3])
    return list(bodies)


def test_every_request_of_a_fork_goes_to_one_replica_and_prompts_take_turns():
    with stand_in_engine({"dp_size": 2}) as (url, bodies):
        backend = PathEndpoint(url, dp_size=2)
        first, second, again = (explore(backend, bodies, p) for p in ("Problem A", "Problem B", "Problem A"))
    # the prefix-caching prefill (no new tokens), then the 3 paths, all from the same text
    assert len(first) == 4 and first[0]["sampling_params"]["max_new_tokens"] == 0
    assert sorted(b["sampling_params"]["sampling_seed"] for b in first[1:]) == [1, 2, 3]  # in any order
    assert {b["routed_dp_rank"] for b in first} == {0}
    assert {b["routed_dp_rank"] for b in second} == {1}
    assert {b["routed_dp_rank"] for b in again} == {0}  # where its prefix is cached


def test_an_engine_without_replicas_gets_no_rank():
    with stand_in_engine({"dp_size": 1}) as (url, bodies):
        sent = explore(PathEndpoint(url), bodies, "Problem A")
    assert len(sent) == 4 and not any("routed_dp_rank" in b for b in sent)


def test_the_prefix_commit_names_a_top_k_and_the_paths_keep_theirs():
    """A request without a top-k would make SGLang sort the whole vocabulary for every request of its batch,
    long after the commit itself has finished."""
    with stand_in_engine({"dp_size": 1}) as (url, bodies):
        commit, *paths = explore(PathEndpoint(url), bodies, "Problem A")
    assert commit["sampling_params"] == {"max_new_tokens": 0, "top_k": PREFILL_TOP_K}
    assert [b["sampling_params"]["top_k"] for b in paths] == [SamplingConfig(max_tokens=8).top_k] * 3


def test_replica_choice_is_round_robin_and_forgets_only_the_oldest_prompts():
    ranks = DpRanks(3)
    assert [ranks.rank(p) for p in ("a", "b", "c", "d", "a", "b")] == [0, 1, 2, 0, 0, 1]
    for i in range(PINNED_PROMPTS):
        ranks.rank(f"later {i}")
    # "a" is among the oldest now: forgotten, it takes the next replica in turn and keeps it; the newest stay.
    assert ranks.rank("a") == (4 + PINNED_PROMPTS) % 3 == ranks.rank("a")
    assert ranks.rank(f"later {PINNED_PROMPTS - 1}") == (4 + PINNED_PROMPTS - 1) % 3
    with pytest.raises(ValueError, match="dp_size must be >= 1"):
        DpRanks(0)


def test_a_token_trail_gives_the_longest_point_reached_and_keeps_the_last_two():
    trail = TokenTrail()
    trail.reach("p", [1])
    trail.reach("p a", [1, 2])
    assert trail.known("p a b") == ("p a", [1, 2]) and trail.known("q") is None
    trail.reach("p a b", [1, 2, 3])
    assert trail.known("p") is None  # the first point is forgotten: no request is ever that far behind
    assert trail.known("p a!") == ("p a", [1, 2])


def test_a_server_that_cannot_tokenize_has_the_text_sent_as_is():
    with stand_in_engine({"dp_size": 1}) as (url, _):  # it answers /tokenize without tokens
        endpoint = PathEndpoint(url)
        assert endpoint.tokenize("") == [] and endpoint.tokenize("</think>") is None


@pytest.mark.parametrize(("server", "dp", "kv"), [({"dp_size": 4}, 1, 4000), ({}, 2, 2000)])
def test_the_kv_pool_counts_every_replica(tiny_model, server, dp, kv):
    """SGLang reports one replica's pool; the handle's is the engine's (the replicas the server reports, else
    the ones it was planned with)."""
    with stand_in_engine({**server, "max_total_num_tokens": 1000}, str(tiny_model)) as (url, _):
        handle = EngineHandle.attach(EngineSpec(model="", url=url, dp=dp))
    assert handle.kv_tokens == kv and handle.backend.dp_ranks.dp_size == kv // 1000
    assert handle.in_flight(1000) == kv // 1000


def test_request_ids_never_prefix_one_another():
    ids = request_ids(120) + request_ids(120)
    assert len(set(ids)) == len(ids)
    assert not [(a, b) for a in ids for b in ids if a != b and b.startswith(a)]


@pytest.mark.parametrize("rid", ["", "a2r-x-p1", "."])
def test_abort_refuses_an_id_that_would_stop_other_requests(rid):
    with pytest.raises(ValueError, match="refusing to abort"):
        PathEndpoint.abort(None, rid)  # type: ignore[arg-type]  # refused before any request is sent


def test_aborting_path_1_does_not_stop_path_10(cpu_engine, explorer_load):
    url = cpu_engine.explorer.base_url
    ids, replies = request_ids(11), {}

    def generate(rid: str) -> None:
        body = {
            "text": "<think>\n",
            "rid": rid,
            "sampling_params": {"max_new_tokens": 300, "ignore_eos": True},
        }
        replies[rid] = json.loads(post(url, "/generate", body, key=cpu_engine.explorer.api_key))["meta_info"]

    threads = [threading.Thread(target=generate, args=(ids[i],)) for i in (1, 10)]
    for thread in threads:
        thread.start()
    explorer_load.at_least(2, within_s=60)
    PathEndpoint(url, api_key=cpu_engine.explorer.api_key).abort(ids[1])
    for thread in threads:
        thread.join(120)
    assert replies[ids[1]]["finish_reason"]["type"] == "abort"
    assert replies[ids[1]]["completion_tokens"] < 300
    assert replies[ids[10]]["finish_reason"]["type"] == "length"
    assert replies[ids[10]]["completion_tokens"] == 300
