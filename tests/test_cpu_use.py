"""Where a local engine's CPU time goes: the real CPU engine's processes found from its URL and read by kind,
and nothing read for a remote URL or a port that something other than SGLang answers."""

from __future__ import annotations

import socket

from engine.cpu_use import KINDS, cpu_seconds, local_server
from engine.launch import post
from engine.spec import is_server


def test_the_local_engine_is_found_from_its_url_and_its_scheduler_does_the_decoding(cpu_engine):
    server = local_server(cpu_engine.explorer.base_url)
    assert server is not None and is_server(server)
    before = cpu_seconds(server)
    assert set(before) == set(KINDS)
    body = {"text": "What is 2 + 3?", "sampling_params": {"max_new_tokens": 64, "ignore_eos": True}}
    post(cpu_engine.explorer.base_url, "/generate", body, key=cpu_engine.explorer.api_key)
    after = cpu_seconds(server)
    used = {kind: after[kind] - before[kind] for kind in KINDS}
    assert all(seconds >= 0 for seconds in used.values())
    assert used["scheduler"] > used["detokenizer"] and used["scheduler"] > 0


def test_nothing_is_read_for_a_remote_engine_or_a_port_another_program_answers(port):
    assert local_server(f"http://10.255.255.1:{port}") is None
    with socket.socket() as listener:  # this test process, not an SGLang server, listens on the port
        listener.bind(("127.0.0.1", port))
        listener.listen()
        assert local_server(f"http://127.0.0.1:{port}") is None
    assert local_server("http://127.0.0.1") is None  # no port: nothing to look up
