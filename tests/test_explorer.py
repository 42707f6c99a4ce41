"""The explorer's fork/join on the real CPU engine: forks share their prompt's prefill, stop policies and the
online confidence stop end paths inside fork, and live stops are the stops replay makes."""

from __future__ import annotations

import json
import threading

import pytest

from engine.endpoint import SEED_VAR, PathEndpoint, request_ids
from engine.launch import post
from programs.core.confidence import OnlineStop
from programs.core.config import RunConfig, SamplingConfig
from programs.core.prompts import chat_prompt
from programs.core.records import ProblemRecord
from programs.core.stopping import StopPolicy, replay
from programs.datasets import load_problems
from programs.engine_handle import EngineHandle
from programs.explorer import Watch, run_explorer
from programs.pipeline import Pipeline

SAMPLING = SamplingConfig(max_tokens=24)
BUDGET = 2000  # far above any path the offline explorer writes, so a path below it was stopped, not cut
SNAPSHOT_S = 2.0  # ample for the engine's next load snapshot (see EngineLoad in conftest.py)


def test_forks_share_the_prompt_prefill(cpu_handle, fresh_question):
    prompt = chat_prompt(cpu_handle.tokenizer, fresh_question())
    prompt_tokens = len(cpu_handle.tokenizer.encode(prompt, add_special_tokens=False))
    paths = run_explorer(cpu_handle.backend, prompt, SAMPLING, seeds=[1, 2, 3, 4])
    assert len(paths) == 4
    for path in paths:
        assert path.prompt_tokens == prompt_tokens
        # The engine recomputes only the last prompt token, whose logits start the path.
        assert path.cached_tokens >= prompt_tokens - 1, path
        assert 0 < path.completion_tokens <= SAMPLING.max_tokens
    assert len({p.seed for p in paths}) == 4


def test_a_stop_ends_decoding_on_the_engine_and_keeps_what_the_paths_wrote(cpu_engine, explorer_load):
    handle = EngineHandle.attach(cpu_engine.explorer)
    prompt = chat_prompt(handle.tokenizer, "What is (9 - 7 + 4) * 5 - 4 - 3?")
    backend = OnePathMayEnd(handle.url, explorer_load, others=5, api_key=handle.key)
    paths = run_explorer(
        backend, prompt, SamplingConfig(BUDGET), list(range(6)), policy=StopPolicy.parse("first:1")
    )
    assert explorer_load.settled(SNAPSHOT_S) == 0
    assert paths[0].kept and paths[0].stopped_by is None and paths[0].finish_reason == "stop"
    for path in paths[1:]:
        assert not path.kept and path.stopped_by == "first:1" and path.stopped_s >= paths[0].finished_s
        assert path.finish_reason == "abort" and 0 < path.completion_tokens < BUDGET and path.text  # kept


def test_a_path_whose_request_reaches_the_engine_after_its_abort_is_stopped_all_the_same(cpu_engine):
    endpoint = PathEndpoint(cpu_engine.explorer.base_url, api_key=cpu_engine.explorer.api_key)
    watch = Watch(request_ids(2), StopPolicy.parse("first:1"), endpoint.abort)
    assert next(watch.launches()) == [0, 1]  # one wave: both paths are out, so both are resent their aborts
    with watch.resending_aborts(every_s=0.2):
        watch.on_reply(0)("<think>x</think> \\boxed{3}", {"completion_tokens": 5})
        assert 1 in watch.stopped  # and its abort is sent, to an engine that has not seen the request yet
        body = {
            "text": "<think>\n",
            "rid": watch.rids[1],
            "sampling_params": {"max_new_tokens": BUDGET, "ignore_eos": True},
        }
        meta = json.loads(post(endpoint.base_url, "/generate", body, key=endpoint.api_key))["meta_info"]
        watch.on_reply(1)("", meta)
    assert meta["finish_reason"]["type"] == "abort" and meta["completion_tokens"] < BUDGET


class LateSender(PathEndpoint):
    """The engine's own endpoint, sending every forked path but seed 0's only once seed 0's reply is in, as
    threads starved on a loaded machine would."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        super().__init__(base_url, api_key=api_key)
        self.first_in = threading.Event()

    def generate(self, s, sampling_params):
        if s.variables[SEED_VAR] == 0:
            try:
                return super().generate(s, sampling_params)
            finally:
                self.first_in.set()
        self.first_in.wait(60)
        return super().generate(s, sampling_params)


def test_a_path_stopped_before_its_request_was_sent_is_never_sent(cpu_engine, explorer_load):
    handle = EngineHandle.attach(cpu_engine.explorer)
    prompt = chat_prompt(handle.tokenizer, "What is (9 - 7 + 4) * 5 - 4 - 3?")
    backend = LateSender(handle.url, handle.key)
    paths = run_explorer(
        backend, prompt, SamplingConfig(BUDGET), list(range(4)), policy=StopPolicy.parse("first:1")
    )
    assert paths[0].kept and paths[0].completion_tokens > 0
    for path in paths[1:]:  # the engine prefilled and decoded nothing for them
        assert path.stopped_by == "first:1" and path.finish_reason == "abort"
        assert (path.prompt_tokens, path.completion_tokens, path.text) == (0, 0, "")
    assert explorer_load.settled(SNAPSHOT_S) == 0


@pytest.mark.parametrize("policy", ["agree:2", "first:3", "majority"])
def test_live_stops_are_the_stops_replay_makes_in_the_observed_order(cpu_engine, policy):
    explorer = EngineHandle.attach(cpu_engine.explorer)
    sampling = SamplingConfig(512)
    config = RunConfig(6, sampling, sampling, "tiny", "tiny", synthesize=False, stop=policy)
    records: list[ProblemRecord] = []
    Pipeline(config, explorer, None).run(load_problems("chain:7:8"), records.append)
    stops = 0
    for record in records:
        kept = [p.kept for p in record.paths]
        order = sorted(range(6), key=lambda i: (not kept[i], record.paths[i].finished_s))
        answers = [p.answer for p in record.paths]
        lengths = [p.completion_tokens for p in record.paths]
        assert replay(config.stop_policy, answers, lengths, order).kept == kept, record.paths
        stops += not all(kept)
    if policy != "majority":  # majority may rightly never fire on paths this varied
        assert stops > 0


def top(confidences: list[float]) -> list[list[list]]:
    """`output_top_logprobs` whose token confidences are `confidences` (one top entry per token)."""
    return [[[-c, 0, None]] for c in confidences]


def test_online_stop_sets_its_threshold_from_the_first_replies_and_stops_a_path_that_drops():
    aborted: list[str] = []
    online = OnlineStop(keep=0.5, warmup=2, window=4)
    watch = Watch(request_ids(4), None, aborted.append, online)
    watch.on_progress(2)({"output_top_logprobs": top([0.1] * 8)})  # low, but no threshold yet
    assert not aborted
    watch.on_reply(0)("", {"output_top_logprobs": top([3.0] * 6)})
    watch.on_reply(1)("", {"output_top_logprobs": top([1.0] * 6)})
    assert watch.threshold == pytest.approx(2.0)  # the median of 3.0 and 1.0
    watch.on_progress(3)({"output_top_logprobs": top([0.1] * 3 + [2.5] * 4)})  # recent window above
    watch.on_progress(2)({"output_top_logprobs": top([0.1] * 8 + [2.5])})  # recent window below
    assert aborted == [watch.rids[2]]
    by, _, after = watch.stopped[2]
    assert by == "confidence" and after == 9 and 3 not in watch.stopped  # 9: the tokens it had streamed


def test_a_paths_last_chunk_does_not_stop_it():
    """The last chunk carries the finish reason: the path has ended, so a low final window cannot stop it
    (it would be recorded as stopped although nothing was cut)."""
    aborted: list[str] = []
    watch = Watch(request_ids(3), None, aborted.append, OnlineStop(keep=0.5, warmup=2, window=4))
    watch.on_reply(0)("", {"output_top_logprobs": top([3.0] * 6)})
    watch.on_reply(1)("", {"output_top_logprobs": top([1.0] * 6)})
    watch.on_progress(2)({"output_top_logprobs": top([0.1] * 8), "finish_reason": {"type": "length"}})
    assert not aborted and not watch.stopped


def test_online_confidence_stops_paths_on_the_real_engine(cpu_engine, explorer_load):
    handle = EngineHandle.attach(cpu_engine.explorer)
    online = OnlineStop.for_run(0.9, 8, 512)
    stopped = []
    for problem in load_problems("chain:5:3"):
        prompt = chat_prompt(handle.tokenizer, problem.problem)
        paths = run_explorer(handle.backend, prompt, SamplingConfig(512), list(range(8)), online=online)
        assert explorer_load.settled(SNAPSHOT_S) == 0
        finished = sorted(p.finished_s for p in paths if p.kept)
        for path in paths:
            assert path.confidence is not None
            if path.stopped_by is not None:
                assert path.stopped_by == "confidence" and not path.kept
                assert path.stopped_s >= finished[online.warmup - 1]  # never before the threshold is set
                # Decided on a full window, before the end; the engine may decode on until the abort lands.
                assert online.window <= path.stopped_after < 512
                assert path.stopped_after <= path.completion_tokens
                stopped.append(path)
    assert stopped  # the threshold keeps 90% of paths like the first: over 24 paths some fall below


class OnePathMayEnd(PathEndpoint):
    """The engine's own endpoint, with every forked path but seed 0's decoding to its budget, and seed 0's sent
    once the engine runs the others: exactly one path can end on its own, and the rest are decoding when it
    does, however loaded the machine. (An abort that reaches SGLang while it is still tokenizing a request is
    lost, see `Watch.resending_aborts`; here every abort finds its request running.)"""

    def __init__(self, base_url: str, load, others: int, api_key: str | None) -> None:
        super().__init__(base_url, api_key=api_key)
        self.load, self.others = load, others

    def _add_images(self, s, data) -> None:
        super()._add_images(s, data)
        if data["sampling_params"].get("sampling_seed", 0) != 0:
            data["sampling_params"]["ignore_eos"] = True

    def generate(self, s, sampling_params):
        if s.variables[SEED_VAR] == 0:
            self.load.at_least(self.others, within_s=60)
        return super().generate(s, sampling_params)
