"""Probes, waves and the forced answer, live: the explorer's bookkeeping on literal replies, then the real CPU
engine serving chunked paths from its radix cache, stopping them, forcing answers, and a live run deciding
as replay decides in the observed order."""

from __future__ import annotations

import pytest

from engine.endpoint import request_ids
from programs.chunked import Chunking, Generated
from programs.core.config import RunConfig, SamplingConfig
from programs.core.records import PathRecord
from programs.core.stopping import StopPolicy
from programs.explorer import Watch

# A chunk's or a probe's meta_info as SGLang reports it.


def meta(prompt: int, cached: int, completion: int, finish: str = "length") -> dict:
    return {"prompt_tokens": prompt, "cached_tokens": cached, "completion_tokens": completion,
            "finish_reason": {"type": finish}}  # fmt: skip


def test_a_chunked_path_counts_every_token_the_engine_computed_beyond_the_path_itself():
    done = Generated()
    done.add("<think>a", meta(30, 29, 16))  # the path's prompt, forked: all but its last token cached
    assert done.add_probe("7}.", meta(50, 46, 3), lambda tokens, answer: True) is None
    done.add(" b", meta(46, 45, 16))  # the continuation: one token of its prompt recomputed
    done.add_probe("8", meta(66, 62, 10), lambda tokens, answer: False)  # came back after a stop
    done.add("</think> \\boxed{8}", meta(62, 62, 5, "stop"))
    assert done.probes == [(16, "7")]  # the uncounted probe is not listed, but it was paid for
    assert done.probe_tokens == (4 + 3) + 1 + (4 + 10) + 0
    assert done.completion_tokens == 16 + 16 + 5
    assert done.meta() == meta(30, 29, 37, "stop")
    assert done.text == "<think>a b</think> \\boxed{8}" and not done.thinking


def test_a_stopped_path_votes_its_last_probe_that_read_an_answer():
    base = PathRecord.from_engine("<think>x", meta(9, 8, 40, "abort"), 0)
    stopped = PathRecord(**{**base.__dict__, "kept": False, "stopped_by": "settled",
                            "probes": [(16, "5"), (32, None)]})  # fmt: skip
    assert stopped.vote == "5"
    filtered = PathRecord(**{**stopped.__dict__, "stopped_by": None})  # dropped by the confidence filter
    assert filtered.vote is None
    unprobed = PathRecord(**{**stopped.__dict__, "probes": []})
    assert unprobed.vote is None


def test_probe_fields_round_trip_and_old_records_read_as_unprobed():
    path = PathRecord.from_engine("<think>x</think> \\boxed{3}", meta(9, 8, 12, "stop"), 1)
    probed = PathRecord(**{**path.__dict__, "probe_tokens": 14, "probes": [(8, "3")], "probed_s": [0.5],
                           "forced_answer": True, "wave": 1})  # fmt: skip
    data = probed.to_json()
    assert data["probes"] == [(8, "3")] and data["wave"] == 1 and data["forced_answer"] is True
    assert set(path.to_json()).isdisjoint({"probe_tokens", "probes", "probed_s", "forced_answer", "wave"})
    old = PathRecord.from_json(path.to_json())
    assert (old.probe_tokens, old.probes, old.probed_s, old.forced_answer, old.wave) == (
        0,
        [],
        [],
        False,
        None,
    )


def reply(answer: str | None, tokens: int = 10) -> tuple[str, dict]:
    text = f"<think>x</think> \\boxed{{{answer}}}" if answer else "<think>x</think>"
    return text, meta(9, 8, tokens, "stop")


def test_waves_launch_only_while_unsettled_and_unlaunched_paths_are_never_sent():
    aborted: list[str] = []
    watch = Watch(request_ids(8), StopPolicy.parse("agree:3,wave=3"), aborted.append)
    waves = watch.launches()
    assert next(waves) == [0, 1, 2]
    for i in (0, 1, 2):
        watch.on_reply(i)(*reply("4"))
    assert watch.stopped.keys() == {3, 4, 5, 6, 7} and not aborted  # none of them was running
    assert next(waves, None) is None
    path = watch.record(5, PathRecord.from_engine("", meta(0, 0, 0, "abort"), 5))
    assert path.stopped_by == "agree:3,wave=3" and not path.kept and path.wave is None


def test_a_second_wave_starts_when_the_first_has_ended_unsettled():
    watch = Watch(request_ids(6), StopPolicy.parse("agree:3,wave=2"), lambda rid: None)
    waves = watch.launches()
    assert next(waves) == [0, 1]
    watch.on_reply(0)(*reply("4"))
    watch.on_reply(1)(*reply("5"))
    assert next(waves) == [2, 3]
    record = watch.record(3, PathRecord.from_engine(*reply("4"), 3))
    assert record.wave == 1


def test_a_probe_settles_the_vote_and_stops_the_running_paths():
    aborted: list[str] = []
    watch = Watch(request_ids(4), StopPolicy.parse("agree:2,probe=16"), aborted.append)
    list(watch.launches())
    assert watch.on_probe(0)(16, "6")
    assert watch.on_probe(1)(16, "6")  # two current answers agree
    assert aborted == watch.rids[:4] and set(watch.stopped) == {0, 1, 2, 3}
    assert not watch.on_probe(2)(16, "6")  # came back after the stop: not counted
    assert [len(watch.probed_s[i]) for i in range(4)] == [1, 1, 0, 0]


def test_a_policy_that_probes_sets_the_live_interval_from_the_profile_unless_it_names_one():
    sampling = SamplingConfig(512)

    def config(stop: str | None, **kwargs) -> RunConfig:
        return RunConfig(8, sampling, sampling, "tiny", "tiny", stop=stop, probe_every=48, **kwargs)

    assert config("settled").probe_interval == 48
    assert config("settled:probe=100").probe_interval == 100
    assert config("majority").probe_interval is None
    assert "probe_every" not in config("majority").to_dict()  # unprobed runs keep their old configuration
    assert config("settled").to_dict()["probe_every"] == 48
    with pytest.raises(ValueError, match="--keep-confident"):
        config("settled", keep_confident=0.5)
    with pytest.raises(ValueError, match="--force-answer"):
        config(None, force_answer=0)
    assert not Chunking().on and Chunking(force_answer=8).on
