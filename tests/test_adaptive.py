"""`python -m benchmarks.adaptive`: a stop policy replayed on records files and trace stores (groups, intervals,
ties, probes charged as tokens, waves), the table over trace stores, bad input named in one line, and the docs'
commands run as typed. Pure: no engine. The real Qwen3 traces are read from ../shared/data/traces when present;
small synthetic stores test the logic without them."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import adaptive
from benchmarks.frontier import load
from benchmarks.replay import evaluate
from benchmarks.traces import read_file
from programs.core.stopping import (
    StopPolicy,
)

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the main checkout; a worktree under wt/ sits one level deeper.
PLACES = [REPO.parent / "shared" / "data" / "traces", REPO.parents[1] / "shared" / "data" / "traces"]
TRACES = next((p for p in PLACES if p.is_dir()), PLACES[0])
needs_traces = pytest.mark.skipif(
    not (TRACES / "Qwen3-4B-aime24.json.gz").exists(),
    reason=f"the Qwen3 trace stores are not in {TRACES} (test data the project does not ship)",
)


def branch(tokens: int, final: str, probes: list[str], every: int = 10) -> list:
    """One path of a store: probes every `every` tokens ("ERR" for none), its length and final answer."""
    assert len(probes) * every < tokens
    return [probes, tokens, final]


def write_store(path: Path, problems: list[tuple[str, list[list]]], every: int = 10) -> Path:
    """A trace store of (gold, branches) problems, gzip'd when the name ends in .gz."""
    data = [
        {
            "question": "?",
            "gold_answer": gold,
            "probe_freq": every,
            "each_branch": branches,
            "final_answers_trace": [b[2] for b in branches],
        }
        for gold, branches in problems
    ]
    raw = json.dumps(data).encode()
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def replay_json(capsys, *argv: str) -> dict:
    assert adaptive.main([*argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def refused(capsys, *argv: str) -> str:
    """The one-line error of a run that must fail with rc 2 and print no results."""
    assert adaptive.main(list(argv)) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    return err


# --- benchmarks.adaptive on trace stores ------------------------------------------------------------------------


def two_problems(tmp_path: Path, name: str = "store.json.gz") -> Path:
    """Two problems of 4 paths: in the first the paths agree early, in the second the vote is a tie."""
    agree = [
        branch(40, "7", ["7", "7", "7"]),
        branch(30, "7", ["ERR", "7"]),
        branch(100, "7", ["3"] * 9),
        branch(20, "8", ["8"]),
    ]
    tie = [branch(40, "9", []), branch(10, "5", []), branch(20, "5", []), branch(30, "9", [])]
    return write_store(tmp_path / name, [("7", agree), ("5", tie)])


def test_gzip_and_plain_stores_read_alike(tmp_path):
    plain, packed = two_problems(tmp_path, "a.json"), two_problems(tmp_path, "a.json.gz")
    assert read_file(plain)[1].paths == read_file(packed)[1].paths
    assert read_file(plain)[0].paths[1].probes == [(10, None), (20, "7")]  # "ERR" reads as no answer


def test_replay_reports_groups_intervals_and_a_change_made_by_a_tie(tmp_path, capsys):
    store = two_problems(tmp_path)
    result = replay_json(capsys, str(store), "--n", "2", "--stop", "first:1")
    assert result["groups"] == 4 and result["problems"] == 2 and result["paths_left_out"] == 0
    whole = replay_json(capsys, str(store), "--stop", "first:3")
    # Problem 2: the full vote ties 9 and 5 and 9, seen first, wins; first:3 keeps 5, 5, 9: now right.
    assert (whole["cons_before"], whole["cons_after"]) == (50.0, 100.0)
    assert whole["answers_changed"] == 1 and whole["cons_changes_from_ties"] == 1
    for key in ("cons_before", "cons_after", "saved_percent"):
        low, high = whole[f"{key}_ci"]
        assert low <= whole[key] <= high


def test_probes_are_charged_as_tokens(tmp_path, capsys):
    store = two_problems(tmp_path)
    free = replay_json(capsys, str(store), "--stop", "agree:2,probe=10", "--probe-tokens", "0")
    charged = replay_json(capsys, str(store), "--stop", "agree:2,probe=10", "--probe-tokens", "5")
    assert free["probes"] > 0
    assert charged["explorer_tokens_kept"] - free["explorer_tokens_kept"] == 5 * free["probes"]


def test_waves_and_time_to_answer_are_reported(tmp_path, capsys):
    store = two_problems(tmp_path)
    waves = replay_json(capsys, str(store), "--stop", "agree:2,wave=2")
    # Problem 1: paths 0-1 (7, 7) settle at 40 of the full run's 100. Problem 2: no agreement in wave 1 (9, 5)
    # by 40; wave 2 starts there and its 5 agrees at 40 + 20: 60 of 40.
    assert waves["waves"] == 1.5
    assert waves["time_to_answer_percent"] == pytest.approx(100 * (40 / 100 + 60 / 40) / 2)


def test_a_probing_policy_needs_probes_at_its_interval(tmp_path, capsys):
    store = two_problems(tmp_path)
    assert "probed every 10 tokens" in refused(capsys, str(store), "--stop", "posterior,probe=15")


# --- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "why"),
    [
        ("12", "whole number"),
        (-5, "from 0 to"),
        (1e30, "from 0 to"),
        (float("nan"), "from 0 to"),
        (1.5, "from 0"),
    ],
)
def test_a_bad_path_length_names_the_file_problem_and_field(tmp_path, capsys, tokens, why):
    branches = [branch(30, "7", []), [[], tokens, "7"]]
    store = write_store(tmp_path / "bad.json", [("7", [branch(30, "7", [])] * 2), ("7", branches)])
    err = refused(capsys, str(store), "--stop", "majority")
    assert f"{store}: problem 2: each_branch[1] tokens" in err and why in err


@pytest.mark.parametrize(
    ("problem", "names"),
    [
        ({"gold_answer": "7", "probe_freq": 10}, "no 'each_branch'"),
        ({"gold_answer": "7", "probe_freq": 10, "each_branch": [[["7"], 30]]}, "each_branch[0] is not"),
        ({"gold_answer": "7", "probe_freq": 10, "each_branch": [[[3], 30, "7"]]}, "probe_answers[0]"),
        ({"gold_answer": None, "probe_freq": 10, "each_branch": [[[], 30, "7"]]}, "gold_answer"),
        ({"gold_answer": "7", "probe_freq": 0, "each_branch": [[[], 30, "7"]]}, "probe_freq"),
    ],
)
def test_a_store_of_another_shape_is_refused_naming_the_field(tmp_path, capsys, problem, names):
    store = tmp_path / "bad.json"
    store.write_text(json.dumps([problem]))
    err = refused(capsys, str(store), "--stop", "majority")
    assert f"{store}: problem 1" in err and names in err


def test_a_list_that_is_no_store_is_refused(tmp_path, capsys):
    store = tmp_path / "bad.json"
    store.write_text("[1, 2]")
    assert "not a trace store" in refused(capsys, str(store), "--stop", "majority")


def test_fewer_paths_than_n_is_refused(tmp_path, capsys):
    err = refused(capsys, str(two_problems(tmp_path)), "--n", "8", "--stop", "majority")
    assert "problem 1: 4 paths, fewer than --n 8" in err


def write_rows(path: Path, rows: list[dict], cut: str = "") -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + cut)
    return path


def record(tokens: object = 10, paths: object = None) -> dict:
    paths = paths if paths is not None else [{"answer": "3", "completion_tokens": tokens}] * 2
    return {"id": "p", "problem": "?", "gold": "3", "paths": paths, "synthesizer": None}


@pytest.mark.parametrize(
    ("row", "names"),
    [
        (record(paths="abc"), "'paths' must be a non-empty list"),
        (record(tokens="12"), "paths[0]: completion_tokens must be a whole number"),
        (record(tokens=-5), "completion_tokens must be a whole number of tokens from 0"),
        (record(tokens=10**30), "completion_tokens must be a whole number of tokens from 0"),
        (record(paths=[{"answer": 3, "completion_tokens": 4}]), "paths[0]: answer must be a string"),
    ],
)
def test_bad_records_are_refused_naming_the_line_and_key(tmp_path, capsys, row, names):
    records = write_rows(tmp_path / "r.jsonl", [record(), row])
    err = refused(capsys, str(records), "--stop", "majority")
    assert f"{records}:2" in err and names in err


def test_a_nan_length_is_refused_and_nothing_printed(tmp_path, capsys):
    records = tmp_path / "r.jsonl"
    records.write_text(
        json.dumps(record()).replace('"completion_tokens": 10', '"completion_tokens": NaN') + "\n"
    )
    assert "completion_tokens" in refused(capsys, str(records), "--stop", "majority", "--json")


def test_a_cut_off_last_line_is_dropped_with_a_note_as_resume_drops_it(tmp_path, capsys):
    records = write_rows(tmp_path / "r.jsonl", [record(), record(tokens=20)], cut='{"id": "q", "pa')
    result = replay_json(capsys, str(records), "--stop", "majority")
    assert result["problems"] == 2
    assert adaptive.main([str(records), "--stop", "majority"]) == 0
    assert "dropping a cut-off last line" in capsys.readouterr().err
    records.write_text(records.read_text().replace('"id": "p"', '"id": "p', 1))  # broken, not the last line
    assert "malformed JSON" in refused(capsys, str(records), "--stop", "majority")


# --- the real Qwen3 traces ------------------------------------------------------------------------------------


@needs_traces
def test_replay_on_a_real_store_splits_128_paths_into_disjoint_groups(capsys):
    store = str(TRACES / "Qwen3-4B-aime24.json.gz")
    for n, groups in ((16, 8), (64, 2)):
        result = replay_json(capsys, store, "--n", str(n), "--stop", "majority")
        assert result["groups"] == 30 * groups
        assert result["cons_after"] == result["cons_before"] and result["saved_percent"] > 0


@needs_traces
def test_settled_meets_the_goal_on_the_stores_it_was_not_tuned_on(capsys):
    held_out = [str(TRACES / f"Qwen3-{m}-aime24.json.gz") for m in ("4B", "8B")]
    for n in (16, 64):
        result = replay_json(capsys, *held_out, "--n", str(n), "--stop", "settled")
        assert result["saved_percent"] >= 50
        assert abs(result["cons_after"] - result["cons_before"]) <= 1


@needs_traces
def test_the_commands_of_the_docs_run_as_typed(tmp_path):
    """docs/adaptive.md's commands, run from a checkout beside ../shared."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(TRACES.parent)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def start(command: str) -> subprocess.Popen:
        argv = [sys.executable, *command.split()[1:]]  # "python" is this interpreter
        return subprocess.Popen(
            argv, cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def output(process: subprocess.Popen) -> str:
        out, err = process.communicate()
        assert process.returncode == 0, err
        return out

    docs = (REPO / "docs" / "adaptive.md").read_text()
    one = "python -m benchmarks.adaptive ../shared/data/traces/Qwen3-4B-aime24.json.gz --n 16 --stop settled --json"
    table = "python -m benchmarks.adaptive --traces ../shared/data/traces --output docs"
    assert one in docs and table in docs
    table_run, one_run = (
        start(table),
        start(one),
    )  # side by side: the one-store run ends long before the table
    try:
        result = json.loads(output(one_run))
        assert result["groups"] == 240 and result["saved_percent"] > 50
        output(table_run)
    finally:
        table_run.kill()  # nothing left running when an assertion fails first
        table_run.wait()
    written = json.loads((checkout / "docs" / "adaptive_table.json").read_text())
    assert written["tuning"]["stores"] == ["Qwen3-0.6B", "Qwen3-1.7B"]
    chosen = written["tuning"]["chosen"]
    assert StopPolicy.parse("settled") == StopPolicy.parse(
        f"settled:wave={chosen['wave']},eps={chosen['eps']}"
    )
    assert {(r["n"], r["policy"]) for r in written["rows"] if r["traces"] == "all"} >= {(64, "settled")}
    assert "| all | 16 | `settled` |" in (checkout / "docs" / "adaptive_table.md").read_text()
    assert (checkout / "docs" / "adaptive_pareto.png").stat().st_size > 10_000


def test_a_traces_folder_without_stores_is_refused(tmp_path, capsys):
    assert adaptive.main(["--traces", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    assert "no trace stores" in capsys.readouterr().out


def test_the_table_over_synthetic_stores_names_tuning_and_held_out_stores(tmp_path):
    write_store(tmp_path / "m-0.6B.json", [("7", [branch(40 + 10 * i, "7", ["7"]) for i in range(64)])] * 2)
    mixed = [branch(30 + 5 * i, "75"[i % 2], ["5"]) for i in range(64)]
    write_store(tmp_path / "m-4B.json.gz", [("5", mixed), ("7", mixed[::-1])])
    assert adaptive.main(["--traces", str(tmp_path), "--output", str(tmp_path / "out")]) == 0
    table = json.loads((tmp_path / "out" / "adaptive_table.json").read_text())
    assert table["tuning"]["stores"] == ["m-0.6B"] and table["held_out"] == ["m-4B"]
    assert {r["traces"] for r in table["rows"]} == {"m-0.6B", "m-4B", "held-out (m-4B)", "all"}
    assert (tmp_path / "out" / "adaptive_pareto.png").stat().st_size > 0
    # Each store is replayed once; the "all" row adds up its stores' groups as one replay of them all would.
    everything = [t for traces in load(tmp_path).values() for t in traces]
    for row in (r for r in table["rows"] if r["traces"] == "all" and r["n"] == 16):
        together = evaluate(everything, StopPolicy.parse(row["policy"]), n=16)
        assert row == {"traces": "all", "n": 16, "policy": row["policy"], **together}


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
