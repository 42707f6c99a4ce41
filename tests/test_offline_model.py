"""The offline models' builder: a seeded pair (a small explorer and the synthesizer grown from it), named by
what shapes it, with a tokenizer and chat template shaped like Qwen3's, and a seeded training step (its cache
is tested in test_offline_cache.py).

Random-weight builds (seconds) stand in wherever the weights do not matter; the trained default is the
session's `offline_pair`, built once per cache."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from programs.offline.model import (
    OfflineModels,
    build_config,
    build_key,
    build_offline_models,
    grow,
    init_weights,
    offline_models,
)
from programs.offline.training import EXPLORER_RECIPE, SYNTHESIZER_RECIPE, TrainRecipe, train

QUESTION = [{"role": "user", "content": "What is 1+1?"}]
CHATML_PROMPT = "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> OfflineModels:
    return offline_models(0, root=tmp_path_factory.mktemp("cache"), trained=False)


@pytest.fixture(scope="module")
def model_dir(pair: OfflineModels) -> Path:
    return pair.explorer


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    return AutoTokenizer.from_pretrained(model_dir)


MODEL_FILES = ("model.safetensors", "tokenizer.json", "config.json", "generation_config.json")


def test_same_seed_builds_identical_files_in_separate_caches(pair: OfflineModels, tmp_path: Path) -> None:
    again = offline_models(0, root=tmp_path, trained=False)
    assert again != pair and again.explorer.parent.name == pair.explorer.parent.name
    for role in ("explorer", "synthesizer"):
        for name in MODEL_FILES:
            assert sha256(getattr(again, role) / name) == sha256(getattr(pair, role) / name), (role, name)


def test_other_seed_gives_other_weights_and_directory(pair: OfflineModels, tmp_path: Path) -> None:
    other = offline_models(1, root=tmp_path, trained=False)
    assert other.explorer.parent.name != pair.explorer.parent.name
    for role in ("explorer", "synthesizer"):
        mine, theirs = getattr(pair, role), getattr(other, role)
        assert sha256(theirs / "model.safetensors") != sha256(mine / "model.safetensors")
        assert sha256(theirs / "tokenizer.json") == sha256(mine / "tokenizer.json")


def test_the_synthesizer_is_the_explorer_deeper_with_the_same_tokenizer(pair: OfflineModels) -> None:
    explorer, synthesizer = (
        json.loads((p / "config.json").read_text()) for p in (pair.explorer, pair.synthesizer)
    )
    assert (explorer["num_hidden_layers"], synthesizer["num_hidden_layers"]) == (2, 4)
    depth = ("num_hidden_layers", "layer_types")  # one attention type per layer
    assert {k: v for k, v in explorer.items() if k not in depth} == {
        k: v for k, v in synthesizer.items() if k not in depth
    }
    assert sha256(pair.explorer / "tokenizer.json") == sha256(pair.synthesizer / "tokenizer.json")


def test_a_grown_model_starts_out_computing_what_the_small_one_does(tokenizer) -> None:
    import torch

    small = init_weights(build_config(tokenizer), seed=3).float()
    grown = grow(small, tokenizer, 4).float()
    assert grown.config.num_hidden_layers == 4
    ids = torch.tensor([tokenizer.encode("What is (3 + 4) * 2?", add_special_tokens=False)])
    assert torch.allclose(grown(ids).logits, small(ids).logits, atol=1e-5)
    with pytest.raises(ValueError, match="not a multiple"):
        grow(small, tokenizer, 3)


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


def test_bad_seed_and_missing_corpus_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seed must be >= 0"):
        offline_models(-1, root=tmp_path)
    with pytest.raises(FileNotFoundError, match="no \\*.jsonl files"):
        build_offline_models(tmp_path / "models", 0, corpus_dir=tmp_path / "empty")
    assert list(tmp_path.iterdir()) == []


SHORT = TrainRecipe(steps=4, short_steps=2, batch_tokens=512, warmup_steps=0, length_pool=32)


def test_training_is_seeded_and_lowers_the_loss(tokenizer) -> None:
    config = build_config(tokenizer)
    first, losses = train(init_weights(config, 0), tokenizer, 0, SHORT)
    again, same_losses = train(init_weights(config, 0), tokenizer, 0, SHORT)
    _, other_losses = train(init_weights(config, 1), tokenizer, 1, SHORT)
    assert losses == same_losses != other_losses and len(losses) == SHORT.steps
    for (name, weight), (_, same) in zip(first.state_dict().items(), again.state_dict().items(), strict=True):
        assert weight.dtype == same.dtype and weight.equal(same), name
    assert losses[-1] < losses[0] - 0.5


def test_the_build_is_named_by_seed_and_training() -> None:
    trained, untrained = build_key(0), build_key(0, trained=False)
    assert trained.startswith("qwen3-tiny-pair-seed0-") and untrained.startswith("qwen3-tiny-random-seed0-")
    assert len({trained, untrained, build_key(1)}) == 3
    with pytest.raises(ValueError, match="must be positive"):
        TrainRecipe(steps=0)
    with pytest.raises(ValueError, match="short_steps must be in"):
        TrainRecipe(steps=10, short_steps=11)


def test_the_default_pair_is_the_trained_one(offline_pair: OfflineModels) -> None:
    assert offline_pair.explorer.parent.name == build_key(0)
    for folder, recipe in (
        (offline_pair.explorer, EXPLORER_RECIPE),
        (offline_pair.synthesizer, SYNTHESIZER_RECIPE),
    ):
        record = json.loads((folder / "training.json").read_text())
        assert record["seed"] == 0 and record["recipe"] == json.loads(json.dumps(asdict(recipe)))
        losses = record["losses"]
        assert len(losses) == recipe.steps and sum(losses[-50:]) / 50 < 0.5, folder.name
    assert json.loads((offline_pair.explorer / "training.json").read_text())["losses"][0] > 2
