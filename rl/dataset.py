"""Build the synthesizer's GRPO prompts from curated explorer candidates (`rl.curate`).

    python -m rl.dataset --curated data/rl/curated --output data/rl/train.jsonl [--n 4] [--epochs 3] [--seed 0]

For each kept query and epoch, N references are drawn from the query's valid candidates: first how many of
them are correct (uniformly over what the candidates allow, so the synthesizer sees all-wrong, mixed and
all-right reference sets), then which ones, avoiding a set the query already had in an earlier epoch when
another is possible, in shuffled order. The user turn is rendered by `programs.core.prompts.synthesizer_query`,
the template the inference program sends. A prompt whose chat rendering is longer than the trainer's
prompt budget (`GRPORecipe.prompt_max_len`) is dropped and counted, because OpenRLHF would cut it from the
left without a word. Rows carry `prompt` and `answer` (the keys `rl/train.py` passes to OpenRLHF) plus
their provenance; draws depend only on the seed, the query id and the epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from programs.core.prompts import chat_prompt, synthesizer_query
from programs.datasets import DatasetError, read_jsonl
from rl.curate import RECORDS
from rl.recipe import GRPORecipe

DRAW_TRIES = 32  # redraws spent looking for a reference set the query has not had yet


def draw_references(
    candidates: list[dict[str, Any]], n: int, rng: random.Random, seen: set[frozenset]
) -> list[int]:
    """Indices of up to `n` candidates in prompt order: a uniformly drawn number of correct ones, the rest
    wrong, preferring a set not in `seen` (which is updated)."""
    right = [i for i, c in enumerate(candidates) if c["correct"]]
    wrong = [i for i, c in enumerate(candidates) if not c["correct"]]
    size = min(n, len(candidates))
    low, high = max(0, size - len(wrong)), min(size, len(right))
    for _ in range(DRAW_TRIES):
        k = rng.randint(low, high)
        chosen = rng.sample(right, k) + rng.sample(wrong, size - k)
        if frozenset(chosen) not in seen:
            break
    seen.add(frozenset(chosen))
    rng.shuffle(chosen)
    return chosen


def query_rows(record: dict[str, Any], n: int, epochs: int, seed: int) -> list[dict[str, Any]]:
    """One row per epoch for a curated query; the draws are seeded by (seed, query id) only."""
    rng = random.Random(f"{seed}/{record['id']}")
    seen: set[frozenset] = set()
    rows = []
    for epoch in range(epochs):
        chosen = draw_references(record["candidates"], n, rng, seen)
        refs = [record["candidates"][i] for i in chosen]
        rows.append(
            {
                "prompt": synthesizer_query(record["problem"], [c["answer_part"] for c in refs]),
                "answer": record["gold"],
                "id": record["id"],
                "epoch": epoch,
                "references": chosen,  # indices into the query's curated candidates
                "correct_references": sum(bool(c["correct"]) for c in refs),
            }
        )
    return rows


@dataclass
class BuildStats:
    queries: int
    rows: int  # written
    too_long: int  # dropped: longer than the prompt budget
    short_of_n: int  # written with fewer than n references (the query had fewer valid candidates)
    correct_mix: dict[int, int]  # correct references per written row -> rows


def build_rows(
    records: list[dict[str, Any]], tokenizer: Any, n: int, epochs: int, seed: int, max_prompt_tokens: int
) -> tuple[list[dict[str, Any]], BuildStats]:
    """Rows for every kept query, epoch-major, without those whose chat-rendered prompt exceeds the budget.

    The length is counted as OpenRLHF counts it: the chat template applied to the user turn with the
    generation prompt and the model's default thinking mode, tokenized without added special tokens.
    """
    kept = [r for r in records if r["kept"] and r["candidates"]]
    per_query = [query_rows(r, n, epochs, seed) for r in kept]
    rows, too_long = [], 0
    for epoch in range(epochs):
        for query in per_query:
            row = query[epoch]
            length = len(tokenizer.encode(chat_prompt(tokenizer, row["prompt"]), add_special_tokens=False))
            if length > max_prompt_tokens:
                too_long += 1
            else:
                rows.append(row)
    stats = BuildStats(
        queries=len(kept),
        rows=len(rows),
        too_long=too_long,
        short_of_n=sum(len(r["references"]) < n for r in rows),
        correct_mix=dict(sorted(Counter(r["correct_references"] for r in rows).items())),
    )
    return rows, stats


def load_curated(folder: Path) -> list[dict[str, Any]]:
    path = folder / RECORDS
    if not path.is_file():
        raise DatasetError(f"{path}: no such file (run `python -m rl.curate --output {folder}` first)")
    records = []
    for lineno, row in read_jsonl(path):
        missing = {"id", "problem", "gold", "kept", "candidates"} - set(row)
        if missing:
            raise DatasetError(f"{path}:{lineno}: not a curated query (missing {', '.join(sorted(missing))})")
        records.append(row)
    return records


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    """Written beside the target and renamed into place, so a reader never sees half a dataset."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(staging, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    recipe = GRPORecipe()
    parser = argparse.ArgumentParser(prog="python -m rl.dataset", description=__doc__.split("\n\n")[0])
    parser.add_argument("--curated", type=Path, required=True, help="folder written by `python -m rl.curate`")
    parser.add_argument("--output", type=Path, required=True, help="prompt/answer JSONL for rl/train.py")
    parser.add_argument("--n", type=int, default=4, help="references per prompt")
    parser.add_argument("--epochs", type=int, default=1, help="prompts per query, each with its own draw")
    parser.add_argument("--seed", type=int, default=0, help="seeds every draw")
    parser.add_argument(
        "--model", default=recipe.model, help="the synthesizer to train (its tokenizer counts)"
    )
    parser.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=recipe.prompt_max_len,
        help="drop longer chat-rendered prompts (default: the recipe's max_len - max_new_tokens)",
    )
    args = parser.parse_args(argv)
    for name in ("n", "epochs", "max_prompt_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        records = load_curated(args.curated)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    except OSError as exc:  # transformers' way of saying: no such local path, and the hub is out of reach
        print(
            f"error: cannot load the tokenizer of --model {args.model}: {str(exc).splitlines()[0]}\n"
            "Give a local model folder or a reachable hub id; offline, the project's synthesizer is "
            "--model $(python -m programs.offline.model --role synthesizer)",
            file=sys.stderr,
        )
        return 2
    rows, stats = build_rows(records, tokenizer, args.n, args.epochs, args.seed, args.max_prompt_tokens)
    if not rows:
        print(
            f"error: no training prompts: {stats.queries} of {len(records)} curated queries were kept "
            f"(see {args.curated / 'summary.json'}) and {stats.too_long} prompts were over "
            f"{args.max_prompt_tokens} tokens; {args.output} was not written",
            file=sys.stderr,
        )
        return 1
    write_jsonl(rows, args.output)
    print(
        f"{stats.queries} kept queries of {len(records)} x {args.epochs} epochs: wrote {stats.rows} prompts to "
        f"{args.output}\ndropped {stats.too_long} prompts longer than {args.max_prompt_tokens} tokens "
        f"(OpenRLHF would cut them from the left)\n"
        f"correct references per prompt (of {args.n}): {stats.correct_mix}; "
        f"{stats.short_of_n} prompts have fewer than {args.n} references"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
