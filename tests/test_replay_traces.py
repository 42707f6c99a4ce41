"""Stop policies that read probes and launch waves, replayed on trace stores: the driver, the figures
`benchmarks.adaptive` reports, the table over trace stores, and bad input. Pure: no engine. The real Qwen3
traces are read from ../shared/data/traces when present; small synthetic stores test the logic without them."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import adaptive
from benchmarks.frontier import choose
from benchmarks.traces import Trace, read_file, read_samples
from programs.core.stopping import (
    STOP_FORMS,
    PathTrace,
    Seen,
    StopPolicy,
    Tally,
    current_answers,
    leader_stays,
    replay,
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


# --- the policy API -------------------------------------------------------------------------------------------


def test_leader_stays_is_the_beta_probability_that_the_leader_is_ahead():
    assert leader_stays(0, 0) == 0.5
    assert leader_stays(2, 0) == 0.875  # P(Beta(3, 1) > 1/2) = 1 - 1/8
    assert leader_stays(3, 1) == pytest.approx(0.8125)
    assert leader_stays(5, 5) == 0.5


def test_posterior_stops_once_the_leader_is_likely_enough():
    finals = [Seen(i, 10, a, True) for i, a in enumerate(["7", "7", "8", "7", "7"])]
    loose, strict = StopPolicy.parse("posterior:0.25"), StopPolicy.parse("posterior:0.05")
    assert not loose.settled(finals[:1], 16)  # 1:0 is 0.75, not above 0.75
    assert loose.settled(finals[:2], 16)  # 2:0 is 0.875
    assert not strict.settled(finals[:4], 16)  # 3:1 is 0.81
    assert loose.settled(finals[:4], 16)
    assert not strict.settled(finals[:5], 16)  # 4:1 is 0.89
    assert strict.settled(finals[:5], 5)  # with N=5 no path is left to overtake the leader


def test_a_probe_counts_once_it_was_stable_and_an_unreadable_probe_changes_nothing():
    tally = Tally(str.__eq__, stable=2)
    for s in [Seen(0, 10, "7", False), Seen(0, 20, None, False)]:
        tally.add(s)
    assert tally.top_two() == (0, 0) and tally.decided == 0
    tally.add(Seen(0, 30, "7", False))
    assert tally.top_two() == (1, 0) and tally.decided == 1
    tally.add(Seen(0, 40, "9", False))  # changed its mind: its vote is withdrawn until "9" repeats
    assert tally.top_two() == (0, 0) and tally.decided == 0
    tally.add(Seen(0, 45, None, True))  # ended with no answer: decided, for nobody
    assert tally.top_two() == (0, 0) and tally.decided == 1


def test_the_vote_after_a_stop_takes_stopped_paths_last_probe_answers():
    seen = [
        Seen(0, 10, "3", False),
        Seen(1, 10, "4", False),
        Seen(1, 15, "5", True),
        Seen(0, 20, None, False),
    ]
    assert current_answers(seen) == {0: "3", 1: "5"}


def test_the_policy_reads_every_observation_when_the_caller_passes_another_list():
    policy = StopPolicy.parse("agree:2")
    seen = [Seen(0, 10, "1", True), Seen(1, 10, "2", True)]
    assert not policy.settled(seen, 4)
    seen[1] = Seen(1, 10, "1", True)  # the same list, changed in place: not taken for an extension
    assert policy.settled(seen, 4)
    assert not policy.settled([Seen(2, 10, "1", True)], 4)  # another list: read from its start


@pytest.mark.parametrize(
    "spec",
    [
        "settled:3",
        "posterior:1.5",
        "agree:3,wave=0",
        "first:2,eps=0.1",
        "majority,stable=x",
        "agree:2,stable=0",
        "agree:2,wave=4,wave=4",
        "posterior:nan",
        "majority:",
    ],
)
def test_a_policy_that_does_not_parse_names_the_accepted_forms(spec):
    with pytest.raises(ValueError, match="use majority, agree:K") as error:
        StopPolicy.parse(spec)
    assert repr(spec) in str(error.value) and STOP_FORMS in str(error.value)


@pytest.mark.parametrize(
    "spec",
    [
        "posterior",
        "posterior:0.1,probe=500,stable=3",
        "agree:3,wave=4",
        "settled",
        "settled:wave=8,eps=0.1",
        "majority:probe=1000",
    ],
)
def test_policies_round_trip(spec):
    assert str(StopPolicy.parse(spec)) == spec


def test_a_wave_of_n_or_more_launches_every_path_at_once():
    StopPolicy.parse("settled").check(2)  # the recommended policy works at any N
    result = replay(StopPolicy.parse("agree:2,wave=8"), ["1", "2", "1"], [10, 20, 30])
    assert (result.waves, result.spent, result.answer_at) == (1, [10, 20, 30], 30)


# --- the replay driver ----------------------------------------------------------------------------------------


def test_a_wave_that_settles_launches_no_more():
    result = replay(StopPolicy.parse("agree:2,wave=2"), ["1"] * 4, [10, 20, 30, 40])
    assert (result.spent, result.waves, result.answer_at) == ([10, 20, 0, 0], 1, 20)
    assert result.votes == ["1", "1", None, None]


def test_an_unsettled_wave_launches_the_next_where_its_last_path_ended():
    result = replay(StopPolicy.parse("agree:2,wave=2"), ["1", "2", "1", "3"], [10, 20, 30, 40])
    # Wave 2 starts at 20: path 2 ends at 50 and settles it; path 3 has decoded 30 of its 40 tokens.
    assert (result.spent, result.waves, result.answer_at, result.stop_after) == ([10, 20, 30, 30], 2, 50, 50)
    assert result.kept == [True, True, True, False]


def test_a_probe_answer_is_known_when_its_path_reaches_its_token_count():
    probes = [[(10, "5"), (20, "5")], [(10, None), (20, "5")], [(10, "6")]]
    result = replay(StopPolicy.parse("agree:2,probe=10"), ["5", "5", "6"], [100, 90, 15], probes=probes)
    # At 10 only path 0 says 5; path 2 ends at 15 with 6; at 20 path 0's second 5 is one vote, path 1's 5 two.
    assert (result.stop_after, result.spent, result.probes) == (20, [20, 20, 15], 5)
    assert result.votes == ["5", "5", "6"]


def test_probes_every_other_interval_read_every_other_probe():
    probes = [[(10, "5"), (20, "5")], [(10, "5"), (20, "5")]]
    result = replay(StopPolicy.parse("agree:2,probe=20"), ["5", "5"], [100, 100], probes=probes)
    assert (result.stop_after, result.probes) == (20, 2)


def test_an_observed_order_replays_only_what_has_neither_waves_nor_probes():
    with pytest.raises(ValueError, match="observed finish order"):
        replay(StopPolicy.parse("agree:2,wave=2"), ["1"] * 4, [1, 2, 3, 4], order=[0, 1, 2, 3])


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


def test_equivalent_finals_are_one_answer_and_integer_probes_join_their_class():
    trace = Trace(
        "t",
        "1/2",
        [PathTrace(9, "1/2", [(5, "3")]), PathTrace(9, "0.5", [(5, "003")]), PathTrace(9, "3", [(5, "1/2")])],
        [None] * 3,
    )
    grouped = trace.grouped()
    assert grouped.answers == ["1/2", "1/2", "3"]
    assert [p.probes for p in grouped.paths] == [[(5, "3")], [(5, "3")], [(5, "1/2")]]


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


def write_records(path: Path, rows: list[dict], cut: str = "") -> Path:
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
    records = write_records(tmp_path / "r.jsonl", [record(), row])
    err = refused(capsys, str(records), "--stop", "majority")
    assert f"{records}:2" in err and names in err


def test_a_nan_length_is_refused_and_nothing_printed(tmp_path, capsys):
    records = tmp_path / "r.jsonl"
    records.write_text(
        json.dumps(record()).replace('"completion_tokens": 10', '"completion_tokens": NaN') + "\n"
    )
    assert "completion_tokens" in refused(capsys, str(records), "--stop", "majority", "--json")


def test_a_cut_off_last_line_is_dropped_with_a_note_as_resume_drops_it(tmp_path, capsys):
    records = write_records(tmp_path / "r.jsonl", [record(), record(tokens=20)], cut='{"id": "q", "pa')
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

    def run(command: str) -> str:
        argv = [sys.executable, *command.split()[1:]]  # "python" is this interpreter
        done = subprocess.run(argv, cwd=checkout, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    docs = (REPO / "docs" / "adaptive.md").read_text()
    one = "python -m benchmarks.adaptive ../shared/data/traces/Qwen3-4B-aime24.json.gz --n 16 --stop settled --json"
    table = "python -m benchmarks.adaptive --traces ../shared/data/traces --output docs"
    assert one in docs and table in docs
    result = json.loads(run(one))
    assert result["groups"] == 240 and result["saved_percent"] > 50
    run(table)
    written = json.loads((checkout / "docs" / "adaptive_table.json").read_text())
    assert written["tuning"]["stores"] == ["Qwen3-0.6B", "Qwen3-1.7B"]
    chosen = written["tuning"]["chosen"]
    assert StopPolicy.parse("settled") == StopPolicy.parse(
        f"settled:wave={chosen['wave']},eps={chosen['eps']}"
    )
    assert {(r["n"], r["policy"]) for r in written["rows"] if r["traces"] == "all"} >= {(64, "settled")}
    assert "| all | 16 | `settled` |" in (checkout / "docs" / "adaptive_table.md").read_text()
    assert (checkout / "docs" / "adaptive_pareto.png").stat().st_size > 10_000


# --- benchmarks.frontier ----------------------------------------------------------------------------------------


def grid_row(wave: int, saved: float, change: float, time: float) -> dict:
    return {
        "wave": wave,
        "eps": 0.1,
        **{
            f"{k}@{n}": v
            for n in (16, 64)
            for k, v in (("saved", saved), ("cons_change", change), ("time", time))
        },
    }


def test_tuning_keeps_cons_within_a_point_then_takes_the_soonest_of_the_most_saving():
    grid = [
        grid_row(1, 90.0, -1.5, 100.0),  # saves most, but loses 1.5 points
        grid_row(2, 60.0, -0.5, 300.0),  # the largest feasible saving, but slow
        grid_row(3, 58.5, +1.0, 150.0),  # within 2 points of it and sooner: chosen
        grid_row(4, 50.0, 0.0, 90.0),  # soonest, but saves too little
    ]
    assert choose(grid)["wave"] == 3
    assert choose(grid[:1]) is None


def test_a_traces_folder_without_stores_is_refused(tmp_path, capsys):
    assert adaptive.main(["--traces", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    assert "no trace stores" in capsys.readouterr().out


def test_the_table_over_synthetic_stores_names_tuning_and_held_out_stores(tmp_path):
    for name in ("m-0.6B.json", "m-4B.json.gz"):
        write_store(tmp_path / name, [("7", [branch(40 + 10 * i, "7", ["7"]) for i in range(64)])] * 2)
    assert adaptive.main(["--traces", str(tmp_path), "--output", str(tmp_path / "out")]) == 0
    table = json.loads((tmp_path / "out" / "adaptive_table.json").read_text())
    assert table["tuning"]["stores"] == ["m-0.6B"] and table["held_out"] == ["m-4B"]
    assert {r["traces"] for r in table["rows"]} == {"m-0.6B", "m-4B", "held-out (m-4B)", "all"}
    assert (tmp_path / "out" / "adaptive_pareto.png").stat().st_size > 0


class WordCounter:
    """A tokenizer stand-in for samples files: one token per word."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[str]:
        return text.split()


def test_a_cut_off_last_line_of_samples_is_dropped_with_a_note_too(tmp_path):
    samples = tmp_path / "s.jsonl"
    row = {"gold": "2", "out": ["so \\boxed{2}", "well then \\boxed{3}"]}
    samples.write_text(json.dumps(row) + "\n" + '{"gold": "5", "out": ["\\\\box')
    notes: list[str] = []
    traces = read_samples(samples, "gold", "out", WordCounter(), notes.append)
    assert [t.lengths for t in traces] == [[2, 3]] and "cut-off last line" in notes[0]
