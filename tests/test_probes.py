"""Probes, waves and the forced answer, live: the explorer's bookkeeping on literal replies, then the real CPU
engine serving chunked paths from its radix cache, stopping them, forcing answers, and a live run deciding
as replay decides in the observed order."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from sglang.srt.sampling.sampling_params import SamplingParams

from benchmarks import probes
from engine.endpoint import SEED_VAR, PathEndpoint, TokenTrail, request_ids
from programs.chunked import CLOSE_THINKING, PROBE_TOKENS, Chunking, Generated, uncached
from programs.core.config import BOXED_PROBE, RunConfig, SamplingConfig
from programs.core.prompts import chat_prompt
from programs.core.records import PathRecord, ProblemRecord, usage
from programs.core.stopping import Seen, StopPolicy, current_answers
from programs.datasets import load_problems
from programs.engine_handle import EngineHandle
from programs.explorer import Watch, run_explorer
from programs.pipeline import Pipeline
from programs.profile import OFFLINE

REPO = Path(__file__).resolve().parent.parent

# A chunk's or a probe's meta_info as SGLang reports it.


def meta(prompt: int, cached: int, completion: int, finish: str = "length") -> dict:
    return {
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "completion_tokens": completion,
        "finish_reason": {"type": finish},
    }


def test_a_chunked_path_counts_every_token_the_engine_computed_beyond_the_path_itself():
    done = Generated()
    done.add("<think>a", meta(30, 29, 16))  # the path's prompt, forked: all but its last token cached
    assert done.add_probe("7", meta(50, 46, 3), lambda tokens, answer: True) is None
    done.add(" b", meta(46, 45, 16))  # the continuation: one token of its prompt recomputed
    done.add_probe("8", meta(66, 62, 10), lambda tokens, answer: False)  # came back after a stop
    done.add("</think> \\boxed{8}", meta(62, 62, 5, "stop"))
    assert done.probes == [(16, "7")]  # the uncounted probe is not listed, but it was paid for
    assert done.probe_tokens == (4 + 3) + 1 + (4 + 10) + 0
    assert done.completion_tokens == 16 + 16 + 5
    assert done.meta() == meta(30, 29, 37, "stop")
    assert done.text == "<think>a b</think> \\boxed{8}" and not done.thinking


@pytest.mark.parametrize(
    ("form", "decoded", "answer"),
    [
        (BOXED_PROBE, "12}", "12"),
        (BOXED_PROBE, "\\frac{1}{2}}", "\\frac{1}{2}"),  # the brace that closes a fraction does not end it
        (BOXED_PROBE, "\\sqrt{2^{3}}}.", "\\sqrt{2^{3}}"),
        (BOXED_PROBE, "12", None),  # its budget spent before the box closed
        (OFFLINE.probe, "-37,", "-37"),
        (OFFLINE.probe, "\n\nThe result is 7,", "7"),  # it restated the opening first
        (OFFLINE.probe, "oops \\boxed{5}.", "5"),  # another form: the box it wrote, if any
        (OFFLINE.probe, " + 4 = 10", None),  # it goes on thinking
    ],
)
def test_a_probe_reads_the_answer_its_form_states(form, decoded, answer):
    assert form.read(decoded) == answer


def test_the_engine_stops_a_probe_where_its_form_says_the_answer_is_complete():
    # SGLang matches a stop_regex against the tail of the output it has decoded; the forms' patterns are bounded,
    # so the tail is the whole probe, and their anchor holds from its first token.
    for form in (BOXED_PROBE, OFFLINE.probe):
        params = SamplingParams(max_new_tokens=PROBE_TOKENS, stop_regex=form.answer)
        params.normalize(tokenizer=object())  # a server with a tokenizer; only stop strings would use it
        assert PROBE_TOKENS < params.stop_regex_max_len < 2**30
    stops = [re.search(BOXED_PROBE.answer, "\\frac{1}{2}" + tail) for tail in ("", "}")]
    assert stops[0] is None and stops[1] is not None
    assert [bool(re.search(OFFLINE.probe.answer, text)) for text in ("-3", "-37,", " +", "\n\nThe")] == [
        False,
        True,
        True,
        False,  # it may be restating the opening
    ]


def test_a_stopped_path_votes_its_last_probe_that_read_an_answer():
    base = PathRecord.from_engine("<think>x", meta(9, 8, 40, "abort"), 0)
    stopped = PathRecord(
        **{**base.__dict__, "kept": False, "stopped_by": "settled", "probes": [(16, "5"), (32, None)]}
    )
    assert stopped.vote == "5"
    filtered = PathRecord(**{**stopped.__dict__, "stopped_by": None})  # dropped by the confidence filter
    assert filtered.vote is None
    unprobed = PathRecord(**{**stopped.__dict__, "probes": []})
    assert unprobed.vote is None


def test_probe_fields_round_trip_and_old_records_read_as_unprobed():
    path = PathRecord.from_engine("<think>x</think> \\boxed{3}", meta(9, 8, 12, "stop"), 1)
    probed = PathRecord(
        **{
            **path.__dict__,
            "probe_tokens": 14,
            "probes": [(8, "3")],
            "probed_s": [0.5],
            "forced_answer": True,
            "wave": 1,
        }
    )
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


def test_paths_are_probed_as_the_policy_says_with_the_profiles_prefix():
    sampling = SamplingConfig(512)

    def config(stop: str | None, **kwargs) -> RunConfig:
        return RunConfig(8, sampling, sampling, "tiny", "tiny", stop=stop, probe=OFFLINE.probe, **kwargs)

    assert config("posterior:0.25,probe=100").probe_every == 100
    assert config("settled").probe_every is None and config(None).probe_every is None
    assert "probe" not in config("settled").to_dict()  # unprobed runs keep their old configuration
    assert config("agree:3,probe=16").to_dict()["probe"]["prefix"] == "The result is "
    with pytest.raises(ValueError, match="--keep-confident"):
        config("agree:3,probe=16", keep_confident=0.5)
    with pytest.raises(ValueError, match="--force-answer"):
        config(None, force_answer=0)
    assert not Chunking().on and Chunking(force_answer=8).on and Chunking(probe_every=8).on


# On the real CPU engine.

BUDGET = 512  # far above any path the offline explorer writes, so a path below it ended or was stopped


def probing(every: int) -> Chunking:
    """Probes as the offline profile makes them, every `every` tokens."""
    return Chunking(every, form=OFFLINE.probe)


PROBE = probing(1).probe  # what a probe appends to a path


class Recording(PathEndpoint):
    """The engine's own endpoint, noting in one log, in order, every request it actually sends (the path's seed,
    whether it is a probe), every abort, and every reply with its prompt text and `meta_info`."""

    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        super().__init__(base_url, api_key=api_key)
        self.log: list[tuple[str, int | str, bool]] = []  # ("send", seed, probe) or ("abort", rid, False)
        self.replies: list[tuple[str, dict]] = []
        self.lock = threading.Lock()

    def _add_images(self, s, data) -> None:
        super()._add_images(s, data)
        if data["sampling_params"].get("max_new_tokens") != 0:  # not fork's prefix commit
            with self.lock:
                self.log.append(("send", s.variables[SEED_VAR], data["text"].endswith(PROBE)))

    def generate(self, s, sampling_params):
        text, meta = super().generate(s, sampling_params)
        with self.lock:
            self.replies.append((s.text_, meta))
        return text, meta

    def abort(self, rid: str) -> None:
        with self.lock:
            self.log.append(("abort", rid, False))
        super().abort(rid)


def test_probes_and_continuations_are_served_from_the_radix_cache(cpu_engine):
    handle = EngineHandle.attach(cpu_engine.explorer)
    backend = Recording(handle.url, api_key=handle.key)
    prompt = chat_prompt(handle.tokenizer, "What is (9 - 7 + 4) * 5 - 4 - 3 + 8 - 2?")
    paths = run_explorer(backend, prompt, SamplingConfig(BUDGET), list(range(4)), chunking=probing(16))
    probe_suffix = len(handle.tokenizer.encode(PROBE, add_special_tokens=False))
    probes = [meta for text, meta in backend.replies if text.endswith(PROBE)]
    chunks = [meta for text, meta in backend.replies if text != prompt and not text.endswith(PROBE)]
    assert len(probes) == sum(len(p.probes) for p in paths) >= 4 and chunks
    # A chunk's decoded tokens are in the tree once it has ended: what follows it reads them from there,
    # and computes only the probe's own suffix, or nothing (a token at the seam at most).
    for meta in chunks:
        assert meta["cached_tokens"] >= meta["prompt_tokens"] - SEAM, meta
    for meta in probes:
        assert meta["cached_tokens"] >= meta["prompt_tokens"] - probe_suffix - SEAM, meta
    # A probe stops once it has stated its answer (`-37,`: 3 tokens, 10 if it restates `The result is ` first) or
    # shown it states none (mid-thought the offline explorer goes on with its arithmetic): it decodes neither the
    # answer part after it nor more thought.
    ended = [m for m in probes if m["finish_reason"].get("matched") == OFFLINE.probe.answer]
    others = [(m["finish_reason"], m["completion_tokens"]) for m in probes if m not in ended]
    assert len(ended) >= 0.8 * len(probes) and all(m["completion_tokens"] <= 10 for m in ended), others
    spent = sum(uncached(m) for m in chunks) + sum(uncached(m) + m["completion_tokens"] for m in probes)
    assert sum(p.probe_tokens for p in paths) == spent
    assert all(p.probes and p.probes[0][0] == 16 for p in paths if p.completion_tokens > 16)


def test_a_path_cut_without_asking_continues_from_the_cache_and_sends_no_probe(cpu_engine):
    handle = EngineHandle.attach(cpu_engine.explorer)
    backend = Recording(handle.url, api_key=handle.key)
    prompt = chat_prompt(handle.tokenizer, "What is (9 - 7 + 4) * 5 - 4 - 3 + 8 - 2?")
    sampling = SamplingConfig(64, ignore_eos=True)
    paths = run_explorer(backend, prompt, sampling, list(range(2)), chunking=replace(probing(16), ask=False))
    assert not any(probe for _, _, probe in backend.log) and not any(p.probes for p in paths)
    chunks = [meta for text, meta in backend.replies if text != prompt]
    assert len(chunks) == 2 * (64 // 16 - 1)  # every path cut at 16, 32 and 48 tokens, and continued
    assert all(meta["cached_tokens"] >= meta["prompt_tokens"] - SEAM for meta in chunks)
    assert all(p.completion_tokens == 64 and 0 < p.probe_tokens <= 3 * SEAM for p in paths)


def test_a_path_whose_text_does_not_tokenize_back_still_continues_from_the_cache(cpu_engine):
    # At temperature 2 the explorer writes token runs that its tokenizer merges differently when it reads the
    # decoded text again: sent as text, a continuation would miss the cache from the first such merge on.
    handle = EngineHandle.attach(cpu_engine.explorer)
    backend = Recording(handle.url, api_key=handle.key)
    prompt = chat_prompt(handle.tokenizer, "What is (9 - 7 + 4) * 5 - 4 - 3 + 8 - 2?")
    wild = SamplingConfig(96, temperature=2.0, top_p=1.0, top_k=-1, ignore_eos=True)
    paths = run_explorer(backend, prompt, wild, list(range(4)), chunking=probing(16))
    retokenized = [handle.tokenizer.encode(p.text, add_special_tokens=False) for p in paths]
    assert any(len(ids) != p.completion_tokens for ids, p in zip(retokenized, paths, strict=True))
    chunks = [meta for text, meta in backend.replies if text != prompt and not text.endswith(PROBE)]
    assert len(chunks) >= 4 * (96 // 16 - 1)
    for meta in chunks:
        assert meta["cached_tokens"] >= meta["prompt_tokens"] - 1, meta  # the last token's logits, at most


def test_a_path_cut_at_its_budget_answers_only_when_forced(cpu_engine):
    handle = EngineHandle.attach(cpu_engine.explorer)
    prompt = chat_prompt(handle.tokenizer, "What is (9 - 7 + 4) * 5 - 4 - 3 + 8 - 2?")
    budget, answer_budget = 24, 40  # the offline explorer thinks longer than 24 tokens on this chain
    cut = run_explorer(handle.backend, prompt, SamplingConfig(budget), list(range(4)))
    forced = run_explorer(
        handle.backend,
        prompt,
        SamplingConfig(budget),
        list(range(4)),
        chunking=Chunking(force_answer=answer_budget),
    )
    assert all(p.finish_reason == "length" and p.answer is None and p.answer_part_fallback for p in cut)
    for path in forced:
        assert path.forced_answer and CLOSE_THINKING in path.text and not path.answer_part_fallback
        assert budget < path.completion_tokens <= budget + answer_budget + SEAM + 4  # + the tag's tokens
    assert sum(p.answer is not None for p in forced) >= 3  # the tiny model answers once its thought is closed
    assert not any(p.forced_answer for p in cut)


def test_a_stopped_chunked_path_sends_no_further_chunk_or_probe(cpu_engine, explorer_load):
    handle = EngineHandle.attach(cpu_engine.explorer)
    backend = Recording(handle.url, api_key=handle.key)
    prompt = chat_prompt(handle.tokenizer, "What is (3 + 4) * 2 - 5?")
    policy = StopPolicy.parse("agree:2,probe=8")
    paths = run_explorer(
        backend, prompt, SamplingConfig(BUDGET), list(range(6)), policy=policy, chunking=probing(8)
    )
    assert explorer_load.settled(SNAPSHOT_S) == 0
    stopped = [i for i, p in enumerate(paths) if p.stopped_by]
    assert stopped  # two of six paths agree on a probe long before the rest end
    for i in stopped:
        first_abort = next(
            k
            for k, (kind, rid, _) in enumerate(backend.log)
            if kind == "abort" and str(rid).endswith(f"-p{i}.")
        )
        later = [entry for entry in backend.log[first_abort:] if entry[0] == "send" and entry[1] == i]
        assert not later, (i, backend.log)
        assert len(paths[i].probes) == len(paths[i].probed_s)
        assert all(t <= paths[i].stopped_s for t in paths[i].probed_s)  # none counted after the stop


def observed(record: ProblemRecord) -> list[Seen]:
    """What a live run's policy read, in the order it read it: each counted probe when its answer came back,
    and the end of each path that was not stopped when it replied."""
    events = []
    for i, path in enumerate(record.paths):
        events += [
            (t, Seen(i, tokens, answer, False))
            for t, (tokens, answer) in zip(path.probed_s, path.probes, strict=True)
        ]
        if path.kept:
            events.append((path.finished_s, Seen(i, path.completion_tokens, path.answer, True)))
    return [seen for _, seen in sorted(events, key=lambda event: event[0])]


@pytest.mark.parametrize("spec", ["settled", "agree:3,probe=16", "posterior:0.25,wave=3,probe=24"])
def test_live_probes_and_waves_decide_as_replay_does_in_the_observed_order(cpu_engine, spec):
    explorer = EngineHandle.attach(cpu_engine.explorer)
    sampling = SamplingConfig(BUDGET)
    config = RunConfig(
        8, sampling, sampling, "tiny", "tiny", synthesize=False, stop=spec, probe=OFFLINE.probe
    )
    records: list[ProblemRecord] = []
    Pipeline(config, explorer, None).run(load_problems("synthetic:11:6"), records.append)
    stops = 0
    for record in records:
        seen, policy = observed(record), StopPolicy.parse(spec)
        stopped = [p.stopped_by is not None for p in record.paths]
        # Replay asks the policy after each observation but the last (nothing is left to stop then).
        decisions = [policy.settled(seen[:k], 8) for k in range(1, len(seen))]
        assert not any(decisions), (spec, record.paths)
        if any(stopped):  # it stopped on its last observation
            assert policy.settled(seen, 8), record.paths
        current = current_answers(seen)
        assert [p.vote for p in record.paths] == [current.get(i) for i in range(8)]
        assert [p.kept for p in record.paths] == [
            any(s.final and s.path == i for s in seen) for i in range(8)
        ]
        if policy.wave:
            launched = {s.path // policy.wave for s in seen}
            waves = [i // policy.wave if i // policy.wave in launched else None for i in range(8)]
            assert [p.wave for p in record.paths] == waves
            unsent = [p for p in record.paths if p.wave is None]
            assert all(p.completion_tokens == p.prompt_tokens == 0 and p.stopped_by for p in unsent)
        stops += any(stopped)
    assert stops > 0  # the offline explorer's paths agree often enough


# docs/adaptive.md, "Probes and waves, live": the same problems with every path run to its end, then settled.
# The short set, where the pair's paths mostly agree and `settled` saves about half: on `chain` they disagree on
# nearly every problem, both waves run, and two runs of 6 problems differ only by sampling noise.
FULL_RUN = "python -m programs.a2r --n 8 --limit 6 --dataset synthetic --output runs/full"
SETTLED_RUN = (
    "python -m programs.a2r --n 8 --limit 6 --dataset synthetic --stop settled --output runs/settled"
)


@pytest.mark.engine
def test_settled_spends_fewer_explorer_tokens_than_a_full_run_probes_included(offline_pair, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # typed in a folder of the user's, the project importable
    spent = {}
    for command in (FULL_RUN, SETTLED_RUN):
        argv = [sys.executable, *shlex.split(command)[1:]]  # `python`: the project's interpreter
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "tokens per problem, probes included" in done.stdout
        run = tmp_path / command.split()[-1]
        records = [ProblemRecord.from_json(json.loads(line)) for line in (run / "records.jsonl").open()]
        used = usage(records)
        spent[command] = used.explorer_completion_tokens + used.explorer_probe_tokens
        summary = json.loads((run / "summary.json").read_text())
        assert summary["explorer"]["tokens_per_problem"] == pytest.approx(spent[command] / 6)
    assert spent[SETTLED_RUN] < spent[FULL_RUN]
    settled = [json.loads(line) for line in (tmp_path / "runs/settled/records.jsonl").open()]
    assert all(r["config"]["stop"] == "settled" for r in settled)
    never_sent = [p for r in settled for p in r["paths"] if "wave" not in p and p["completion_tokens"] == 0]
    assert never_sent  # a wave the vote no longer needed was not launched


SEAM = 2  # tokens a continuation may recompute where the text it resends is tokenized anew
SNAPSHOT_S = 2.0  # ample for the engine's next load snapshot (see EngineLoad in conftest.py)


def test_the_probe_benchmark_refuses_an_interval_that_makes_no_probe(capsys):
    with pytest.raises(SystemExit):
        probes.parse_args(["--path-tokens", "512", "--probe-every", "512"])
    assert "--probe-every 512 makes no probe in paths of 512 tokens" in capsys.readouterr().err


def timed(trail: TokenTrail, kind: str, received: float, first_token: float, prefill: float, end: float):
    """A chunked path's request as the benchmark records it, with the engine's timestamps (seconds)."""
    timestamps = {"request_received_ts": received, "request_finished_ts": end}
    timestamps |= {
        "forward_entry_time": received + first_token - prefill,
        "prefill_finished_time": received + first_token,
    }
    return probes.Reply(
        trail, kind, {**timestamps, "first_token_latency": first_token, "decode_throughput": 100.0}
    )


def test_the_probe_benchmark_times_each_cut_from_the_engines_timestamps():
    a, b = TokenTrail(), TokenTrail()
    replies = [  # path a: two cuts; path b: one; a probe of a's, which is no cut
        timed(a, "first", 0.0, 0.010, 0.005, 5.0),
        timed(b, "first", 0.0, 0.010, 0.005, 5.0),
        timed(a, "probe", 5.03, 0.100, 0.090, 5.2),
        timed(b, "continuation", 5.04, 0.080, 0.060, 10.0),
        timed(a, "continuation", 5.02, 0.100, 0.070, 10.0),
        timed(a, "continuation", 10.05, 0.090, 0.065, 10.5),
    ]
    cut = probes.cuts(replies)
    assert cut["cuts"] == 3
    assert cut["wait_ms"] == pytest.approx(40)  # 20, 40 and 50 ms from a chunk's end to the next's arrival
    assert cut["first_token_ms"] == pytest.approx(90) and cut["prefill_ms"] == pytest.approx(65)
    assert cut["decode_step_ms"] == pytest.approx(10)
    untimed = [probes.Reply(r.trail, r.kind, {"completion_tokens": 1}) for r in replies]
    assert probes.cuts(untimed) is None  # an engine started without --enable-metrics


@pytest.mark.engine
def test_the_probe_benchmark_sets_cuts_and_probes_against_the_paths_alone(offline_pair, tmp_path):
    output = tmp_path / "probes"
    argv = ["--load-format", "dummy", "--n", "2", "--path-tokens", "64", "--probe-every", "24"]
    argv += ["--problems", "1", "--rounds", "3", "--output", str(output)]
    assert probes.main(argv) == 0
    result = json.loads((output / "probes.json").read_text())
    assert [sorted(r) for r in result["rounds"]] == [sorted(probes.MODES)] * 3
    for name, (mode, against, _) in probes.RATIOS.items():
        per_round = [r[mode]["path_tokens_per_s"] / r[against]["path_tokens_per_s"] for r in result["rounds"]]
        assert result["ratios"][name]["rounds"] == pytest.approx(per_round)
    first = [r["unprobed"]["wall_s"] for r in result["rounds"]]
    assert len(set(first)) == 3  # three timed runs of each mode, not one reported thrice
    chunked = [r["chunked"] for r in result["rounds"]]
    assert all(f["probes"] == 0 and f["path_tokens"] == 2 * 64 for f in chunked)
    assert sum(r["probed"]["probes"] for r in result["rounds"]) > 0  # random weights keep thinking
    for mode in ("chunked", "probed"):  # the engine's timestamps reached the benchmark: 2 cuts per path
        cut = result["cuts"][mode]
        assert (
            cut["cuts"] == 3 * 2 * 2 and cut["wait_ms"] > 0 and cut["first_token_ms"] >= cut["prefill_ms"] > 0
        )
    assert result["cuts"].get("unprobed") is None
    assert "--enable-metrics" in result["engine"]["extra_args"]
