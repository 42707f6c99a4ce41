"""Table 1 of the paper from a protocol run's samples: per-problem scores, per-dataset rows, their average, the
table itself and the accuracy (and cost) plots. Everything here reads data; nothing runs an engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

from rich.table import Table

from benchmarks.cost import CURRENCY, model_key
from programs.core.metrics import ProblemScore, aggregate, cons_at_n, pass_at_k, score_problem

ACCURACY_PNG, COST_PNG = "accuracy_vs_n.png", "cost_vs_accuracy.png"
PER_N = ("cons", "pass", "a2r")  # Table 1's columns for each N, after Pass@1


@dataclass(frozen=True)
class ProblemRuns:
    """One problem's samples under the protocol, as the metrics need them."""

    gold: str
    answers: list[list[str | None]]  # per run, its maxN explorer answers in path order
    a2r: dict[int, list[bool]]  # per N, the synthesizer's correctness in each run


def problem_score(problem: ProblemRuns, ns: list[int]) -> ProblemScore:
    """One problem's Pass@1 and, per N, Cons@N, Pass@N and A2R@N, as fractions."""
    max_n, everything = max(ns), [a for run in problem.answers for a in run]
    if any(len(run) != max_n for run in problem.answers):
        raise ValueError(
            f"every run needs max(ns) = {max_n} answers, got {[len(r) for r in problem.answers]}"
        )
    # At maxN the consecutive groups are exactly the runs, so score_problem gives Cons@maxN per run.
    score = score_problem(problem.gold, everything, max_n)
    correct = round(score.metrics["pass@1"] * len(everything))  # pass@1 is correct / k
    for n in ns:
        if n != max_n:
            at_n = [a for run in problem.answers for a in run[:n]]
            score = score.with_metric(f"cons@{n}", cons_at_n(problem.gold, at_n, n))
            if n != 1:  # pass@1 is already there
                score = score.with_metric(f"pass@{n}", pass_at_k(len(everything), correct, n))
        score = score.with_metric(f"a2r@{n}", mean(problem.a2r[n]))
    return score


def dataset_metrics(problems: list[ProblemRuns], ns: list[int]) -> dict[str, float | int]:
    """Table 1's numbers for one dataset, in percent, with its problem and sample counts."""
    summary = aggregate([problem_score(p, ns) for p in problems]).as_dict()
    keys = ["pass@1", *(f"{m}@{n}" for n in sorted(ns) for m in PER_N), "problems", "samples", "no_answer"]
    return {key: summary[key] for key in keys}


def average(rows: dict[str, dict[str, float | int]]) -> dict[str, float | int]:
    """Each metric's mean over datasets (equal weight), counts summed."""
    values = list(rows.values())
    return {key: (mean if "@" in key else sum)([row[key] for row in values]) for key in values[0]}


def model_label(config: dict[str, Any]) -> str:
    explorer, synthesizer = model_key(config["explorer_model"]), model_key(config["synthesizer_model"])
    return explorer if explorer == synthesizer else f"{explorer} -> {synthesizer}"


def table1(summary: dict[str, Any]) -> Table:
    """Table 1's layout: a row per dataset and model, Pass@1, then Cons@N, Pass@N and A2R per N."""
    ns, config = summary["protocol"]["ns"], summary["config"]
    table = Table(title=f"Accuracy (%), mean of {summary['protocol']['runs']} runs")
    for name in ("dataset", "model", "Pass@1", *(f"{m}@{n}" for n in ns for m in ("Cons", "Pass", "A2R"))):
        table.add_column(name, justify="left" if name in ("dataset", "model") else "right")
    rows = {**summary["datasets"], "Average": summary["average"]}
    for dataset, row in rows.items():
        values = [row["pass@1"], *(row[f"{m}@{n}"] for n in ns for m in PER_N)]
        table.add_row(dataset, model_label(config), *(f"{v:.2f}" for v in values))
    return table


def save_plot(
    path: Path, title: str, xlabel: str, series: dict[str, tuple[list, list]], ns: list[int]
) -> None:
    """Accuracy (y, within 0-100) per named series; x is N itself, or else each point is labelled with N."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x_is_n = all(xs == ns for xs, _ in series.values())
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=label)
        for n, x, y in () if x_is_n else zip(ns, xs, ys, strict=True):
            ax.annotate(f"N={n}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ys = [y for _, values in series.values() for y in values]
    ax.set(xlabel=xlabel, ylabel="accuracy (%), mean over datasets", title=title)
    ax.set_ylim(max(0.0, min(ys) - 5) - 1, min(100.0, max(ys) + 5) + 1)  # points at 0 or 100 stay visible
    if x_is_n:
        ax.set_xticks(ns)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(summary: dict[str, Any], output: Path) -> None:
    """accuracy_vs_n.png and, when priced, cost_vs_accuracy.png, from the summary alone."""
    ns, avg, cost = summary["protocol"]["ns"], summary["average"], summary["cost"].get("average")
    title = f"{model_label(summary['config'])} on {', '.join(summary['datasets'])}"
    by_n = {"Pass@1": (ns, [avg["pass@1"]] * len(ns))}
    by_n |= {f"{m}@N": (ns, [avg[f"{m.lower()}@{n}"] for n in ns]) for m in ("Cons", "Pass", "A2R")}
    save_plot(output / ACCURACY_PNG, title, "N (explorer paths)", by_n, ns)
    if cost:
        by_cost = {
            f"{m}@N": ([cost[f"{m.lower()}@{n}"] for n in ns], [avg[f"{m.lower()}@{n}"] for n in ns])
            for m in ("Cons", "A2R")
        }
        save_plot(output / COST_PNG, title, f"cost per problem ({CURRENCY})", by_cost, ns)
