"""`python -m benchmarks.throughput` on the shared real CPU engine: the figures it writes, the prefix-cache
reuse it measures, exact lengths in fixed-length mode, and a raw mode doing the same work as self-consistency.
No timing thresholds: these machines are noisy."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from benchmarks.throughput import MODES, main

N, EXPLORER_TOKENS, SYNTHESIZER_TOKENS, PROBLEMS = 4, 24, 12, 3


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def fixed_run(cpu_engine, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("throughput")
    argv = ["--explorer-url", cpu_engine.explorer.base_url, "--dataset", "aime24", "--limit", str(PROBLEMS),
            "--n", str(N), "--fixed-length", "--explorer-tokens", str(EXPLORER_TOKENS),
            "--synthesizer-tokens", str(SYNTHESIZER_TOKENS), "--output", str(output)]  # fmt: skip
    assert main(argv) == 0
    return output


def test_json_holds_positive_figures_and_the_config(fixed_run):
    result = json.loads((fixed_run / "throughput.json").read_text())
    for key in ("sc_tokens_per_s", "a2r_tokens_per_s", "raw_tokens_per_s", "explorer_cache_hit_ratio"):
        assert result[key] > 0, key
    assert result["a2r_over_raw"] == pytest.approx(result["a2r_tokens_per_s"] / result["raw_tokens_per_s"])
    run = result["config"]["run"]
    assert (
        run["n"] == N and run["explorer"]["max_tokens"] == EXPLORER_TOKENS and run["explorer"]["ignore_eos"]
    )
    for mode in MODES:
        figures = result["modes"][mode]
        assert figures["problems"] == PROBLEMS
        assert figures["problems_per_s"] > 0 and figures["latency_p95_s"] >= figures["latency_p50_s"] > 0
    share = result["modes"]["a2r"]["stage_share"]
    assert share["explore"] > 0 and share["synthesize"] > 0
    assert share["explore"] + share["synthesize"] == pytest.approx(1)
    assert result["modes"]["sc"]["stage_share"]["synthesize"] == 0


def test_explorer_prompts_are_prefilled_once_per_problem(fixed_run):
    result = json.loads((fixed_run / "throughput.json").read_text())
    assert result["explorer_cache_hit_ratio"] > 0.9
    for mode in ("sc", "a2r"):
        for record in read_jsonl(fixed_run / f"{mode}.jsonl"):
            assert all(p["cached_tokens"] >= p["prompt_tokens"] - 1 for p in record["paths"]), record["paths"]


def test_fixed_length_decodes_exactly_the_requested_tokens(fixed_run):
    for mode in MODES:
        records = read_jsonl(fixed_run / f"{mode}.jsonl")
        assert [len(r["paths"]) for r in records] == [N] * PROBLEMS
        assert {p["completion_tokens"] for r in records for p in r["paths"]} == {EXPLORER_TOKENS}, mode
    synthesized = [r["synthesizer"] for r in read_jsonl(fixed_run / "a2r.jsonl")]
    assert [s["completion_tokens"] for s in synthesized] == [SYNTHESIZER_TOKENS] * PROBLEMS


def test_fixed_length_references_are_cut_to_the_papers_share(fixed_run, tiny_model):
    result = json.loads((fixed_run / "throughput.json").read_text())
    keep = result["config"]["reference_tokens"]
    assert 0 < keep < EXPLORER_TOKENS  # the whole random-weight path would otherwise be the reference
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    for record in read_jsonl(fixed_run / "a2r.jsonl"):
        references = re.findall(r"<reference\d+>(.*?)</reference\d+>", record["synthesizer"]["prompt"], re.S)
        assert len(references) == N
        assert all(len(tokenizer.encode(r, add_special_tokens=False)) <= keep + 2 for r in references)


def test_raw_mode_sends_what_self_consistency_sends(fixed_run):
    result = json.loads((fixed_run / "throughput.json").read_text())
    sc, raw = result["modes"]["sc"], result["modes"]["raw"]
    assert raw["sequences"] == sc["sequences"] == N * PROBLEMS
    assert raw["output_tokens"] == sc["output_tokens"] == N * PROBLEMS * EXPLORER_TOKENS
    # The same chat-templated prompts: the engine counted the same prompt tokens for every problem.
    prompts = {m: {r["id"]: r["paths"][0]["prompt_tokens"] for r in read_jsonl(fixed_run / f"{m}.jsonl")}
               for m in ("sc", "raw")}  # fmt: skip
    assert prompts["raw"] == prompts["sc"]


def test_free_length_run_counts_the_same_sequences(cpu_engine, tmp_path):
    url = cpu_engine.explorer.base_url
    argv = ["--explorer-url", url, "--limit", "1", "--n", "2", "--output", str(tmp_path),
            "--explorer-max-tokens", "16", "--synthesizer-max-tokens", "16"]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((tmp_path / "throughput.json").read_text())
    assert (
        not result["config"]["run"]["explorer"]["ignore_eos"] and result["config"]["reference_tokens"] is None
    )
    assert result["modes"]["raw"]["sequences"] == result["modes"]["sc"]["sequences"] == 2
    assert result["modes"]["a2r"]["sequences"] == 3  # two paths and the synthesis


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--explorer-tokens", "10"], "--explorer-tokens needs --fixed-length"),
        (["--fixed-length", "--scale", "0"], "--scale needs --fixed-length and a positive value"),
        (["--fixed-length", "--explorer-max-tokens", "10"], "--fixed-length takes its lengths"),
        (["--n", "0"], "--n must be at least 1"),
    ],
)
def test_inconsistent_flags_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
