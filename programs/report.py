"""What a run's records add up to: accuracy (Pass@1, Cons@N, Pass@N, A2R@N or RSA@N), tokens and time, as data.

The summary is computed from records alone, so it can be rebuilt from any run folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from programs.core.config import method_of
from programs.core.metrics import aggregate, score_problem
from programs.core.records import STAGES, ProblemRecord, usage


def accuracy(records: Sequence[ProblemRecord]) -> dict[str, float | int] | None:
    """Percentages over the records with a gold answer; None when no record has one. A path a policy stopped
    or filtered out counts as no answer."""
    graded = [r for r in records if r.gold]
    if not graded:
        return None
    scores = []
    for record in graded:
        n = len(record.paths)
        score = score_problem(record.gold, [p.vote for p in record.paths], n)
        if record.synthesizer is not None:
            name = f"{method_of(record.config)}@{n}"  # the method's final answer: a2r@N, rsa@N
            score = score.with_metric(name, float(bool(record.synthesizer.correct)))
        scores.append(score)
    return aggregate(scores).as_dict()


def run_summary(records: Sequence[ProblemRecord], config: dict[str, Any]) -> dict[str, Any]:
    """Accuracy, tokens and time over the solved problems; problems that failed alone are counted apart."""
    failed = [r.id for r in records if r.error]
    solved = [r for r in records if not r.error]
    used = usage(solved)

    def mean(total: float, count: int) -> float:
        return total / count if count else 0

    return {
        "config": config,
        "problems": len(solved),
        "failed": len(failed),
        "failed_ids": failed,
        "accuracy": accuracy(solved),
        "explorer": {
            "mean_prompt_tokens": mean(used.explorer_prompt_tokens, used.paths),
            "mean_completion_tokens": mean(used.explorer_completion_tokens, used.paths),
            "mean_probe_tokens": mean(used.explorer_probe_tokens, used.paths),
            # What the explorer decoded per problem, probes included: the cost a stop policy saves.
            "tokens_per_problem": mean(
                used.explorer_completion_tokens + used.explorer_probe_tokens, len(solved)
            ),
            "prefix_cache_hit_ratio": used.prefix_cache_hit_ratio,
            "answer_part_fallbacks": used.answer_part_fallbacks,
        },
        "synthesizer": {
            "calls_per_problem": mean(used.syntheses, len(solved)),  # M syntheses, or RSA's T x N
            "tokens_per_problem": mean(used.synthesizer_completion_tokens, len(solved)),
            "mean_prompt_tokens": mean(used.synthesizer_prompt_tokens, used.syntheses),
            "mean_completion_tokens": mean(used.synthesizer_completion_tokens, used.syntheses),
            "trimmed_prompts": used.trimmed_prompts,
        },
        "mean_seconds": {k: used.stage_seconds[k] / len(solved) for k in STAGES} if solved else {},
    }


def progress_line(records: Sequence[ProblemRecord], elapsed: float) -> str:
    """Throughput and prefix-cache reuse so far, from the engines' own token counts."""
    used = usage(records)
    return (
        f"explorer {used.explorer_completion_tokens / elapsed:,.0f} tok/s · "
        f"synthesizer {used.synthesizer_completion_tokens / elapsed:,.0f} tok/s · "
        f"prefix cache {used.prefix_cache_hit_ratio:.0%}"
    )


def run_table(summary: dict[str, Any]) -> Table:
    """A2R against self-consistency on this run, with the explorer's own single-sample and any-of-N rates."""
    config = summary["config"]
    n, method = config["n"], method_of(config)
    table = Table(title=f"{method.upper()} vs self-consistency, N={n}, {summary['problems']} problems")
    table.add_column("method")
    table.add_column("accuracy %", justify="right")
    acc = summary["accuracy"]
    rows = [
        ("Pass@1 (one explorer sample)", "pass@1"),
        (f"Cons@{n} (self-consistency)", f"cons@{n}"),
        (f"{method.upper()}@{n} ({synthesis_label(config)})", f"{method}@{n}"),
        (f"Pass@{n} (explorer upper bound)", f"pass@{n}"),
    ]
    for label, key in rows:
        value = acc.get(key) if acc else None
        table.add_row(label, "-" if value is None else f"{value:.2f}")
    return table


def synthesis_label(config: dict[str, Any]) -> str:
    """How a run's final answer was made, from its configuration (`RunConfig.to_dict()`)."""
    if method_of(config) == "rsa":
        return (
            f"vote of the last of {config['rounds']} rounds, {config['subset']} of {config['n']} aggregated"
        )
    syntheses = config.get("syntheses", 1)
    return f"vote of {syntheses} syntheses" if syntheses > 1 else "synthesizer"


def question_table(record: ProblemRecord) -> Table:
    """One question: each explorer path's answer, the vote, and the synthesizer's final answer."""
    table = Table(title=f"A2R on one question, N={len(record.paths)}")
    table.add_column("")
    table.add_column("answer", justify="right")
    table.add_column("tokens", justify="right")
    for i, path in enumerate(record.paths, start=1):
        table.add_row(f"explorer path {i}", Text(str(path.answer)), str(path.completion_tokens))
    table.add_row("self-consistency", Text(str(record.self_consistency["answer"])), "")
    if record.synthesizer:
        table.add_row(
            f"{method_of(record.config).upper()} ({synthesis_label(record.config)})",
            Text(str(record.synthesizer.answer)),
            str(record.synthesizer.completion_tokens),
        )
    return table
