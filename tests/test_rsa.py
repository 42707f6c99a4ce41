"""The two more ways to synthesize (docs/arena.md): A2R's M syntheses voted and RSA's recursive aggregation.

The pure tests hold the refusals, the record shape and the vote; the engine tests run docs/arena.md's
commands as a user types them, on the offline pair, and replay RSA from what its records say.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from programs.a2r import main
from programs.core.config import RunConfig, SamplingConfig
from programs.core.metrics import majority_vote
from programs.core.prompts import format_references
from programs.core.records import PathRecord, Problem, ProblemRecord, SynthesisRecord, usage
from programs.engine_handle import EngineHandle
from programs.pipeline import Pipeline
from programs.rsa import subsets

REPO = Path(__file__).resolve().parent.parent
URL = "http://127.0.0.1:9"  # refused before anything would ask it


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (
            "--method rsa --rounds 2 --subset 5",
            "--subset 5 is larger than the population it draws from, --n 4",
        ),
        ("--method rsa --rounds 0 --subset 2", "--rounds must be at least 1, got 0"),
        (
            "--syntheses 3 --no-synthesis",
            "--syntheses 3 samples the synthesizer; --no-synthesis never runs it",
        ),
        ("--rounds 2", "--rounds and --subset are RSA's: add --method rsa"),
        ("--subset 2", "--rounds and --subset are RSA's: add --method rsa"),
        ("--method rsa --no-synthesis --rounds 1 --subset 1", "--method rsa aggregates with the synthesizer"),
        ("--method rsa --rounds 2", "--method rsa needs --rounds T and --subset K"),
        (
            "--method rsa --rounds 1 --subset 2 --syntheses 2",
            "RSA votes its last population: drop --syntheses",
        ),
        ("--method rsa --rounds 1 --subset 2 --keep-confident 0.5", "--keep-confident stops or drops some"),
        ("--syntheses 0", "--syntheses must be at least 1, got 0"),
    ],
)
def test_a_method_that_cannot_work_is_refused_in_one_line(flags, reason, tmp_path, capsys):
    argv = ["--n", "4", "--explorer-url", URL, "--output", str(tmp_path / "run"), *shlex.split(flags)]
    assert main(argv) == 2
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("error: ") and reason in out, out
    assert not (tmp_path / "run").exists()  # refused before anything was made


SAMPLING = SamplingConfig(max_tokens=32)


def config(**method) -> RunConfig:
    return RunConfig(4, SAMPLING, SAMPLING, "e", "s", **method)


def test_the_configuration_names_a_method_only_when_it_is_not_the_papers():
    assert not {"method", "syntheses", "rounds", "subset"} & set(config().to_dict())
    assert config(syntheses=3).to_dict()["syntheses"] == 3 and "method" not in config(syntheses=3).to_dict()
    rsa = config(method="rsa", rounds=2, subset=2).to_dict()
    assert (rsa["method"], rsa["rounds"], rsa["subset"]) == ("rsa", 2, 2) and "syntheses" not in rsa


def call(answer: str | None, round: int | None = None, completion: int = 7) -> SynthesisRecord:
    meta = {"prompt_tokens": 40, "completion_tokens": completion, "cached_tokens": 39}
    text = f"<think>hm</think>so \\boxed{{{answer}}}" if answer else "<think>cut"
    return replace(SynthesisRecord.from_engine("prompt", text, meta, [0, 1], []), round=round)


def paths(*answers: str) -> list[PathRecord]:
    meta = {"prompt_tokens": 10, "completion_tokens": 5, "cached_tokens": 9}
    return [
        PathRecord.from_engine(f"<think>x</think>\\boxed{{{a}}}", meta, seed=i) for i, a in enumerate(answers)
    ]


PROBLEM = Problem("p", "What is 6 + 6?", "12")


def test_m_syntheses_answer_with_their_vote_and_keep_every_call():
    calls = [call("7", completion=3), call("12", completion=5), call("12", completion=9)]
    record = ProblemRecord.build(
        PROBLEM, config(syntheses=3).to_dict(), paths("7", "7", "3", "12"), calls, {}
    )
    assert record.synthesizer.answer == "12" and record.synthesizer.correct
    assert record.synthesizer.completion_tokens == 5  # the first call that gave the voted answer
    assert record.self_consistency["answer"] == "7"  # the paths' own vote, apart
    assert [c.correct for c in record.syntheses] == [False, True, True]
    again = ProblemRecord.from_json(json.loads(json.dumps(record.to_json())))
    assert again == record
    used = usage([again])
    assert (used.syntheses, used.synthesizer_completion_tokens, used.synthesizer_prompt_tokens) == (
        3,
        17,
        120,
    )


def test_rsa_answers_with_the_vote_of_its_last_round_alone():
    first = [call("12", 1), call("12", 1), call("12", 1), call("5", 1)]
    last = [call("5", 2), call("12", 2), call("5", 2), call(None, 2)]
    record = ProblemRecord.build(
        PROBLEM, config(method="rsa", rounds=2, subset=2).to_dict(), paths(*"1234"), first + last, {}
    )
    assert (
        record.synthesizer.answer == "5" and record.synthesizer.round == 2 and not record.synthesizer.correct
    )
    again = ProblemRecord.from_json(json.loads(json.dumps(record.to_json())))
    assert again == record and [c.round for c in again.syntheses] == [1] * 4 + [2] * 4
    assert usage([again]).syntheses == 8


def test_one_synthesis_is_recorded_as_before():
    record = ProblemRecord.build(PROBLEM, config().to_dict(), paths("12", "3"), [call("12")], {})
    assert record.syntheses == [] and "syntheses" not in record.to_json()
    assert "round" not in record.to_json()["synthesizer"] and record.synthesizer.correct


def test_rsa_subsets_are_drawn_from_the_seed_and_the_problem_alone():
    drawn = subsets(0, "p1", 4, 2, 3)
    assert len(drawn) == 3 and all(len(members) == 4 for members in drawn)
    assert all(len(set(s)) == 2 and set(s) <= set(range(4)) for members in drawn for s in members)
    assert drawn == subsets(0, "p1", 4, 2, 3)
    assert drawn != subsets(1, "p1", 4, 2, 3) and drawn != subsets(0, "p2", 4, 2, 3)


# docs/arena.md's commands, on the offline pair, typed in a folder of the user's.
VOTED = "python -m programs.a2r --n 4 --limit 2 --syntheses 3 --output runs/voted"
RSA = "python -m programs.a2r --n 4 --limit 2 --method rsa --rounds 2 --subset 2 --output runs/rsa"


def typed(command: str, folder: Path, *more: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, *shlex.split(command)[1:], *more]  # `python`: the project's interpreter
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def runs(offline_pair, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("arena")
    for command in (VOTED, RSA):
        done = typed(command, folder)
        assert done.returncode == 0, done.stdout + done.stderr
    return folder / "runs"


def records(run: Path) -> list[ProblemRecord]:
    return [ProblemRecord.from_json(json.loads(line)) for line in (run / "records.jsonl").open()]


@pytest.mark.engine
def test_m_syntheses_fork_one_prompt_and_answer_with_their_vote(runs):
    done = records(runs / "voted")
    assert len(done) == 2
    for record in done:
        assert record.config["syntheses"] == 3 and len(record.syntheses) == 3
        assert len({s.prompt for s in record.syntheses}) == 1
        # Forked from one prefill: the engine recomputes only each sample's last prompt token.
        assert all(s.cached_tokens >= s.prompt_tokens - 1 for s in record.syntheses), record.syntheses
        assert record.synthesizer.answer == majority_vote([s.answer for s in record.syntheses])
    summary = json.loads((runs / "voted" / "summary.json").read_text())
    assert summary["synthesizer"]["calls_per_problem"] == 3
    assert summary["synthesizer"]["tokens_per_problem"] * 2 == usage(done).synthesizer_completion_tokens


@pytest.mark.engine
def test_rsa_records_its_rounds_and_the_vote_of_the_last(runs):
    done = records(runs / "rsa")
    assert len(done) == 2
    for record in done:
        assert {k: record.config[k] for k in ("method", "rounds", "subset")} == {
            "method": "rsa",
            "rounds": 2,
            "subset": 2,
        }
        assert [s.round for s in record.syntheses] == [1] * 4 + [2] * 4
        assert all(len(s.reference_order) == 2 for s in record.syntheses)
        assert record.synthesizer.answer == majority_vote([s.answer for s in record.syntheses[4:]])
    summary = json.loads((runs / "rsa" / "summary.json").read_text())
    assert summary["synthesizer"]["calls_per_problem"] == 8 and "rsa@4" in summary["accuracy"]


@pytest.mark.engine
def test_rsa_replays_what_its_records_say(runs):
    """From each record's own paths (the fixed first population): the subsets the seed draws are the
    references each call read, each call read its subset of the round before's answer parts, and the
    answer is the vote of the last round."""
    for record in records(runs / "rsa"):
        drawn = subsets(record.config["seed"], record.id, 4, 2, 2)
        population = [p.answer_part for p in record.paths]
        for round, members in enumerate(drawn, start=1):
            made = [s for s in record.syntheses if s.round == round]
            assert [s.reference_order for s in made] == members
            for s in made:
                assert format_references([population[j] for j in s.reference_order]) in s.prompt
            population = [s.answer_part for s in made]
        assert record.synthesizer.answer == majority_vote([s.answer for s in made])


@pytest.mark.engine
def test_a_rerun_resumes_and_another_method_is_refused(runs):
    folder = runs.parent
    for command, run in ((VOTED, "voted"), (RSA, "rsa")):
        before = (runs / run / "records.jsonl").read_text()
        again = typed(command, folder)
        assert again.returncode == 0 and "2 problems, 2 already in" in again.stdout, (
            again.stdout + again.stderr
        )
        assert (runs / run / "records.jsonl").read_text() == before
    other = typed(RSA.replace("--rounds 2", "--rounds 1"), folder)
    assert other.returncode == 2 and "another configuration (rounds: 2 -> 1)" in other.stdout, other.stdout
    other = typed(VOTED.replace("--syntheses 3", "--syntheses 2"), folder)
    assert other.returncode == 2 and "another configuration (syntheses: 3 -> 2)" in other.stdout, other.stdout


def test_rsa_rounds_run_in_the_synthesis_stage_while_later_problems_explore(cpu_engine):
    handle = EngineHandle.attach(cpu_engine.explorer)
    short = SamplingConfig(max_tokens=24)
    rsa = RunConfig(2, short, short, "tiny", "tiny", method="rsa", rounds=2, subset=1)
    problems = [
        Problem(str(i), f"Problem {uuid.uuid4().hex}: what is {i} + 30?", str(i + 30)) for i in range(3)
    ]
    done: list[ProblemRecord] = []
    Pipeline(rsa, handle, handle).run(problems, done.append, slots=(1, 1))  # one problem in each stage
    timings = {r.id: r.timings for r in done}
    # Problem 0's rounds began before problem 2 had finished exploring: no stage waits for the dataset.
    assert timings["0"]["synthesis_started_at"] < timings["2"]["explored_at"]
    assert all([s.round for s in r.syntheses] == [1, 1, 2, 2] for r in done)


# docs/arena.md's arena command: the accuracy protocol runs both methods over its own explorations.
ARENA = (
    "python -m benchmarks.accuracy --ns 4 --limit 2 --runs 1 --methods sc a2r a2r-vote rsa --syntheses 2 "
    "--rounds 2 --subset 2 --output runs/arena"
)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.engine
def test_the_arena_runs_both_methods_on_the_protocols_explorations_and_resumes(offline_pair, tmp_path):
    done = typed(ARENA, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    run = tmp_path / "runs" / "arena"
    explorations = {e["id"]: e for e in lines(run / "explorations.jsonl")}
    rsa, vote = lines(run / "rsa.jsonl"), lines(run / "a2r-vote.jsonl")
    assert len(explorations) == len(rsa) == len(vote) == 2
    for line in rsa:  # RSA over the exploration's 4 paths, replayed from its records
        assert (line["config"]["rounds"], line["config"]["subset"]) == (2, 2)
        calls = [SynthesisRecord.from_json(call) for call in line["syntheses"]]
        drawn = subsets(line["config"]["seed"], f"{line['id']}/rsa", 4, 2, 2)
        assert [[c.reference_order for c in calls if c.round == t] for t in (1, 2)] == drawn
        population = [path["answer_part"] for path in explorations[line["id"].rsplit("/", 1)[0]]["paths"]]
        for call in calls[:4]:
            assert format_references([population[j] for j in call.reference_order]) in call.prompt
        assert line["synthesizer"]["answer"] == majority_vote([c.answer for c in calls[4:]])
    assert all(len(line["syntheses"]) == 2 and line["config"]["syntheses"] == 2 for line in vote)

    summary = json.loads((run / "summary.json").read_text())
    protocol = summary["protocol"]
    assert {k: protocol[k] for k in ("methods", "syntheses", "rounds", "subset")} == {
        "methods": ["sc", "a2r", "a2r-vote", "rsa"], "syntheses": 2, "rounds": 2, "subset": 2,
    }  # fmt: skip
    methods = summary["methods"]
    for method in ("a2r-vote", "rsa"):
        row = methods[method]["4"]
        assert row["ci"][0] <= row["accuracy"] <= row["ci"][1] and row["latency_s"]["p50"] > 0
    # RSA's tokens: the paths', then every call of every round, as the engine counted them.
    calls = [c["prompt_tokens"] + c["completion_tokens"] for line in rsa for c in line["syntheses"]]
    assert methods["rsa"]["4"]["tokens"] == pytest.approx(
        methods["sc"]["4"]["tokens"] + sum(calls) / 2, abs=0.1
    )
    pairs = {(p["a"], p["b"], p["match"]) for p in summary["paired"]}
    assert {("rsa@4", "sc@4", "same N"), ("a2r-vote@4", "sc@4", "same N")} <= pairs
    assert any("rsa@4" in (a, b) and "a2r" in a + b for a, b, match in pairs if match == "nearest tokens")
    assert "RSA@4" in done.stdout and "A2R-vote@4" in done.stdout

    # A rerun finds every call on disk: nothing is redone, no engine started.
    before = {
        f: (run / f).read_bytes()
        for f in ("explorations.jsonl", "syntheses.jsonl", "rsa.jsonl", "a2r-vote.jsonl")
    }
    again = typed(ARENA, tmp_path)
    assert again.returncode == 0 and "0 explorations and 0 synthesis jobs" in again.stdout, again.stdout
    assert {f: (run / f).read_bytes() for f in before} == before
    other = typed(ARENA.replace("--rounds 2", "--rounds 1"), tmp_path)
    assert other.returncode == 2 and "another configuration (rounds: 2 -> 1)" in other.stdout, other.stdout
