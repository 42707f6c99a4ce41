"""The offline tiny model's builder: seeded, cached, atomic, with a tokenizer and chat template shaped like
Qwen3's, and a seeded training step whose recipe names the cache entry.

Random-weight builds (seconds) stand in wherever the weights do not matter; the trained default is the
session's `tiny_model`, built once per cache."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from programs.offline import model as tiny_model
from programs.offline.model import build_config, build_key, build_tiny_model, init_weights, tiny_model_path
from programs.offline.training import RECIPE, TrainRecipe, train

QUESTION = [{"role": "user", "content": "What is 1+1?"}]
CHATML_PROMPT = "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_path(0, root=tmp_path_factory.mktemp("cache"), trained=False)


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    return AutoTokenizer.from_pretrained(model_dir)


def test_same_seed_builds_identical_files_in_separate_caches(model_dir: Path, tmp_path: Path) -> None:
    again = tiny_model_path(0, root=tmp_path, trained=False)
    assert again != model_dir and again.name == model_dir.name
    for name in ("model.safetensors", "tokenizer.json", "config.json", "generation_config.json"):
        assert sha256(again / name) == sha256(model_dir / name), name


def test_other_seed_gives_other_weights_and_directory(model_dir: Path, tmp_path: Path) -> None:
    other = tiny_model_path(1, root=tmp_path, trained=False)
    assert other.name != model_dir.name
    assert sha256(other / "model.safetensors") != sha256(model_dir / "model.safetensors")
    assert sha256(other / "tokenizer.json") == sha256(model_dir / "tokenizer.json")


def test_config_is_the_tiny_qwen3_with_chatml_stop_tokens(model_dir: Path, tokenizer) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["head_dim"]) == (2, 128, 32)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert config["max_position_embeddings"] == 4096
    assert config["vocab_size"] == len(tokenizer)
    im_end, endoftext = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert tokenizer.eos_token == "<|im_end|>" and config["eos_token_id"] == im_end
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [im_end, endoftext]


def test_tokenizer_round_trips_text_with_single_think_tokens(tokenizer) -> None:
    text = "<think>\nLet $x^2=4$, so x = 2 — ünïcode 数学 ✓\n</think>\n\nThe answer is \\boxed{2}."
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    for tag in ("<think>", "</think>"):
        assert len(tokenizer.encode(tag, add_special_tokens=False)) == 1
        assert tokenizer.convert_tokens_to_ids(tag) in ids


def test_skipping_special_tokens_drops_chatml_markers_but_keeps_think_tags(tokenizer) -> None:
    ids = tokenizer.encode("<think>\nhmm\n</think>\n42<|im_end|>", add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<think>\nhmm\n</think>\n42"


def test_chat_template_thinks_by_default(tokenizer) -> None:
    prompt = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert prompt == CHATML_PROMPT
    explicit = tokenizer.apply_chat_template(
        QUESTION, tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    assert explicit == prompt


def test_chat_template_without_thinking_prefills_an_empty_think_block(tokenizer) -> None:
    prompt = tokenizer.apply_chat_template(
        QUESTION, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert prompt == CHATML_PROMPT + "<think>\n\n</think>\n\n"


def test_cached_model_is_reused_without_rebuilding(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_rebuild(*args: object, **kwargs: object) -> Path:
        raise AssertionError("the cached model was rebuilt")

    monkeypatch.setattr(tiny_model, "build_tiny_model", no_rebuild)
    monkeypatch.setenv(tiny_model.CACHE_ENV, str(model_dir.parent))
    assert tiny_model_path(0, trained=False) == model_dir


def test_concurrent_builds_leave_one_complete_model_and_no_staging(tmp_path: Path) -> None:
    target = tmp_path / "model"
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(build_tiny_model(target, 0, recipe=None)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [target, target]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file()


# `python -m programs.offline.model --untrained` with one of the module's functions (argv[1]) wrapped: the
# wrapper notes each call in a file (argv[2]), then waits for a gate file (argv[3]) before going on.
HOOKED_CLI = """
import sys, time
from pathlib import Path
from programs.offline import model

name, calls, gate = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
real = getattr(model, name)

def hooked(*args, **kwargs):
    with calls.open("a") as f:
        f.write(name + "\\n")
    while not gate.exists():
        time.sleep(0.05)
    return real(*args, **kwargs)

setattr(model, name, hooked)
model.main(["--untrained"])
"""


def start_cli(hook: str, calls: Path, gate: Path, cache: Path, stderr: Path) -> subprocess.Popen:
    repo = Path(tiny_model.__file__).parents[2]  # run the code under test, wherever it is checked out
    env = {**os.environ, tiny_model.CACHE_ENV: str(cache)}
    with stderr.open("w") as err:
        return subprocess.Popen(
            [sys.executable, "-c", HOOKED_CLI, hook, str(calls), str(gate)],
            cwd=repo,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )


def wait_until(condition: Callable[[], bool], what: str, limit_s: float = 300) -> None:
    """Poll `condition`; the limit only turns a hang into a failure, no result depends on it."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def staging_folders(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.glob(".qwen3-tiny-*"))


def test_two_processes_building_the_same_model_build_it_once(tmp_path: Path) -> None:
    cache, calls, gate = tmp_path / "cache", tmp_path / "builds", tmp_path / "gate"
    first = start_cli("build_tiny_model", calls, gate, cache, tmp_path / "first.err")
    try:
        wait_until(lambda: lines(calls) == ["build_tiny_model"], "the first process to start building")
        second = start_cli("build_tiny_model", calls, gate, cache, tmp_path / "second.err")
        try:
            # The first build is held open until the second process has either queued behind it or started a
            # build of its own: whichever it does, the overlap is certain, not a matter of timing.
            wait_until(
                lambda: (
                    "Waiting for another process" in (tmp_path / "second.err").read_text()
                    or len(lines(calls)) > 1
                ),
                "the second process to wait or to build",
            )
            gate.touch()
            outputs = [first.communicate(timeout=300)[0], second.communicate(timeout=300)[0]]
        finally:
            second.kill()
    finally:
        first.kill()
    assert [first.returncode, second.returncode] == [0, 0], (tmp_path / "second.err").read_text()
    assert lines(calls) == ["build_tiny_model"]  # the second process reused the first one's model
    (model,) = {Path(out.strip()) for out in outputs}
    assert (model / "config.json").is_file() and model.parent == cache
    assert staging_folders(cache) == []


def test_sigterm_during_a_build_leaves_no_staging_folder(tmp_path: Path) -> None:
    cache, calls = tmp_path / "cache", tmp_path / "calls"
    # The build stops in its first step, inside its staging folder, until it is killed (there is no gate).
    cli = start_cli("build_tokenizer", calls, tmp_path / "no-gate", cache, tmp_path / "cli.err")
    try:
        wait_until(lambda: lines(calls) == ["build_tokenizer"], "the build to start")
        assert len(staging_folders(cache)) == 1
        cli.send_signal(signal.SIGTERM)
        cli.wait(timeout=120)
    finally:
        cli.kill()
    assert cli.returncode == -signal.SIGTERM, (tmp_path / "cli.err").read_text()  # still ends as killed
    assert staging_folders(cache) == []


def test_a_build_removes_the_staging_folders_of_builders_that_died(tmp_path: Path) -> None:
    stale = tmp_path / f".{build_key(0, recipe=None)}.x1y2z3"  # as SIGKILL leaves one, mid-build
    stale.mkdir()
    (stale / "tokenizer.json").write_text("{}")
    other = tmp_path / f".{build_key(1, recipe=None)}.a4b5c6"  # another entry's: not this build's business
    other.mkdir()
    model = tiny_model_path(0, root=tmp_path, trained=False)
    assert (model / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.glob(".*")) == [other.name]


def test_bad_seed_and_missing_corpus_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seed must be >= 0"):
        tiny_model_path(-1, root=tmp_path)
    with pytest.raises(FileNotFoundError, match="no \\*.jsonl files"):
        build_tiny_model(tmp_path / "model", 0, corpus_dir=tmp_path / "empty")
    assert list(tmp_path.iterdir()) == []


SHORT = TrainRecipe(steps=4, batch_tokens=512, warmup_steps=0, length_pool=32)


def test_training_is_seeded_and_lowers_the_loss(tokenizer) -> None:
    config = build_config(tokenizer)
    first, losses = train(init_weights(config, 0), tokenizer, 0, SHORT)
    again, same_losses = train(init_weights(config, 0), tokenizer, 0, SHORT)
    _, other_losses = train(init_weights(config, 1), tokenizer, 1, SHORT)
    assert losses == same_losses != other_losses and len(losses) == SHORT.steps
    for (name, weight), (_, same) in zip(first.state_dict().items(), again.state_dict().items(), strict=True):
        assert weight.dtype == same.dtype and weight.equal(same), name
    assert losses[-1] < losses[0] - 0.5


def test_the_recipe_names_the_cache_entry() -> None:
    trained, untrained = build_key(0), build_key(0, recipe=None)
    assert trained.startswith("qwen3-tiny-arith-seed0-") and untrained.startswith("qwen3-tiny-random-seed0-")
    assert len({trained, untrained, build_key(0, replace(RECIPE, steps=RECIPE.steps + 1)), build_key(1)}) == 4
    with pytest.raises(ValueError, match="must be positive"):
        TrainRecipe(steps=0)


def test_the_default_model_is_the_trained_one(tiny_model: Path) -> None:
    assert tiny_model.name == build_key(0)
    record = json.loads((tiny_model / "training.json").read_text())
    assert record["seed"] == 0 and record["recipe"] == json.loads(json.dumps(asdict(RECIPE)))
    losses = record["losses"]
    assert len(losses) == RECIPE.steps and sum(losses[-50:]) / 50 < 0.5 < losses[0]
