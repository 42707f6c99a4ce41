"""The table of every stop policy at N=8, 16 and 64 over trace stores, how `settled` was tuned, and the plot.

    python -m benchmarks.adaptive --traces ../shared/data/traces --output docs

Replays each policy of `POLICIES` on each trace store in DIR (`benchmarks.traces`), on the held-out stores
together and on all of them, with `benchmarks.adaptive.evaluate`. `settled`'s defaults are chosen on the
tuning stores only (`TUNE_ON`) by `TUNING_RULE`; the stores outside them are reported, never looked at while
choosing. Writes OUTPUT/adaptive_table.json (every figure, with the grid and the choice), .md and the
Pareto plot OUTPUT/adaptive_pareto.png (explorer tokens against Cons@N). Replay only: no engine.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.progress import Progress

from benchmarks.replay import evaluate, replay_traces, summarize
from benchmarks.score import ScoreInputError
from benchmarks.traces import Trace, read_file
from programs.cli import console
from programs.core.stopping import SETTLED, StopPolicy

NS = (8, 16, 64)
POLICIES = (
    "majority",
    "agree:3",
    "first:4",
    "posterior",
    "posterior:0.1,probe=500,stable=3",
    "agree:3,wave=4",
    "settled:probe=500,stable=8",
    "settled",
)
TUNE_ON = ("0.6B", "1.7B")  # stores whose name holds one of these choose settled's defaults
TUNE_NS = (16, 64)
GRID = {"wave": (2, 3, 4, 5, 6, 8), "eps": (0.1, 0.15, 0.2, 0.25)}
TUNING_RULE = (
    "among the (wave, eps) whose Cons@N change, averaged over the tuning stores, is within 1 point at each "
    "tuning N, keep those within 2 points of the largest mean saving and take the one whose answer comes "
    "soonest (mean time to answer)"
)
STEM = "adaptive_table"
PNG = "adaptive_pareto.png"


def load(traces_dir: Path) -> dict[str, list[Trace]]:
    """Each trace store in `traces_dir` by model name (the file name before its first '-aime' or '.')."""
    files = sorted(p for p in traces_dir.glob("*.json*") if p.name.endswith((".json", ".json.gz")))
    if not files:
        raise ScoreInputError(f"{traces_dir}: no trace stores (*.json or *.json.gz)")
    stores = {}
    for path in files:
        name = path.name.split(".json")[0].removesuffix("-aime24")
        stores[name] = [t.grouped() for t in read_file(path)]
    return stores


def tune(stores: dict[str, list[Trace]]) -> dict[str, Any]:
    """The grid of `GRID` on the tuning stores, and the (wave, eps) `TUNING_RULE` picks."""
    tuning = [name for name in stores if any(key in name for key in TUNE_ON)]
    if not tuning:
        return {"stores": [], "rule": TUNING_RULE, "grid": [], "chosen": None, "defaults": SETTLED}
    grid = []
    for wave in GRID["wave"]:
        for eps in GRID["eps"]:
            policy = StopPolicy.parse(f"settled:wave={wave},eps={eps}")
            row: dict[str, Any] = {"wave": wave, "eps": eps}
            for n in TUNE_NS:
                runs = [evaluate(stores[name], policy, n=n, resamples=1) for name in tuning]
                row[f"saved@{n}"] = sum(r["saved_percent"] for r in runs) / len(runs)
                row[f"cons_change@{n}"] = sum(r["cons_after"] - r["cons_before"] for r in runs) / len(runs)
                row[f"time@{n}"] = sum(r["time_to_answer_percent"] for r in runs) / len(runs)
            grid.append(row)
    return {"stores": tuning, "rule": TUNING_RULE, "grid": grid, "chosen": choose(grid), "defaults": SETTLED}


def choose(grid: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The grid row `TUNING_RULE` picks; None when no row keeps Cons@N within a point."""

    def mean(row: dict[str, Any], key: str) -> float:
        return sum(row[f"{key}@{n}"] for n in TUNE_NS) / len(TUNE_NS)

    feasible = [r for r in grid if all(abs(r[f"cons_change@{n}"]) <= 1.0 for n in TUNE_NS)]
    if not feasible:
        return None
    best = max(mean(r, "saved") for r in feasible)
    return min((r for r in feasible if mean(r, "saved") >= best - 2.0), key=lambda r: mean(r, "time"))


def write_table(traces_dir: Path, output: Path, probe_tokens: int) -> int:
    started = time.perf_counter()
    try:
        stores = load(traces_dir)
    except ScoreInputError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False)
        return 2
    tuning = tune(stores)
    held_out = [name for name in stores if name not in tuning["stores"]]
    members = {name: [name] for name in stores}  # each row's traces, as the stores they come from
    if held_out and tuning["stores"]:
        members["held-out (" + ", ".join(held_out) + ")"] = held_out
    if len(stores) > 1:
        members["all"] = list(stores)
    found = {}
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("replaying", total=len(stores) * len(NS) * len(POLICIES))
        for n in NS:
            for spec in POLICIES:
                replayed = {}  # each store once: the held-out and "all" rows add up the same groups
                for name, traces in stores.items():
                    replayed[name] = replay_traces(
                        traces, StopPolicy.parse(spec), n=n, probe_tokens=probe_tokens
                    )
                    bar.advance(task)
                for row, names in members.items():
                    traces = [t for name in names for t in stores[name]]
                    result = summarize(traces, [g for name in names for g in replayed[name]], n, probe_tokens)
                    found[row, n, spec] = {"traces": row, "n": n, "policy": spec, **result}
    rows = [found[row, n, spec] for row in members for n in NS for spec in POLICIES]
    output.mkdir(parents=True, exist_ok=True)
    summary = {
        "stores": list(stores),
        "probe_tokens_each": probe_tokens,
        "tuning": tuning,
        "held_out": held_out,
        "rows": rows,
    }
    (output / f"{STEM}.json").write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    (output / f"{STEM}.md").write_text(markdown(summary))
    plot(rows, output / PNG)
    chosen = tuning["chosen"]
    if chosen and (chosen["wave"], chosen["eps"]) != (SETTLED["wave"], SETTLED["eps"]):
        console.print(
            f"[yellow]the tuning rule now picks wave={chosen['wave']}, eps={chosen['eps']}, "
            f"but settled's defaults are {SETTLED}[/]"
        )
    console.print(
        f"{len(rows)} replays in {time.perf_counter() - started:.0f} s: {output / STEM}.json, .md and "
        f"{output / PNG}",
        highlight=False,
    )
    return 0


def _ci(row: dict[str, Any], key: str) -> str:
    low, high = row[f"{key}_ci"]
    return f"{row[key]:.1f} [{low:.1f}, {high:.1f}]"


def markdown(summary: dict[str, Any]) -> str:
    """The table, one line per (traces, N, policy), and the tuning grid."""
    lines = [
        "| traces | N | policy | saved % [95% CI] | Cons@N full | Cons@N policy | changed (by ties) | waves "
        "| time to answer % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['traces']} | {r['n']} | `{r['policy']}` | {_ci(r, 'saved_percent')} | "
            f"{_ci(r, 'cons_before')} | {_ci(r, 'cons_after')} | {r['answers_changed']} "
            f"({r['cons_changes_from_ties']}) | {r['waves']:.2f} | {r['time_to_answer_percent']:.0f} |"
        )
    tuning = summary["tuning"]
    lines += ["", f"Tuning on {', '.join(tuning['stores'])}: {tuning['rule']}.", ""]
    keys = [f"{key}@{n}" for n in TUNE_NS for key in ("saved", "cons_change", "time")]
    lines += ["| wave | eps | " + " | ".join(keys) + " |", "|---" * (2 + len(keys)) + "|"]
    for r in tuning["grid"]:
        mark = " **chosen**" if r == tuning["chosen"] else ""
        cells = " | ".join(f"{r[k]:+.2f}" if "change" in k else f"{r[k]:.1f}" for k in keys)
        lines.append(f"| {r['wave']} | {r['eps']}{mark} | {cells} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Explorer tokens (% of the full run) against Cons@N, one panel per N, on all stores together."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    pooled = "all" if any(r["traces"] == "all" for r in rows) else rows[0]["traces"]
    fig, axes = plt.subplots(1, len(NS), figsize=(5.2 * len(NS), 4.4), sharey=True)
    for ax, n in zip(axes, NS, strict=True):
        here = [r for r in rows if r["n"] == n and r["traces"] == pooled]
        full = here[0]["cons_before"]
        ax.scatter([100], [full], marker="*", s=120, color="black", label="full run")
        for r in here:
            low, high = r["cons_after_ci"]
            x = 100 - r["saved_percent"]
            ax.errorbar(
                x,
                r["cons_after"],
                yerr=[[r["cons_after"] - low], [high - r["cons_after"]]],
                fmt="o",
                capsize=2,
                alpha=0.8,
            )
            ax.annotate(
                r["policy"], (x, r["cons_after"]), fontsize=6, xytext=(3, 3), textcoords="offset points"
            )
        ax.axhline(full - 1, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"N={n}, {pooled} traces")
        ax.set_xlabel("explorer tokens, % of the full run (probes included)")
    axes[0].set_ylabel("Cons@N % (95% CI over problems)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
