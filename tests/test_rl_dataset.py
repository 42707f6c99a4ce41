"""`rl.dataset` on small hand-built curated data: draws, epochs, determinism, the prompt budget, the CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from openrlhf.datasets.prompts_dataset import preprocess_data
from transformers import AutoTokenizer

from programs.core.prompts import chat_prompt, synthesizer_query
from rl.curate import RECORDS, KeepRule, curated_record
from rl.dataset import build_rows, draw_references, main, query_rows


def curated(query_id: str, answers: list[str], gold: str = "4", part_words: int = 3) -> dict:
    """A curated line made by `rl.curate` itself from explorer path records with these boxed answers."""
    paths = [
        {
            "answer_part": f"{' '.join(['step'] * part_words)} {i} \\boxed{{{a}}}",
            "answer_part_fallback": False,
            "completion_tokens": 9,
            "finish_reason": "stop",
            "seed": i,
            "answer": a,
            "correct": a == gold,
        }
        for i, a in enumerate(answers)
    ]
    problem = {
        "id": query_id,
        "problem": f"Question {query_id}?",
        "gold": gold,
        "config": {},
        "paths": paths,
        "timings": {},
    }
    return curated_record(problem, KeepRule(), thinking=True)


MIXED = curated("mixed", ["4", "4", "4", "4", "5", "6", "7", "8"])


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def test_draws_are_distinct_shuffled_and_vary_in_mix():
    rng, seen = random.Random(0), set()
    draws = [draw_references(MIXED["candidates"], 4, rng, seen) for _ in range(40)]
    assert all(len(d) == 4 == len(set(d)) for d in draws)
    assert len({frozenset(d) for d in draws}) == 40  # 70 possible sets: no epoch repeats another's
    assert any(d != sorted(d) for d in draws)  # order is shuffled, not candidate order
    mix = {sum(MIXED["candidates"][i]["correct"] for i in d) for d in draws}
    assert mix == {0, 1, 2, 3, 4}  # all-wrong, mixed and all-right reference sets all occur


def test_draws_use_what_there_is_and_repeat_only_when_they_must():
    few = curated("few", ["4", "5"])["candidates"]
    rng, seen = random.Random(0), set()
    assert sorted(draw_references(few, 4, rng, seen)) == [0, 1]
    assert sorted(draw_references(few, 4, rng, seen)) == [0, 1]  # the only set there is


def test_rows_render_the_inference_template_with_the_drawn_references():
    rows = query_rows(MIXED, n=4, epochs=3, seed=7)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert len({frozenset(r["references"]) for r in rows}) == 3  # a different subset each epoch
    for row in rows:
        parts = [MIXED["candidates"][i]["answer_part"] for i in row["references"]]
        assert row["prompt"] == synthesizer_query("Question mixed?", parts)
        assert row["answer"] == "4" and row["id"] == "mixed"
        assert row["correct_references"] == sum(MIXED["candidates"][i]["correct"] for i in row["references"])


def test_rows_depend_on_the_seed_query_and_epoch_only(tokenizer):
    other = curated("other", ["4", "5", "5"])
    rows, _ = build_rows([MIXED, other], tokenizer, 4, 3, seed=1, max_prompt_tokens=4096)
    again, _ = build_rows([other, MIXED], tokenizer, 4, 3, seed=1, max_prompt_tokens=4096)
    assert sorted(map(json.dumps, rows)) == sorted(map(json.dumps, again))  # query order does not matter
    assert [r["id"] for r in rows] == ["mixed", "other"] * 3  # epoch-major
    reseeded, _ = build_rows([MIXED, other], tokenizer, 4, 3, seed=2, max_prompt_tokens=4096)
    assert [r["references"] for r in reseeded] != [r["references"] for r in rows]


def test_prompts_over_the_budget_are_dropped_and_counted(tokenizer):
    long = curated("long", ["4", "5", "6", "4"], part_words=300)
    dropped = curated("dropped", ["4", "4"])
    dropped["kept"] = False
    budget = max(
        len(tokenizer.encode(chat_prompt(tokenizer, r["prompt"]), add_special_tokens=False))
        for r in query_rows(MIXED, 4, 2, seed=0)
    )
    rows, stats = build_rows([MIXED, long, dropped], tokenizer, 4, 2, seed=0, max_prompt_tokens=budget)
    assert [r["id"] for r in rows] == ["mixed", "mixed"]  # not kept: never drawn; too long: dropped
    assert stats.queries == 2 and stats.rows == 2 and stats.too_long == 2
    assert sum(stats.correct_mix.values()) == 2


def test_cli_writes_what_openrlhf_reads(tiny_model, tokenizer, tmp_path, capsys):
    folder = tmp_path / "curated"
    folder.mkdir()
    records = [MIXED, curated("few", ["4", "5"]), curated("long", ["4", "5"], part_words=900)]
    (folder / RECORDS).write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "train.jsonl"
    argv = ["--curated", str(folder), "--output", str(out), "--epochs", "2", "--model", str(tiny_model)]
    assert main([*argv, "--max-prompt-tokens", "600"]) == 0
    printed = capsys.readouterr().out
    assert "dropped 2 prompts longer than 600 tokens" in printed
    assert "2 prompts have fewer than 4 references" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["mixed", "few", "mixed", "few"]
    for row in rows:
        # OpenRLHF's own preprocessing, with the keys rl/train.py passes, sees the prompt that was measured.
        prompt, label = preprocess_data(row, None, "prompt", "answer", tokenizer.apply_chat_template)
        assert prompt == chat_prompt(tokenizer, row["prompt"]) and label == "4"
        assert len(tokenizer.encode(prompt, add_special_tokens=False)) <= 600


def test_cli_names_a_missing_curation_and_an_empty_result(tiny_model, tmp_path, capsys):
    assert main(["--curated", str(tmp_path), "--output", str(tmp_path / "t.jsonl")]) == 2
    assert f"{Path(tmp_path) / RECORDS}: no such file" in capsys.readouterr().err
    hopeless = curated("hopeless", ["5", "6"])
    assert not hopeless["kept"]
    (tmp_path / RECORDS).write_text(json.dumps(hopeless) + "\n")
    argv = ["--curated", str(tmp_path), "--output", str(tmp_path / "t.jsonl"), "--model", str(tiny_model)]
    assert main(argv) == 1
    assert "no training prompts: 0 of 1 curated queries were kept" in capsys.readouterr().err
    assert not (tmp_path / "t.jsonl").exists()


def test_cli_names_a_model_it_cannot_load(tmp_path, capsys):
    (tmp_path / RECORDS).write_text(json.dumps(curated("q", ["4", "5"])) + "\n")
    missing = tmp_path / "no-such-model"
    argv = ["--curated", str(tmp_path), "--output", str(tmp_path / "t.jsonl"), "--model", str(missing)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        f"cannot load the tokenizer of --model {missing}" in err and "python -m programs.offline.model" in err
    )
    assert not (tmp_path / "t.jsonl").exists()
