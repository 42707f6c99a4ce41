"""Adaptive exploration on the real CPU engine: aborting one path, stop policies inside fork/join, the
confidence filter, and replay agreeing with what a live run stopped."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks import adaptive, policies
from engine.endpoint import SEED_VAR, PathEndpoint, request_ids
from engine.launch import post
from programs.a2r import main as a2r_main
from programs.core.confidence import OnlineStop
from programs.core.config import RunConfig, SamplingConfig
from programs.core.prompts import chat_prompt
from programs.core.records import ProblemRecord
from programs.core.stopping import StopPolicy, replay
from programs.datasets import load_problems
from programs.engine_handle import EngineHandle
from programs.explorer import Watch, run_explorer
from programs.pipeline import Pipeline

BUDGET = 2000  # far above any path the offline explorer writes, so a path below it was stopped, not cut
SNAPSHOT_S = 2.0  # ample for the engine's next load snapshot (see EngineLoad in conftest.py)


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


def test_a2r_with_a_stop_and_the_confidence_filter_end_to_end(cpu_engine, tmp_path):
    run = tmp_path / "run"
    argv = ["--n", "4", "--dataset", "chain:3:4", "--explorer-url", cpu_engine.explorer.base_url,
            "--output", str(run), "--stop", "first:3", "--keep-confident", "0.5",
            "--explorer-max-tokens", "512", "--synthesizer-max-tokens", "160"]  # fmt: skip
    assert a2r_main(argv) == 0
    for line in (run / "records.jsonl").read_text().splitlines():
        record = ProblemRecord.from_json(json.loads(line))
        assert record.config["stop"] == "first:3" and record.config["keep_confident"] == 0.5
        assert [p.stopped_by for p in record.paths].count("first:3") == 1
        assert all(p.confidence is not None for p in record.paths)
        kept = [i for i, p in enumerate(record.paths) if p.kept]
        assert len(kept) == 2  # 3 finished, the more confident half (rounded up) of them kept
        finished = [p for p in record.paths if p.stopped_by is None]
        dropped = [p.confidence for p in finished if not p.kept]
        assert len(dropped) == 1 and dropped[0] <= min(p.confidence for p in finished if p.kept)
        assert sorted(record.synthesizer.reference_order) == kept
        assert record.synthesizer.prompt.count("<reference") == 2


def test_unanimous_paths_skip_synthesis_only_when_asked(cpu_engine):
    explorer = EngineHandle.attach(cpu_engine.explorer)
    sampling = SamplingConfig(512)
    problem = load_problems("chain:1:1")[0]
    config = RunConfig(4, sampling, sampling, "tiny", "tiny", skip_synthesis_if_unanimous=True)
    paths = Pipeline(config, explorer, explorer).explore(problem)
    same = [replace(p, answer="7") for p in paths]
    skipped = Pipeline(config, explorer, explorer).synthesize(problem, same)
    assert skipped.finish_reason == "unanimous" and skipped.answer == "7" and skipped.completion_tokens == 0
    default = RunConfig(4, sampling, sampling, "tiny", "tiny")
    assert Pipeline(default, explorer, explorer).synthesize(problem, same).completion_tokens > 0


def test_policies_benchmark_counts_stopped_paths_and_writes_its_figures(cpu_engine, tmp_path):
    out = tmp_path / "policies"
    argv = ["--n", "4", "--dataset", "chain", "--limit", "3", "--policies", "full", "first:2",
            "--explorer-url", cpu_engine.explorer.base_url, "--output", str(out),
            "--explorer-max-tokens", "512", "--synthesizer-max-tokens", "160"]  # fmt: skip
    assert policies.main(argv) == 0
    rows = json.loads((out / "policies.json").read_text())["policies"]
    records = [json.loads(line) for line in (out / "first-2.jsonl").read_text().splitlines()]
    spent = sum(p["completion_tokens"] for r in records for p in r["paths"])
    assert rows["first:2"]["explorer_tokens_per_problem"] == pytest.approx(spent / 3)
    assert rows["first:2"]["paths_kept_per_problem"] == 2 and rows["full"]["paths_kept_per_problem"] == 4
    assert rows["first:2"]["replay"]["saved_percent"] > 0  # replayed on the full run's own paths
    assert (out / policies.PNG).stat().st_size > 0
    assert policies.main(argv) == 0  # all done: a rerun resumes everything and keeps the measured rates
    again = json.loads((out / "policies.json").read_text())["policies"]
    assert again["first:2"]["explorer_tokens_per_s"] == rows["first:2"]["explorer_tokens_per_s"] > 0


def write_records(path: Path, problems: list[tuple[str, list[tuple[str | None, int, float | None]]]]) -> Path:
    """A records file of full-length runs: per problem its gold and (answer, tokens, confidence) per path."""
    lines = []
    for i, (gold, paths) in enumerate(problems):
        rows = [
            {"answer": a, "completion_tokens": t, "confidence": c, "answer_part": "", "text": ""}
            for a, t, c in paths
        ]
        lines.append({"id": f"p{i}", "problem": "?", "gold": gold, "paths": rows, "synthesizer": None})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def replay_json(capsys, *argv: str) -> dict:
    assert adaptive.main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_replay_reports_savings_and_the_vote_before_and_after(tmp_path, capsys):
    records = write_records(
        tmp_path / "r.jsonl",
        [
            ("3", [("3", 10, 1.0), ("3", 20, 1.0), ("4", 30, 1.0), ("3", 40, 1.0)]),  # first:2 stops at 20
            ("5", [("5", 50, 2.0), ("6", 10, 1.0), ("6", 20, 3.0), ("5", 60, 2.0)]),  # the vote flips to 6
        ],
    )
    result = replay_json(capsys, str(records), "--stop", "first:2")
    assert result["explorer_tokens_full"] == 100 + 140
    assert result["explorer_tokens_kept"] == (10 + 20 + 20 + 20) + (20 + 10 + 20 + 20)
    assert result["saved_percent"] == pytest.approx(100 * (1 - 140 / 240))
    assert result["cons_before"] == 100.0 and result["cons_after"] == 50.0 and result["answers_changed"] == 1
    confident = replay_json(capsys, str(records), "--keep-confident", "0.5")
    assert confident["explorer_tokens_kept"] == confident["explorer_tokens_full"]
    # Problem 2 keeps 6 (confidence 3.0) and the earlier 5 (2.0): a tie, won by 5, seen first.
    assert confident["cons_after"] == 100.0 and confident["answers_changed"] == 0


def test_replay_reads_generic_samples_with_a_tokenizer(tmp_path, capsys, tiny_model):
    samples = tmp_path / "s.jsonl"
    rows = [{"gold": "2", "out": ["\\boxed{2}", "so " * 30 + "\\boxed{3}", "\\boxed{2} " * 5]}]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = [str(samples), "--gold-key", "gold", "--responses-key", "out", "--tokenizer", str(tiny_model)]
    result = replay_json(capsys, *argv, "--stop", "agree:2")
    assert result["saved_percent"] > 0 and result["cons_after"] == 100.0


def test_replay_refuses_what_its_input_lacks(tmp_path, capsys):
    records = write_records(tmp_path / "r.jsonl", [("3", [("3", 10, None), ("4", 20, None)])])
    assert adaptive.main([str(records), "--keep-confident", "0.5"]) == 2
    assert "log-probabilities" in capsys.readouterr().err
    stopped = json.loads(records.read_text())
    stopped["paths"][1].update(kept=False, stopped_by="first:1")
    records.write_text(json.dumps(stopped) + "\n")
    assert adaptive.main([str(records), "--stop", "first:1"]) == 2
    assert "full-length" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        adaptive.main([str(records), "--stop", "vote:3"])


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


def test_online_stop_refuses_what_cannot_stop_a_path():
    with pytest.raises(ValueError, match="N > 2"):
        OnlineStop.for_run(0.9, 2, 512)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        OnlineStop.for_run(1.0, 8, 512)


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
