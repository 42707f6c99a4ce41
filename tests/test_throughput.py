"""`python -m benchmarks.throughput` on the shared real CPU engine: the figures it writes per round and as
medians, the prefix-cache reuse it measures, exact lengths in fixed-length mode, every mode doing the same work,
the two-phase baseline against streaming, sweeps that resume, and the overhead budget. No timing thresholds:
these machines are noisy."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from benchmarks.modes import MODES
from benchmarks.throughput import (
    PROBLEMS_PER_SLOT,
    RATIOS,
    SYNTHESIS_SHARE,
    cpu_meter,
    main,
    parse_args,
    table,
    unsteady,
)
from engine.cpu_use import KINDS
from programs.core.config import RunConfig

N, EXPLORER_TOKENS, SYNTHESIZER_TOKENS, PROBLEMS, ROUNDS, IN_FLIGHT = 4, 24, 12, 4, 2, 2


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def by_round(path: Path) -> list[list[dict]]:
    records = read_jsonl(path)
    return [[r for r in records if r["round"] == index] for index in range(ROUNDS)]


@pytest.fixture(scope="module")
def fixed_run(cpu_engine, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("throughput")
    argv = ["--explorer-url", cpu_engine.explorer.base_url, "--dataset", "aime24", "--limit", str(PROBLEMS),
            "--n", str(N), "--fixed-length", "--explorer-tokens", str(EXPLORER_TOKENS),
            "--synthesizer-tokens", str(SYNTHESIZER_TOKENS), "--output", str(output), "--rounds", str(ROUNDS),
            "--max-in-flight", str(IN_FLIGHT)]  # fmt: skip
    assert main(argv) == 0
    return output


def test_json_holds_medians_ranges_and_every_round(fixed_run):
    result = json.loads((fixed_run / "throughput.json").read_text())
    assert len(result["rounds"]) == ROUNDS and all(set(r) == set(MODES) for r in result["rounds"])
    for mode in MODES:
        rates = sorted(r[mode]["tokens_per_s"] for r in result["rounds"])
        assert result["modes"][mode]["tokens_per_s"] == pytest.approx(sum(rates) / 2)  # two rounds' median
        assert result[f"{mode.replace('-', '_')}_tokens_per_s"] == result["modes"][mode]["tokens_per_s"] > 0
        figures = result["modes"][mode]
        assert figures["problems"] == PROBLEMS and figures["in_flight"] == IN_FLIGHT
        assert figures["latency_p95_s"] >= figures["latency_p50_s"] > 0
    for name, (a, b, figure) in RATIOS.items():
        ratio = result["ratios"][name]
        per_round = [r[a][figure] / r[b][figure] for r in result["rounds"]]
        assert ratio["rounds"] == pytest.approx(per_round)
        assert (
            ratio["min"]
            == min(per_round)
            <= ratio["median"]
            == result[name]
            <= ratio["max"]
            == max(per_round)
        )
    run = result["config"]["run"]
    assert (
        run["n"] == N and run["explorer"]["max_tokens"] == EXPLORER_TOKENS and run["explorer"]["ignore_eos"]
    )
    assert result["config"]["rounds"] == ROUNDS and result["config"]["slots"][0] == IN_FLIGHT
    share = result["modes"]["a2r"]["stage_share"]
    assert share["explore"] > 0 and share["synthesize"] > 0
    assert share["explore"] + share["synthesize"] == pytest.approx(1)
    assert result["modes"]["sc"]["stage_share"]["synthesize"] == 0


def test_each_mode_records_where_the_cpu_time_went(fixed_run):
    """One local engine serves both roles here, so it is read once, as the explorer, next to the frontend."""
    result = json.loads((fixed_run / "throughput.json").read_text())
    kinds = {"frontend", "explorer server", "explorer scheduler", "explorer detokenizer"}
    every_mode = [r[mode]["cpu_s"] for r in result["rounds"] for mode in MODES]
    for used in every_mode:
        assert set(used) == kinds and all(seconds >= 0 for seconds in used.values())
        assert used["explorer scheduler"] > 0  # the model's work: well above the clock's 10 ms tick
    assert sum(used["frontend"] for used in every_mode) > 0  # one mode's may be under a tick
    rounds = [r["sc"]["cpu_s"]["explorer scheduler"] for r in result["rounds"]]
    assert result["modes"]["sc"]["cpu_s"]["explorer scheduler"] == pytest.approx(sum(rounds) / 2)
    rows = table(result).columns[0].cells
    assert {f"CPU cores: {kind}" for kind in kinds} <= set(rows)
    for figures in result["modes"].values():  # a result saved before CPU time was recorded still prints
        del figures["cpu_s"]
    assert not any(row.startswith("CPU") for row in table(result).columns[0].cells)


def test_an_engine_reached_at_two_urls_is_read_once(cpu_engine):
    url = cpu_engine.explorer.base_url
    other = url.replace("127.0.0.1", "localhost")
    assert other != url
    reading = cpu_meter({url: "explorer", other: "synthesizer"})()
    assert set(reading) == {"frontend", *(f"explorer {kind}" for kind in KINDS)}


def test_explorer_prompts_are_prefilled_once_per_problem(fixed_run):
    result = json.loads((fixed_run / "throughput.json").read_text())
    assert result["explorer_cache_hit_ratio"] > 0.9
    for mode in ("sc", "a2r", "two-phase"):
        for record in read_jsonl(fixed_run / f"{mode}.jsonl"):
            assert all(p["cached_tokens"] >= p["prompt_tokens"] - 1 for p in record["paths"]), record["paths"]


def test_fixed_length_decodes_exactly_the_requested_tokens(fixed_run):
    for mode in MODES:
        for records in by_round(fixed_run / f"{mode}.jsonl"):
            assert [len(r["paths"]) for r in records] == [N] * PROBLEMS
            assert {p["completion_tokens"] for r in records for p in r["paths"]} == {EXPLORER_TOKENS}, mode
    for mode in ("a2r", "two-phase"):
        for records in by_round(fixed_run / f"{mode}.jsonl"):
            assert [r["synthesizer"]["completion_tokens"] for r in records] == [SYNTHESIZER_TOKENS] * PROBLEMS


def test_fixed_length_references_are_cut_to_the_papers_share(fixed_run, tiny_model):
    result = json.loads((fixed_run / "throughput.json").read_text())
    keep = result["config"]["reference_tokens"]
    assert 0 < keep < EXPLORER_TOKENS  # the whole random-weight path would otherwise be the reference
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    for record in read_jsonl(fixed_run / "a2r.jsonl") + read_jsonl(fixed_run / "two-phase.jsonl"):
        references = re.findall(r"<reference\d+>(.*?)</reference\d+>", record["synthesizer"]["prompt"], re.S)
        assert len(references) == N
        assert all(len(tokenizer.encode(r, add_special_tokens=False)) <= keep + 2 for r in references)


def test_every_mode_does_the_same_work_in_every_round(fixed_run):
    result = json.loads((fixed_run / "throughput.json").read_text())
    for figures in result["rounds"]:
        sc, raw, a2r, two_phase = (figures[m] for m in ("sc", "raw", "a2r", "two-phase"))
        assert raw["sequences"] == sc["sequences"] == N * PROBLEMS
        assert raw["output_tokens"] == sc["output_tokens"] == N * PROBLEMS * EXPLORER_TOKENS
        assert a2r["sequences"] == two_phase["sequences"] == (N + 1) * PROBLEMS
        assert (
            a2r["output_tokens"]
            == two_phase["output_tokens"]
            == sc["output_tokens"] + PROBLEMS * SYNTHESIZER_TOKENS
        )
    # The same chat-templated prompts: the engine counted the same prompt tokens for every problem.
    prompts = {
        m: {r["id"]: r["paths"][0]["prompt_tokens"] for r in read_jsonl(fixed_run / f"{m}.jsonl")}
        for m in ("sc", "raw")
    }
    assert prompts["raw"] == prompts["sc"]


def test_two_phase_synthesizes_only_after_all_exploring_and_a2r_streams(fixed_run):
    for records in by_round(fixed_run / "two-phase.jsonl"):
        timings = [r["timings"] for r in records]
        assert min(t["synthesis_started_at"] for t in timings) >= max(t["explored_at"] for t in timings)
    # With fewer slots than problems, the pipeline synthesizes early problems while later ones explore.
    for records in by_round(fixed_run / "a2r.jsonl"):
        timings = [r["timings"] for r in records]
        assert min(t["synthesis_started_at"] for t in timings) < max(t["explored_at"] for t in timings)


def test_the_overhead_budget_is_measured_on_the_engine(fixed_run):
    result = json.loads((fixed_run / "throughput.json").read_text())
    costs, shares = result["overhead"]["costs"], result["overhead"]["shares"]
    assert costs["commit_s"] > 0 and costs["sc_problem_s"] > 0 and costs["raw_problem_s"] > 0
    assert costs["prompt_s"] > 0
    assert set(shares) == {"prompt", "commit", "frontend", "handoff", "requests"}
    sc = result["modes"]["sc"]
    slot_seconds = sc["wall_s"] * sc["in_flight"] / sc["problems"]
    assert shares["commit"] == pytest.approx(costs["commit_s"] / slot_seconds)
    assert shares["handoff"] == pytest.approx(sc["handoff_s"] / slot_seconds)


def test_ratios_whose_rounds_leave_five_percent_of_their_median_are_named():
    def ratio(low: float, high: float) -> dict[str, float]:
        return {"median": 1.0, "min": low, "max": high}

    result = {
        "ratios": {"steady": ratio(0.95, 1.05), "slow round": ratio(0.94, 1.0), "fast": ratio(1.0, 1.06)}
    }
    assert unsteady(result) == ["slow round", "fast"]
    assert unsteady({"ratios": {"one round": ratio(1.0, 1.0)}}) == []


def test_free_length_run_sizes_itself_for_steady_state(cpu_engine, tmp_path):
    url = cpu_engine.explorer.base_url
    argv = ["--explorer-url", url, "--n", "2", "--output", str(tmp_path), "--rounds", "1", "--max-in-flight", "1",
            "--seconds", "0.5", "--explorer-max-tokens", "16", "--synthesizer-max-tokens", "16"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((tmp_path / "throughput.json").read_text())
    assert (
        not result["config"]["run"]["explorer"]["ignore_eos"] and result["config"]["reference_tokens"] is None
    )
    problems = result["modes"]["sc"]["problems"]
    assert problems >= PROBLEMS_PER_SLOT * 1 == PROBLEMS_PER_SLOT
    assert result["modes"]["raw"]["sequences"] == result["modes"]["sc"]["sequences"] == 2 * problems
    assert result["modes"]["a2r"]["sequences"] == 3 * problems  # two paths and the synthesis
    assert len(result["config"]["problem_ids"]) == problems


def test_sweeps_write_a_table_a_plot_and_resume(cpu_engine, tmp_path, capsys):
    url = cpu_engine.explorer.base_url
    common = ["--explorer-url", url, "--n", "2", "--rounds", "1", "--limit", "2", "--fixed-length"]
    length = [*common, "--sweep", "length", "--sweep-values", "8", "16", "--output", str(tmp_path / "length")]
    assert main(length) == 0
    sweep = json.loads((tmp_path / "length" / "sweep-length.json").read_text())
    runs = [point["config"]["run"] for point in sweep["points"].values()]
    assert [r["explorer"]["max_tokens"] for r in runs] == [8, 16]
    assert [r["synthesizer"]["max_tokens"] for r in runs] == [
        max(1, round(SYNTHESIS_SHARE * v)) for v in (8, 16)
    ]
    assert (tmp_path / "length" / "sweep-length.png").stat().st_size > 0
    load = [*common, "--explorer-tokens", "8", "--synthesizer-tokens", "4", "--sweep", "load", "--sweep-values", "1", "2",
            "--output", str(tmp_path / "load")]  # fmt: skip
    assert main(load) == 0
    points = json.loads((tmp_path / "load" / "sweep-load.json").read_text())["points"]
    assert [p["modes"]["sc"]["in_flight"] for p in points.values()] == [1, 2]
    first = tmp_path / "load" / "load-1" / "throughput.json"
    measured_at = first.stat().st_mtime_ns
    capsys.readouterr()
    assert main(load) == 0  # everything measured already: reused, not run again
    assert "reusing load-1, load-2" in capsys.readouterr().out
    assert json.loads(first.read_text())["rounds"] == points["load-1"]["rounds"]
    assert first.stat().st_mtime_ns == measured_at


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--explorer-tokens", "10"], "--explorer-tokens needs --fixed-length"),
        (["--fixed-length", "--scale", "0"], "--scale needs --fixed-length and a positive value"),
        (["--fixed-length", "--explorer-max-tokens", "10"], "--fixed-length takes its lengths"),
        (["--n", "0"], "--n must be at least 1"),
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--sweep", "length"], "--sweep length needs --fixed-length"),
        (["--sweep-values", "4"], "--sweep-values needs --sweep"),
        (["--seconds", "-1"], "--seconds must be positive"),
    ],
)
def test_inconsistent_flags_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_the_benchmarks_own_rounds_are_not_rsas():
    # --rounds here counts rounds of the four modes; the run it measures is the paper's A2R, not RSA.
    args = parse_args(["--rounds", "2"])
    config = RunConfig.from_args(args, budgets=(64, 32))
    assert args.rounds == 2 and (config.method, config.rounds, config.subset) == ("a2r", None, None)
