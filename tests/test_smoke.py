"""The doctor's smoke test (`doctor.smoke`): the model folders it builds, the commands it runs (parsed by the
project's own CLIs), and how it judges their exit status and JSON, as written by the programs themselves."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from benchmarks import throughput
from benchmarks.modes import MODES
from doctor import smoke
from doctor.smoke import FAIL, PASS, Step
from engine.layout import Engines
from engine.sizing import ModelShape
from engine.spec import EngineSpec
from programs import a2r
from programs.core.config import RunConfig, SamplingConfig
from rl import train


def test_the_shipped_configs_are_the_real_qwen3_shapes():
    small, medium, large = (smoke.load_config(n) for n in ("qwen3-0.6b", "qwen3-4b", "qwen3-8b"))
    assert [c["hidden_size"] for c in (small, medium, large)] == [1024, 2560, 4096]
    assert [c["intermediate_size"] for c in (small, medium, large)] == [3072, 9728, 12288]
    assert [c["num_hidden_layers"] for c in (small, medium, large)] == [28, 36, 36]
    assert [c["tie_word_embeddings"] for c in (small, medium, large)] == [True, True, False]
    assert {c["vocab_size"] for c in (small, medium, large)} == {151936}
    assert {(c["num_key_value_heads"], c["head_dim"]) for c in (small, medium, large)} == {(8, 128)}


def test_a_model_folder_is_the_shipped_config_beside_the_tiny_tokenizer(tiny_model, tmp_path):
    folder = smoke.model_folder("qwen3-4b", tiny_model, tmp_path)
    assert json.loads((folder / "config.json").read_text()) == smoke.load_config("qwen3-4b")
    for name in smoke.TOKENIZER_FILES:
        assert (folder / name).read_bytes() == (tiny_model / name).read_bytes()
    assert smoke.tokenizer_ids(folder) <= 151936


def test_a_tokenizer_with_ids_past_the_models_vocabulary_is_refused(tmp_path):
    vocab = {"a": 0, "b": 1}
    added = [{"id": 151936, "content": "<|x|>"}]
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"vocab": vocab}, "added_tokens": added}))
    assert smoke.tokenizer_ids(tmp_path) == 151937
    with pytest.raises(ValueError, match="151937 ids, more than qwen3-4b's vocabulary of 151936"):
        smoke.model_folder("qwen3-4b", tmp_path, tmp_path / "out")


def test_random_weights_are_saved_for_the_config_in_the_folder(tiny_model, tmp_path):
    config = {**smoke.load_config("qwen3-0.6b"), "hidden_size": 64, "intermediate_size": 128}
    config.update(num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=32)
    for name in smoke.TOKENIZER_FILES:
        (tmp_path / name).write_bytes((tiny_model / name).read_bytes())
    (tmp_path / "config.json").write_text(json.dumps(config))
    smoke.write_random_weights(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert sum(p.numel() for p in model.parameters()) == ModelShape.from_config("small", config).params


def test_the_smoke_commands_parse_with_the_projects_own_clis():
    folder = Path("/d")
    commands = smoke.smoke_commands(folder, rl=True, python="python")
    assert list(commands) == [smoke.A2R, smoke.THROUGHPUT, smoke.GRPO]
    run = a2r.parse_args(commands[smoke.A2R][3:])
    assert (run.explorer_model, run.synthesizer_model) == ("/d/models/qwen3-4b", "/d/models/qwen3-8b")
    assert (run.load_format, run.limit, run.output) == ("dummy", 2, folder / "a2r")
    bench = throughput.parse_args(commands[smoke.THROUGHPUT][3:])
    assert bench.fixed_length and bench.load_format == "dummy" and bench.output == folder / "throughput"
    # The 20-second run: one round of the four modes, each sized for 5 s of decoding.
    assert (bench.rounds, bench.seconds, bench.limit) == (1, 5.0, None)
    assert bench.rounds * bench.seconds * len(MODES) == 20
    assert (bench.explorer_tokens, bench.synthesizer_tokens) == (512, 128)
    assert smoke.GRPO not in smoke.smoke_commands(folder, rl=False)


def test_the_grpo_command_is_one_step_of_a_valid_recipe(capsys):
    command = smoke.smoke_commands(Path("/d"), rl=True, python="python")[smoke.GRPO]
    assert train.main([*command[3:], "--dry-run"]) == 0
    recipe = json.loads(capsys.readouterr().out.split("\n\n", 1)[1])
    assert recipe["recipe"]["model"] == "/d/models/qwen3-0.6b"
    # One rollout batch of the dataset's prompts, trained on whole: one optimizer step.
    assert recipe["recipe"]["rollout_batch_size"] == len(smoke.GRPO_PROMPTS)
    assert recipe["recipe"]["episodes"] == 1 and recipe["derived"]["train_batch_size"] == 4
    assert not recipe["recipe"]["dynamic_filtering"]


def test_only_the_first_visible_gpu_is_kept_for_the_smoke_test():
    assert smoke.single_gpu_env({"CUDA_VISIBLE_DEVICES": "3,5", "X": "1"}) == {
        "CUDA_VISIBLE_DEVICES": "3",
        "X": "1",
    }
    assert smoke.single_gpu_env({})["CUDA_VISIBLE_DEVICES"] == "0"


SUMMARY = {"problems": 2, "failed": 0, "explorer": {"prefix_cache_hit_ratio": 0.97}}


def test_the_a2r_check_reads_summary_json():
    ok = Step(0, 95.0, Path("a2r.log"))
    check = smoke.a2r_check(ok, SUMMARY)
    assert check.status == PASS and "97.0%" in check.figures and "2 solved" in check.figures
    assert smoke.a2r_check(ok, {**SUMMARY, "failed": 1}).status == FAIL
    cold = {**SUMMARY, "explorer": {"prefix_cache_hit_ratio": 0.02}}
    assert "did not reuse" in smoke.a2r_check(ok, cold).advice
    crashed = smoke.a2r_check(Step(1, 12.0, Path("a2r.log")), None)
    assert crashed.status == FAIL and "exit 1" in crashed.figures and "a2r.log" in crashed.advice


def throughput_json(rates: dict[str, float]) -> dict:
    """throughput.json as the benchmark writes it, for one round of 5 s per mode at the given tokens/s."""
    figures = {
        mode: {
            "tokens_per_s": rate,
            "wall_s": 5.0,
            "explorer_prompt_tokens": 100,
            "explorer_cached_tokens": 99,
            "time_to_answer_p50_s": 1.0,
        }
        for mode, rate in rates.items()
    }
    point = throughput.Point(
        "fixed",
        RunConfig(4, SamplingConfig(512), SamplingConfig(128), "e", "s"),
        None,
        None,
        rounds=1,
        limit=None,
        seconds=5.0,
    )
    measured = {"rounds": [figures], "problem_ids": ["1"], "slots": [4, 4]}
    engines = Engines(EngineSpec("e"), EngineSpec("s", port=30001), layout="cpu")
    result = throughput.result_of(point, measured, engines, argparse.Namespace(dataset="aime24"), "cpu")
    return json.loads(json.dumps(result))


def test_the_throughput_check_reads_the_benchmarks_throughput_json():
    result = throughput_json({"sc": 5000.0, "a2r": 4500.0, "raw": 6000.0, "two-phase": 3000.0})
    check = smoke.throughput_check(Step(0, 120.0, Path("t.log")), result)
    assert check.status == PASS, check.advice
    assert "a2r 4,500" in check.figures and "two-phase 3,000" in check.figures
    assert "a2r/raw 0.75" in check.figures and "cache hit 99.0%" in check.figures
    assert "20 s timed" in check.figures  # four modes of 5 s
    stalled = throughput_json({"sc": 5000.0, "a2r": 0.0, "raw": 6000.0, "two-phase": 3000.0})
    assert smoke.throughput_check(Step(0, 1.0, Path("t.log")), stalled).status == FAIL
    assert smoke.throughput_check(Step(2, 1.0, Path("t.log")), None).status == FAIL


def test_the_grpo_check_needs_a_saved_model():
    assert smoke.grpo_check(Step(0, 300.0, Path("g.log")), saved=True).status == PASS
    assert smoke.grpo_check(Step(0, 300.0, Path("g.log")), saved=False).status == FAIL
    assert smoke.grpo_check(Step(1, 30.0, Path("g.log")), saved=False).status == FAIL


def test_run_step_keeps_the_exit_status_and_the_output(tmp_path):
    step = smoke.run_step(
        [sys.executable, "-c", "print('hello'); raise SystemExit(3)"], tmp_path / "s.log", dict(os.environ)
    )
    assert step.returncode == 3 and step.log.read_text() == "hello\n"
