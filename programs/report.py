"""What a run's records add up to: accuracy (Pass@1, Cons@N, Pass@N, A2R@N), tokens and time, as data.

The summary is computed from records alone, so it can be rebuilt from any run folder.
"""

from __future__ import annotations

from statistics import mean
from typing import Any

from rich.table import Table

from programs.core.metrics import aggregate, score_problem


def accuracy(records: list[dict[str, Any]]) -> dict[str, float | int] | None:
    """Percentages over the records with a gold answer; None when no record has one."""
    graded = [r for r in records if r["gold"]]
    if not graded:
        return None
    scores = []
    for record in graded:
        n = len(record["paths"])
        score = score_problem(record["gold"], [p["answer"] for p in record["paths"]], n)
        if record["synthesizer"] is not None:
            score = score.with_metric(f"a2r@{n}", float(bool(record["synthesizer"]["correct"])))
        scores.append(score)
    return aggregate(scores).as_dict()


def run_summary(records: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    paths = [p for r in records for p in r["paths"]]
    synth = [r["synthesizer"] for r in records if r["synthesizer"]]
    prompted = sum(p["prompt_tokens"] for p in paths)
    return {
        "config": config,
        "problems": len(records),
        "accuracy": accuracy(records),
        "explorer": {
            "mean_prompt_tokens": mean(p["prompt_tokens"] for p in paths) if paths else 0,
            "mean_completion_tokens": mean(p["completion_tokens"] for p in paths) if paths else 0,
            "prefix_cache_hit_ratio": sum(p["cached_tokens"] for p in paths) / prompted if prompted else 0.0,
            "answer_part_fallbacks": sum(p["answer_part_fallback"] for p in paths),
        },
        "synthesizer": {
            "mean_prompt_tokens": mean(s["prompt_tokens"] for s in synth) if synth else 0,
            "mean_completion_tokens": mean(s["completion_tokens"] for s in synth) if synth else 0,
            "trimmed_prompts": sum(bool(s["trimmed_references"]) for s in synth),
        },
        "mean_seconds": {
            k: mean(r["timings"][k] for r in records) for k in ("explore_s", "synthesize_s", "total_s")
        }
        if records
        else {},
    }


def accuracy_table(summary: dict[str, Any]) -> Table:
    """A2R against self-consistency on this run, with the explorer's own single-sample and any-of-N rates."""
    n = summary["config"]["n"]
    table = Table(title=f"A2R vs self-consistency, N={n}, {summary['problems']} problems")
    table.add_column("method")
    table.add_column("accuracy %", justify="right")
    acc = summary["accuracy"]
    rows = [
        ("Pass@1 (one explorer sample)", "pass@1"),
        (f"Cons@{n} (self-consistency)", f"cons@{n}"),
        (f"A2R@{n} (synthesizer)", f"a2r@{n}"),
        (f"Pass@{n} (explorer upper bound)", f"pass@{n}"),
    ]
    for label, key in rows:
        value = acc.get(key) if acc else None
        table.add_row(label, "-" if value is None else f"{value:.2f}")
    return table
