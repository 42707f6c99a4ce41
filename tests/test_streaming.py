"""A streamed path put back together by `PathEndpoint`, from a server that sends whole chunks (SGLang's
default) and from one that sends deltas (`--incremental-streaming-output`, how the online confidence stop
launches its explorer): the same text and log-probabilities either way, each token once."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import sglang as sgl

from engine.endpoint import ON_PROGRESS_VAR, StreamedReply
from engine.launch import serve
from engine.layout import EngineConfig, Engines, plan
from engine.ports import free_port
from programs.core.confidence import STREAM_INTERVAL
from programs.engine_handle import EngineHandle
from programs.planning import INCREMENTAL_STREAMING, streamed_for_online

REPO = Path(__file__).resolve().parent.parent


def chunks(incremental: bool) -> list[dict]:
    """Three chunks of one reply, as either kind of server sends them."""
    pieces, tops = ["Hel", "lo", "!"], [[[-0.1, 1, "H"]], [[-0.2, 2, "l"], [-0.3, 3, "o"]], [[-0.4, 4, "!"]]]
    sent = []
    for i in range(3):
        if incremental:
            sent.append(
                {"text": pieces[i], "meta_info": {"output_top_logprobs": tops[i], "completion_tokens": i}}
            )
        else:
            whole = [t for top in tops[: i + 1] for t in top]
            sent.append({"text": "".join(pieces[: i + 1]), "meta_info": {"output_top_logprobs": whole}})
    return sent


@pytest.mark.parametrize("incremental", [False, True])
def test_whole_chunks_and_deltas_give_the_same_reply(incremental):
    reply = StreamedReply(incremental)
    read = [reply.add(chunk) for chunk in chunks(incremental)]
    assert "".join(text for text, _ in read) == "Hello!"
    tops = [meta["output_top_logprobs"] for _, meta in read]
    assert [t[1] for t in tops[-1]] == [1, 2, 3, 4]
    assert all(top is tops[-1] for top in tops)  # one list grown in place: a reader keeps its place


@sgl.function
def streamed(s, prompt: str, seen: list):
    s += prompt
    s.set_var(ON_PROGRESS_VAR, seen.append)
    s += sgl.gen("out", max_tokens=200, temperature=0, return_logprob=True, top_logprobs_num=5)


@pytest.fixture(scope="module")
def incremental_engine(tiny_model, tmp_path_factory) -> Iterator[Engines]:
    config = EngineConfig(explorer_model=str(tiny_model), port=free_port())
    explorer = replace(plan(config, device="cpu").explorer, extra_args=(INCREMENTAL_STREAMING,))
    with serve(
        Engines(explorer, explorer, layout="same-model"),
        tmp_path_factory.mktemp("incremental-logs"),
        pin_frontend=False,
    ) as running:
        yield running


@pytest.mark.engine
@pytest.mark.parametrize("engine", ["cpu_engine", "incremental_engine"])
def test_a_streamed_path_is_whole_from_either_kind_of_server(engine, request):
    handle = EngineHandle.attach(request.getfixturevalue(engine).explorer)
    assert handle.backend.incremental == (engine == "incremental_engine")  # read from the server's info
    seen: list[dict] = []
    state = streamed.run(prompt="3 + 4 =", seen=seen, backend=handle.backend)
    assert state.error() is None
    meta = state.get_meta_info("out")
    assert len(seen) > 2  # it streamed, chunk by chunk
    assert len(meta["output_top_logprobs"]) == len(meta["output_token_logprobs"]) == meta["completion_tokens"]
    ids = [entry[1] for entry in meta["output_token_logprobs"]]
    assert handle.tokenizer.decode(ids, skip_special_tokens=True) == state["out"]


@pytest.mark.engine
@pytest.mark.parametrize(("engine", "warned"), [("cpu_engine", True), ("incremental_engine", False)])
def test_a_running_explorer_that_streams_whole_chunks_is_named(engine, warned, request, capsys):
    url = request.getfixturevalue(engine).explorer.base_url
    remote = plan(EngineConfig(explorer_url=url), device="cpu")
    assert streamed_for_online(remote) == remote  # nothing is launched, so nothing changes
    assert ("was started without --incremental-streaming-output" in capsys.readouterr().out) == warned


@pytest.mark.engine
def test_the_streaming_benchmark_measures_fewer_bytes_from_deltas(tiny_model, tmp_path):
    """`python -m benchmarks.streaming` as a user types it, with short paths: both server modes decode the
    same tokens, and the deltas carry less JSON than the whole chunks."""
    argv = [
        sys.executable,
        "-m",
        "benchmarks.streaming",
        "--n",
        "2",
        "--max-tokens",
        "48",
        "--output",
        str(tmp_path),
    ]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "streaming.json").read_text())
    assert result["config"]["n"] == 2 and result["config"]["max_tokens"] == 48
    before, after = result["results"]["cumulative"], result["results"]["incremental"]
    for mode, figures in result["results"].items():
        assert figures["server_reports_incremental"] == (mode == "incremental")
        assert figures["path_tokens"] == [48, 48]  # EOS ignored: the same decode work in both modes
        assert figures["chunks"] >= 2 * 48 // STREAM_INTERVAL
        assert figures["tokens_per_s"] == figures["tokens"] / figures["wall_s"] > 0
        assert figures["read_cpu_s"] == figures["split_cpu_s"] + figures["parse_cpu_s"] > 0
    assert after["json_bytes"] < before["json_bytes"]
    assert result["ratios"]["json_bytes"] == before["json_bytes"] / after["json_bytes"] > 1
    assert "whole chunks against deltas" in done.stdout
