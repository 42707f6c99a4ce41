"""The arena's statistics on fixtures with known answers: bootstrap intervals, paired comparisons, diversity
and effective paths, and the methods' outcomes read from protocol records. No engine."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.accuracy import ProtocolRecords, parse_args
from benchmarks.arena import (
    METHODS,
    ProblemSamples,
    Sample,
    a2r,
    arena,
    arena_tables,
    dataset_costs,
    plot_tokens,
    score,
    self_consistency,
)
from benchmarks.bootstrap import Problems, paired
from benchmarks.cost import load_prices
from benchmarks.diversity import (
    answer_entropy,
    distinct_answers,
    effective_paths,
    error_correlation,
    lexical_overlap,
)
from programs.core.jsonl import RecordFile
from programs.core.records import Problem, SynthesisRecord

# --- intervals -----------------------------------------------------------------------------------------


def test_a_constant_figure_has_a_degenerate_interval():
    problems = Problems.of(["aime"] * 6)
    assert problems.summary(np.ones(6)) == (100.0, [100.0, 100.0])
    assert problems.summary(np.zeros(6)) == (0.0, [0.0, 0.0])


def test_a_varying_figure_has_an_interval_around_it():
    values = np.array([1, 0] * 20, dtype=float)
    figure, (low, high) = Problems.of(["aime"] * 40).summary(values)
    assert figure == 50.0
    # The normal approximation: 50 +- 1.96 * sqrt(.25 / 40) = 50 +- 15.5 points; the bootstrap is close.
    assert 32 < low < 37 and 63 < high < 68  # a 90% interval would be [37.5, 62.5]


def test_datasets_weigh_the_same_and_are_resampled_apart():
    problems = Problems.of(["big", "big", "big", "small"])
    values = np.array([1.0, 1.0, 1.0, 0.0])
    assert problems.summary(values)[0] == 50.0  # (100 + 0) / 2, not 75
    # Every resample draws three problems of `big` and one of `small`, so the figure never moves.
    assert problems.summary(values)[1] == [50.0, 50.0]
    assert set(problems.draws[:, 3]) == {3} and set(problems.draws[:, :3].ravel()) == {0, 1, 2}


# --- paired comparisons --------------------------------------------------------------------------------


def test_a_side_that_wins_every_problem():
    result = paired(np.ones(10), np.zeros(10), Problems.of(["aime"] * 10))
    assert result == {
        "difference": 100.0,
        "ci": [100.0, 100.0],
        "contains_zero": False,
        "wins": {"a": 10, "b": 0, "ties": 0},
    }


def test_ties_everywhere_show_no_difference():
    same = np.array([1, 0, 0.5, 1, 0])
    result = paired(same, same.copy(), Problems.of(["aime"] * 5))
    assert result["difference"] == 0.0 and result["ci"] == [0.0, 0.0] and result["contains_zero"]
    assert result["wins"] == {"a": 0, "b": 0, "ties": 5}


def test_a_known_difference_with_its_paired_interval():
    # A is right on 6 problems more than B out of 40; they agree on the other 34 (half of them right).
    a = np.array([1.0] * 6 + [1.0, 0.0] * 17)
    b = np.array([0.0] * 6 + [1.0, 0.0] * 17)
    result = paired(a, b, Problems.of(["aime"] * 40))
    assert result["difference"] == 15.0
    assert result["wins"] == {"a": 6, "b": 0, "ties": 34}
    low, high = result["ci"]
    # A binomial share of 6/40: 15 +- 1.96 * sqrt(.15 * .85 / 40) = 15 +- 11 points.
    assert 0 < low < 8 and 22 < high < 30 and not result["contains_zero"]
    # Unpaired, each accuracy's own interval is wider than the gap: pairing is what shows it.
    a_low, _ = Problems.of(["aime"] * 40).summary(a)[1]
    _, b_high = Problems.of(["aime"] * 40).summary(b)[1]
    assert a_low < b_high


def test_a_small_difference_contains_zero():
    a = np.array([1.0, 0.0] + [0.5] * 18)
    b = np.array([0.0, 1.0] + [0.5] * 18)
    b[2] = 0.0  # A ahead on one problem more
    result = paired(a, b, Problems.of(["aime"] * 20))
    assert result["difference"] == 2.5 and result["wins"] == {"a": 2, "b": 1, "ties": 17}
    assert result["contains_zero"]


# --- diversity -----------------------------------------------------------------------------------------


def test_distinct_answers_and_entropy_count_equivalent_answers_once():
    assert distinct_answers(["1/2", "0.5", "3", None]) == 2
    assert distinct_answers([None, None]) == 0 and answer_entropy([None, None]) == 0.0
    assert answer_entropy(["7", "7", "7", None]) == 0.0
    assert answer_entropy(["1/2", "0.5", "3", "3"]) == pytest.approx(1.0)
    assert answer_entropy(["1", "2", "3"]) == pytest.approx(math.log2(3))
    assert answer_entropy(["1", "1", "1", "2"]) == pytest.approx(
        -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    )


def test_lexical_overlap_is_the_mean_pairwise_jaccard_of_words():
    assert lexical_overlap(["The answer is 4", "the ANSWER is 4."]) == 1.0
    assert lexical_overlap(["a b", "c d"]) == 0.0
    # {x,is,2} against {x,is,3}: 2/4; against {y}: 0 and 0.
    assert lexical_overlap(["x is 2", "x is 3", "y"]) == pytest.approx(0.5 / 3)
    assert lexical_overlap(["alone"]) is None


def test_independent_errors_are_worth_n_paths():
    errors = np.random.default_rng(0).integers(0, 2, (4000, 8))
    rho = error_correlation(errors)
    assert abs(rho) < 0.03
    assert effective_paths(8, rho) == pytest.approx(8, rel=0.2)


def test_perfectly_correlated_errors_are_worth_one_path():
    column = np.random.default_rng(1).integers(0, 2, (100, 1))
    errors = np.repeat(column, 8, axis=1)
    assert error_correlation(errors) == pytest.approx(1.0)
    assert effective_paths(8, error_correlation(errors)) == pytest.approx(1.0)


def test_a_half_shared_error_gives_the_design_effect():
    # Each path's error is a shared coin with probability 1/2, else its own: two paths share the same coin
    # with probability 1/4, their correlation in expectation.
    rng = np.random.default_rng(2)
    shared, own, pick = rng.integers(0, 2, (20000, 1)), rng.integers(0, 2, (20000, 4)), rng.random((20000, 4))
    rho = error_correlation(np.where(pick < 0.5, shared, own))
    assert rho == pytest.approx(0.25, abs=0.02)
    assert effective_paths(4, rho) == pytest.approx(4 / 1.75, rel=0.05)


def test_paths_without_varying_errors_give_no_correlation():
    assert error_correlation(np.ones((10, 4))) is None
    assert effective_paths(4, None) is None


# --- methods on protocol records -----------------------------------------------------------------------

CONFIG = {"explorer_model": "qwen3-4b", "synthesizer_model": "qwen3-8b"}


def path(answer: str | None, gold: str, finished_s: float) -> dict:
    return {
        "text": "", "answer_part": f"so x is {answer}", "answer_part_fallback": False, "prompt_tokens": 10,
        "completion_tokens": 90, "cached_tokens": 0, "finish_reason": "stop", "seed": 0, "answer": answer,
        "correct": answer == gold, "finished_s": finished_s,
    }  # fmt: skip


def sample(
    gold: str,
    answers: list[str | None],
    a2r_right: dict[int, bool],
    aggregations: dict[str, dict[int, dict]] | None = None,
) -> Sample:
    """A run of one problem: paths ending 1 s apart in order, each synthesis 150 tokens and 0.5 s."""
    paths = [path(a, gold, 1.0 + i) for i, a in enumerate(answers)]
    synthesis = {
        n: {"prompt_tokens": 100, "completion_tokens": 50, "correct": right} for n, right in a2r_right.items()
    }
    lines = {n: {"synthesizer": s, "timings": {"synthesize_s": 0.5}} for n, s in synthesis.items()}
    return Sample(gold, {"id": "p", "config": CONFIG, "paths": paths}, lines, aggregations or {})


def calls(gold: str, rounds: list[list[str | None]], seconds: float, rsa: bool = True) -> dict:
    """A protocol line of a method of several calls: each round's answers (one population of M syntheses
    when not `rsa`), each call 150 tokens, all of them `seconds`. Its `synthesizer` claims the right answer
    whatever the vote, so a method that read it instead of voting would be seen."""

    def call(answer: str | None, round: int | None) -> dict:
        made = SynthesisRecord("p", "t", 100, 50, 0, "stop", [0], answer=answer, round=round)
        return made.to_json() | {"correct": answer == gold}

    made = [call(a, t if rsa else None) for t, answers in enumerate(rounds, start=1) for a in answers]
    right = call(gold, None)
    return {"synthesizer": right, "syntheses": made, "timings": {"synthesize_s": seconds}}


def test_each_method_reads_its_answer_tokens_and_time_from_the_records():
    run = sample("1", ["2", "1", "1", "3"], {2: True, 4: False})
    cons2, cons4 = self_consistency(run, 2), self_consistency(run, 4)
    assert not cons2.correct and cons4.correct  # 2 ties 1 and was seen first; then 1 wins
    assert (cons2.tokens, cons4.tokens) == (200, 400)
    assert (cons2.seconds, cons4.seconds) == (2.0, 4.0)  # when the last of its paths ended
    synth2, synth4 = a2r(run, 2), a2r(run, 4)
    assert synth2.correct and not synth4.correct
    assert (synth2.tokens, synth4.tokens) == (350, 550)
    assert (synth2.seconds, synth4.seconds) == (2.5, 4.5)  # its paths' end, then its synthesis
    prices = load_prices()
    assert synth4.cost(prices).explorer == pytest.approx(cons4.cost(prices).total)
    assert synth4.cost(prices).synthesizer > 0


def test_a_path_without_a_finish_time_leaves_latency_unknown():
    run = sample("1", ["1", "1"], {2: True})
    del run.exploration["paths"][1]["finished_s"]
    assert self_consistency(run, 2).seconds is None and a2r(run, 2).seconds is None


def problems() -> list[ProblemSamples]:
    """Three problems, two runs, N in {2, 4}: A2R gains on p1 at N=4 only, where its paths disagree."""
    return [
        ProblemSamples("d", "p1", [sample("1", ["1", "2", "2", "3"], {2: True, 4: True})] * 2),
        ProblemSamples("d", "p2", [sample("3", ["3", "3", "3", "3"], {2: True, 4: True})] * 2),
        ProblemSamples("d", "p3", [sample("5", ["4", "4", "4", "4"], {2: False, 4: False})] * 2),
    ]


def test_the_arena_summary_holds_every_method_and_n():
    samples = problems()
    figures, rows = arena(samples, score(samples, ["sc", "a2r"], [2, 4]), load_prices())
    sc, a2r_ = figures["methods"]["sc"], figures["methods"]["a2r"]
    assert (sc["2"]["accuracy"], sc["4"]["accuracy"]) == (66.67, 33.33)
    assert a2r_["4"]["accuracy"] == 66.67
    assert (sc["4"]["tokens"], a2r_["4"]["tokens"]) == (400, 550)
    assert a2r_["4"]["latency_s"] == {"p50": 4.5, "p95": 4.5} and a2r_["4"]["cost"] > sc["4"]["cost"]
    same_n = [p for p in figures["paired"] if p["match"] == "same N"]
    assert [(p["a"], p["b"]) for p in same_n] == [("a2r@2", "sc@2"), ("a2r@4", "sc@4")]
    assert same_n[1]["difference"] == 33.33
    assert same_n[1]["wins"] == {"a": 1, "b": 0, "ties": 2}
    # A2R@2 costs 350 tokens, nearest Cons@4's 400: compared at matched tokens.
    matched = [(p["a"], p["b"]) for p in figures["paired"] if p["match"] == "nearest tokens"]
    assert ("a2r@2", "sc@4") in matched
    four = figures["diversity"]["4"]
    assert four["distinct_answers"] == pytest.approx((3 + 1 + 1) / 3)
    assert four["gain"]["a2r"]["by_distinct_answers"] == {
        "1": {"runs": 4, "gain": 0.0},
        "3": {"runs": 2, "gain": 100.0},
    }
    assert four["gain"]["a2r"]["entropy_correlation"] == pytest.approx(1.0)
    assert {(r["problem_id"], r["n"]) for r in rows} == {(p, n) for p in ("p1", "p2", "p3") for n in (2, 4)}


def test_table1s_costs_are_the_arenas_per_problem_costs_in_table1s_column_order():
    samples, prices = problems(), load_prices()
    outcomes = score(samples, ["sc", "a2r"], [2, 4])
    costs = dataset_costs(samples, outcomes, prices)["d"]
    assert list(costs) == ["cons@2", "a2r@2", "cons@4", "a2r@4"]
    figures, _ = arena(samples, outcomes, prices)
    for method, label in (("sc", "cons"), ("a2r", "a2r")):
        for n in (2, 4):
            assert costs[f"{label}@{n}"] == pytest.approx(figures["methods"][method][str(n)]["cost"])


def test_the_table_says_whether_zero_is_in_the_interval():
    # At N=4 the paths vote a wrong answer on every problem and A2R is right: a difference beyond noise.
    # At N=2 both are right everywhere.
    runs = [
        sample("1", ["1", "1", "2", "2"], {2: True, 4: True}),
        sample("1", ["1", "2", "2", "2"], {2: True, 4: True}),
    ]
    samples = [ProblemSamples("d", f"p{i}", runs) for i in range(3)]
    figures, _ = arena(samples, score(samples, ["sc", "a2r"], [2, 4]), None)
    _, pairs = arena_tables(figures)
    assert pairs.columns[-1].header == "0 in the CI?"
    rows = zip(pairs.columns[0].cells, pairs.columns[1].cells, pairs.columns[-1].cells, strict=True)
    assert list(rows)[:2] == [
        ("A2R@2", "Cons@2", "yes: within noise"),
        ("A2R@4", "Cons@4", "no: A2R@4 ahead"),
    ]


def test_an_unknown_method_is_refused_naming_the_accepted_ones(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--methods", "sc", "best-of-n"])
    assert "'best-of-n'" in (err := capsys.readouterr().err) and "'sc', 'a2r'" in err
    assert parse_args([]).methods == ["sc", "a2r"]


def test_rsa_answers_by_its_last_rounds_vote_and_pays_for_every_round():
    # Round 1 votes the right answer 1, round 2 the wrong 2: over all calls 1 would win (seen first).
    rsa = calls("1", [["1", "1"], ["2", "2"]], seconds=3.0)
    run = sample("1", ["1", "3"], {2: True}, {"rsa": {2: rsa}})
    outcome = METHODS["rsa"].outcome(run, 2)
    assert not outcome.correct
    assert outcome.tokens == 2 * 100 + 4 * 150  # its 2 paths, then 2 rounds of 2 aggregations
    assert outcome.seconds == 2.0 + 3.0  # its paths' end, then all its rounds
    prices = load_prices()
    assert outcome.cost(prices).synthesizer == pytest.approx(4 * (100 * 0.0005 + 50 * 0.005) / 1000)
    # A last round that votes 1 is right, whatever came before.
    run = sample("1", ["1", "3"], {2: True}, {"rsa": {2: calls("1", [["2", "2"], ["1", "1"]], 3.0)}})
    assert METHODS["rsa"].outcome(run, 2).correct


def test_a2r_vote_answers_by_the_vote_of_its_m_syntheses():
    vote = calls("1", [["2", "1", "2"]], seconds=1.5, rsa=False)
    run = sample("1", ["1", "1"], {2: True}, {"a2r-vote": {2: vote}})
    outcome = METHODS["a2r-vote"].outcome(run, 2)
    assert not outcome.correct and outcome.tokens == 200 + 3 * 150 and outcome.seconds == 3.5


def rsa_problems() -> list[ProblemSamples]:
    """Two problems, one run, N in {2, 4}: RSA's last round right on p1 only, where the paths vote wrong."""

    def rsa(gold: str, answer: str) -> dict[int, dict]:
        return {n: calls(gold, [[answer] * n] * 2, seconds=2.0) for n in (2, 4)}

    return [
        ProblemSamples("d", "p1", [sample("1", ["2", "2", "2", "1"], {2: False, 4: False}, {"rsa": rsa("1", "1")})]),
        ProblemSamples("d", "p2", [sample("3", ["4", "4", "4", "4"], {2: False, 4: False}, {"rsa": rsa("3", "5")})]),
    ]  # fmt: skip


def test_rsa_joins_the_summary_the_paired_comparisons_and_the_plot(tmp_path):
    samples = rsa_problems()
    figures, rows = arena(samples, score(samples, ["sc", "a2r", "rsa"], [2, 4]), load_prices())
    rsa = figures["methods"]["rsa"]
    assert (rsa["2"]["accuracy"], rsa["4"]["accuracy"]) == (50.0, 50.0)
    assert (rsa["2"]["tokens"], rsa["4"]["tokens"]) == (200 + 4 * 150, 400 + 8 * 150)
    assert rsa["4"]["latency_s"] == {"p50": 6.0, "p95": 6.0}
    pairs = {(p["a"], p["b"], p["match"]): p for p in figures["paired"]}
    assert pairs["rsa@4", "sc@4", "same N"]["wins"] == {"a": 1, "b": 0, "ties": 1}
    # At matched tokens: RSA@2 (800 tokens) against Cons@4 (400), the nearer of Cons's two costs, and
    # against A2R@4 (550), listed once as A2R@4's nearest RSA.
    assert pairs["rsa@2", "sc@4", "nearest tokens"]["difference"] == 50.0
    assert pairs["a2r@4", "rsa@2", "nearest tokens"]["tokens"] == {"a": 550.0, "b": 800.0}
    assert ("rsa@2", "a2r@4", "nearest tokens") not in pairs
    assert {r["n"]: r["accuracy"]["rsa"] for r in rows if r["problem_id"] == "p1"} == {2: 100.0, 4: 100.0}
    summary = {"protocol": {"ns": [2, 4]}, **figures}
    plot_tokens(summary, tmp_path / "plot.png", "fixture")
    assert (tmp_path / "plot.png").stat().st_size > 0
    methods, _ = arena_tables(summary)
    assert ["RSA@2", "RSA@4"] == [c for c in methods.columns[0].cells if c.startswith("RSA")]


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--rounds", "2", "--subset", "2"], "--rounds and --subset are RSA's: add rsa to --methods"),
        (["--methods", "sc", "rsa", "--rounds", "2"], "--methods rsa needs --rounds T and --subset K"),
        (["--methods", "rsa", "--subset", "2"], "--methods rsa needs --rounds T and --subset K"),
        (["--methods", "rsa", "--rounds", "0", "--subset", "2"], "--rounds must be at least 1, got 0"),
        (
            ["--ns", "2", "4", "--methods", "rsa", "--rounds", "1", "--subset", "3"],
            "--subset 3 is larger than the smallest population it draws from, --ns 2 paths",
        ),
        (
            ["--ns", "4", "--methods", "rsa", "--rounds", "1", "--subset", "2", "--keep-confident", "0.5"],
            "rsa starts from all N paths; --keep-confident stops or drops some",
        ),
        (["--syntheses", "3"], "--syntheses is a2r-vote's: add a2r-vote to --methods"),
        (["--methods", "a2r-vote"], "--methods a2r-vote needs --syntheses M"),
        (
            ["--methods", "a2r-vote", "--syntheses", "1"],
            "--syntheses must be at least 2 (one synthesis is a2r)",
        ),
    ],
)
def test_method_parameters_that_cannot_work_are_refused_in_one_line(argv, reason, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert reason in last


def test_the_issues_command_parses():
    args = parse_args(["--ns", "4", "8", "--methods", "sc", "a2r", "rsa", "--rounds", "2", "--subset", "2"])
    assert (args.methods, args.rounds, args.subset, args.syntheses) == (["sc", "a2r", "rsa"], 2, 2, None)
    args = parse_args(["--methods", "sc", "a2r-vote", "--syntheses", "3"])
    assert (args.methods, args.syntheses) == (["sc", "a2r-vote"], 3)


def test_the_protocol_resumes_each_methods_calls_from_its_own_file(tmp_path):
    """Which (method, N) a trial still needs is read from each method's file: a line lost from rsa.jsonl is
    redone alone, and every method's line reaches the arena's samples."""
    problem = Problem("p1", "What is 1 + 1?", "2")
    files = {name: RecordFile(tmp_path, {"n": 4}, name=name) for name in ("e.jsonl", "s.jsonl", "rsa.jsonl")}
    records = ProtocolRecords(
        {"d": [problem]}, 1, [2, 4], files["e.jsonl"], files["s.jsonl"], {"rsa": files["rsa.jsonl"]}
    )
    (trial,) = records.trials()
    assert records.missing_calls(trial) == [("a2r", 2), ("a2r", 4), ("rsa", 2), ("rsa", 4)]
    files["e.jsonl"].append({"id": trial.id, "config": {"n": 4}, "paths": []})
    for n in (2, 4):
        files["s.jsonl"].append({"id": trial.synthesis_id(n), "config": {"n": 4}, "n": n})
    files["rsa.jsonl"].append({"id": trial.synthesis_id(4), "config": {"n": 4}, "n": 4})
    assert records.missing_calls(trial) == [("rsa", 2)] and records.missing() == (0, 1)
    files["rsa.jsonl"].append({"id": trial.synthesis_id(2), "config": {"n": 4}, "n": 2})
    (one,) = records.samples()[0].runs
    assert {n: line["n"] for n, line in one.aggregations["rsa"].items()} == {2: 2, 4: 4}
    assert records.missing() == (0, 0)
