"""Adaptive exploration measured live: every policy on the same problems and engines, what it saves and costs.

    python -m benchmarks.policies --n 8                      # CPU: the offline pair on 100 chain problems
    python -m benchmarks.policies --n 8 --policies full majority first:4 --dataset aime24

Each policy is one A2R run (`programs.a2r` with its flags) over the same problems, the engines started once
and the prefix cache flushed between policies. A policy is `full` (the paper's A2R), a `--stop` policy
(majority, agree:K, first:M), `confident:F` (`--keep-confident F`), `online:KEEP` (`--online-confidence
KEEP`), or several joined by `+` (majority+confident:0.5). `confident:1.0` keeps every path but asks for log-probabilities: against `full`
it prices them. Per policy the table gives explorer tokens per problem (stopped paths' tokens included) and
the share saved against `full`, Pass@1, Cons@N and A2R@N (a stopped or filtered path counts as no answer),
the time from a problem's start to its final answer (p50, p95) and the explorer's tokens/s.
Records go to OUTPUT/POLICY.jsonl as problems finish, so a rerun resumes; OUTPUT/policies.json and
OUTPUT/accuracy_vs_tokens.png hold the figures.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress, TimeElapsedColumn
from rich.table import Table

from benchmarks.replay import evaluate
from benchmarks.traces import read_records
from engine.launch import serve
from programs import cli, planning
from programs.cli import console
from programs.core.config import RunConfig
from programs.core.jsonl import RecordFile, RecordsError
from programs.core.records import ProblemRecord, usage
from programs.core.stopping import StopPolicy
from programs.datasets import DatasetError, load_problems
from programs.engine_handle import EngineHandle
from programs.pipeline import Pipeline
from programs.report import accuracy

BASELINES = ("confident:1.0", "full")  # full-length runs to replay on, the first also with confidences
DEFAULT_POLICIES = ("full", "confident:1.0", "majority", "agree:3", "first:4", "confident:0.5", "online:0.9")
FRACTIONS = {"confident": "keep_confident", "online": "online_confidence"}  # policy name -> RunConfig field
PNG, SUMMARY = "accuracy_vs_tokens.png", "policies.json"


def policy_overrides(spec: str) -> dict[str, Any]:
    """The RunConfig fields a policy name sets."""
    overrides: dict[str, Any] = {"stop": None, **dict.fromkeys(FRACTIONS.values())}
    if spec == "full":
        return overrides
    for part in spec.split("+"):
        name, _, value = part.partition(":")
        if name in FRACTIONS:
            try:
                overrides[FRACTIONS[name]] = float(value)
            except ValueError:
                raise ValueError(f"policy {spec!r}: {name}:F needs a fraction, got {value!r}") from None
        else:
            overrides["stop"] = str(StopPolicy.parse(part))
    return overrides


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.policies", description=__doc__.split("\n")[0])
    run = parser.add_argument_group("run")
    run.add_argument("--n", type=int, default=8, help="explorer paths per problem")
    run.add_argument("--policies", nargs="+", default=list(DEFAULT_POLICIES), help="policies, in run order")
    run.add_argument(
        "--dataset", help="shipped name, a .jsonl/.parquet file, or hf:REPO (default: the profile's)"
    )
    run.add_argument("--limit", type=int, default=100, help="first LIMIT problems")
    run.add_argument(
        "--output", type=Path, help="folder for the results (default: runs/policies-<dataset>-n<N>)"
    )
    cli.add_engine_args(parser)
    cli.add_run_args(parser, skip=("stop", *FRACTIONS.values()))
    args = parser.parse_args(argv)
    cli.check_positive(parser, args, "n", "limit")
    if len(set(args.policies)) != len(args.policies):
        parser.error(f"--policies names a policy twice: {args.policies}")
    return args


def figures(records: list[ProblemRecord], fresh: list[ProblemRecord], wall_s: float) -> dict[str, Any]:
    """One policy's row: tokens (stopped paths included), accuracy, time to the final answer and, over the
    records this invocation made (`fresh`, in `wall_s`), the explorer's rate."""
    solved = [r for r in records if not r.error]
    used = usage(solved)
    total = [r.timings["total_s"] for r in solved]
    return {
        "problems": len(solved),
        "failed": len(records) - len(solved),
        "explorer_tokens_per_problem": used.explorer_completion_tokens / len(solved),
        "paths_kept_per_problem": sum(p.kept for r in solved for p in r.paths) / len(solved),
        "accuracy": accuracy(solved),
        "time_to_answer_p50_s": float(np.percentile(total, 50)),
        "time_to_answer_p95_s": float(np.percentile(total, 95)),
        "explorer_tokens_per_s": usage(fresh).explorer_completion_tokens / wall_s if fresh else None,
    }


def replay_on_baseline(
    configs: dict[str, RunConfig], files: dict[str, RecordFile], rows: dict[str, dict[str, Any]]
) -> str | None:
    """Replay every policy on the paths of one full-length run, so they compare on the same samples (live
    runs sample anew each time). The baseline is `confident:1.0` (full length, with confidences), else
    `full`; its name is returned, None when neither ran."""
    baseline = next((name for name in BASELINES if name in files), None)
    if baseline is None:
        return None
    traces = read_records(files[baseline].path)
    for name, config in configs.items():
        # The online stop needs per-token confidences, which records do not keep.
        if (
            name in BASELINES
            or config.online_confidence
            or (config.keep_confident and baseline != BASELINES[0])
        ):
            continue
        rows[name]["replay"] = evaluate(traces, config.stop_policy, config.keep_confident)
    return baseline


def table(rows: dict[str, dict[str, Any]], n: int) -> Table:
    full = rows.get("full", {}).get("explorer_tokens_per_problem")
    out = Table(title=f"adaptive exploration, N={n}, {next(iter(rows.values()))['problems']} problems")
    for column in (
        "policy",
        "explorer tok/problem",
        "saved %",
        "Pass@1",
        f"Cons@{n}",
        f"A2R@{n}",
        "answer p50 / p95 (s)",
        "explorer tok/s",
        "replay: saved %",
        f"replay: Cons@{n}",
    ):
        out.add_column(column, justify="left" if column == "policy" else "right")
    for name, row in rows.items():
        tokens, acc = row["explorer_tokens_per_problem"], row["accuracy"] or {}
        saved = f"{100 * (1 - tokens / full):.1f}" if full else "-"
        out.add_row(
            name,
            f"{tokens:,.0f}",
            saved,
            *(f"{acc.get(key, float('nan')):.1f}" for key in ("pass@1", f"cons@{n}", f"a2r@{n}")),
            f"{row['time_to_answer_p50_s']:.1f} / {row['time_to_answer_p95_s']:.1f}",
            "-" if row["explorer_tokens_per_s"] is None else f"{row['explorer_tokens_per_s']:,.0f}",
            *replay_cells(row.get("replay")),
        )
    return out


def replay_cells(replayed: dict[str, Any] | None) -> tuple[str, str]:
    if replayed is None:
        return "", ""
    return (
        f"{replayed['saved_percent']:.1f}",
        f"{replayed['cons_before']:.1f} -> {replayed['cons_after']:.1f}",
    )


def plot(rows: dict[str, dict[str, Any]], n: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for key, marker in ((f"cons@{n}", "o"), (f"a2r@{n}", "s")):
        xs = [row["explorer_tokens_per_problem"] for row in rows.values()]
        ys = [(row["accuracy"] or {}).get(key) for row in rows.values()]
        ax.scatter(xs, ys, marker=marker, label=key)
        for name, x, y in zip(rows, xs, ys, strict=True):
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("explorer tokens per problem (stopped paths included)")
    ax.set_ylabel("accuracy %")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run, parse_args(argv))


def run(args: argparse.Namespace) -> int:
    with cli.refusing(DatasetError, RecordsError, ValueError):
        profile, device = planning.profile_for(args)
        dataset = args.dataset or profile.datasets[0]
        problems = load_problems(dataset, args.limit)
        engines, base = planning.plan_run(args, profile, device)
        configs = {name: replace(base, **policy_overrides(name)) for name in args.policies}
        if any(config.online_confidence is not None for config in configs.values()):
            engines = planning.streamed_for_online(engines)
        output = args.output or cli.default_output(dataset, args.n, kind="policies")
        files = {
            name: RecordFile(output, config.to_dict(), console, name=f"{name.replace(':', '-')}.jsonl")
            for name, config in configs.items()
        }
        for records in files.values():
            records.check_problems((p.id, p) for p in problems)
    todo = {name: [p for p in problems if p.id not in records] for name, records in files.items()}
    walls: dict[str, float] = {}
    fresh: dict[str, list[ProblemRecord]] = {name: [] for name in configs}
    try:
        if any(todo.values()):
            cli.log_frontend_warnings(output / "logs")
            with serve(engines, output / "logs") as running:
                handles = EngineHandle.attach_roles(running)
                with Progress(*Progress.get_default_columns(), TimeElapsedColumn(), console=console) as bar:
                    for name, config in configs.items():
                        task = bar.add_task(
                            name, total=len(problems), completed=len(problems) - len(todo[name])
                        )

                        def append(record: ProblemRecord, name: str = name, task: Any = task) -> None:
                            files[name].append(record.to_json())
                            fresh[name].append(record)
                            bar.advance(task)

                        for handle in {handle.url: handle for handle in handles}.values():
                            handle.flush_cache()
                        start = time.perf_counter()
                        Pipeline(config, *handles).run(todo[name], append)
                        walls[name] = time.perf_counter() - start
    except (KeyboardInterrupt, RuntimeError, ValueError) as exc:
        return cli.stopped(exc, f"finished records are kept in {output}")
    # A rate needs a timed run: a policy this invocation had nothing left to do keeps its last one.
    last = json.loads((output / SUMMARY).read_text())["policies"] if (output / SUMMARY).exists() else {}
    rows = {}
    for name, records in files.items():
        done = [ProblemRecord.from_json(records.records[p.id]) for p in problems]
        rows[name] = figures(done, fresh[name], walls.get(name, 0.0))
        if not fresh[name] and name in last:
            rows[name]["explorer_tokens_per_s"] = last[name]["explorer_tokens_per_s"]
    baseline = replay_on_baseline(configs, files, rows)
    summary = {"config": base.to_dict(), "dataset": dataset, "replay_baseline": baseline, "policies": rows}
    (output / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    plot(rows, args.n, output / PNG)
    cli.show(table(rows, args.n))
    console.print(f"figures: {output / SUMMARY}, plot: {output / PNG}")
    return 0


if __name__ == "__main__":
    cli.exit_with(main())
