"""The paper's accuracy protocol (its Table 1): Pass@1, Cons@N, Pass@N and A2R@N per dataset, over many runs.

    python -m benchmarks.accuracy                       # GPU: Qwen3-4B -> Qwen3-8B, 16 runs, N = 4 8 12
    python -m benchmarks.accuracy --synthesizer-model Qwen/Qwen3-32B --ns 4 8 --prices prices.json
    python -m benchmarks.accuracy --runs 4 --ns 2 4 8 --limit 30      # CPU: the tiny model on `synthetic`

Protocol, with the choices the paper leaves open made explicit:
- Explore once, at the largest N (maxN). Path i of run r is the problem's path r*maxN + i, seeded with
  `RunConfig.path_seed(problem id, r*maxN + i)` (run 0 is exactly `programs.a2r --n maxN`'s exploration).
  Each (problem, run) is one explorer call forking maxN paths, so a request never forks runs x maxN at once.
- Run r at N uses its first N paths, i.e. the problem's paths [r*maxN, r*maxN + N): runs stay disjoint and
  every smaller N reuses the same explorations. The synthesizer runs once per (problem, run, N) on those N
  answer parts, seeded with `path_seed(f"{problem id}/a2r@{N}", r)`.
- Per problem (`programs.core.metrics`): Pass@1 and Pass@N are the unbiased estimates from all runs x maxN
  paths (not each run's any-correct: the same expectation, less variance, and never Pass@N < Pass@1);
  Cons@N is each run's majority vote over its N paths, and A2R@N its synthesizer's correctness, averaged
  over runs.
- Metrics are averaged over problems, then over datasets with equal weight (Table 1's Average rows).

OUTPUT holds explorations.jsonl (a line per dataset, problem and run), syntheses.jsonl (a line per dataset,
problem, run and N), summary.json, accuracy_vs_n.png and cost_vs_accuracy.png (cost per problem from
`benchmarks.cost`; skipped, with a message, when a model has no price: add `--price MODEL=IN,OUT`).
Rerunning resumes; more runs, problems, datasets or smaller N extend the same folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.progress import Progress, TimeElapsedColumn
from rich.table import Table

from benchmarks.cost import CURRENCY, Cost, load_prices, mean_cost, model_key, price_of, record_cost
from engine.launch import serve
from programs.a2r import run_config
from programs.cli import add_engine_args, add_sampling_args, offline, plan_engines, sigterm_as_ctrl_c
from programs.core.config import RunConfig
from programs.core.jsonl import RecordFile, RecordsError
from programs.core.metrics import ProblemScore, aggregate, cons_at_n, pass_at_k, score_problem
from programs.datasets import DatasetError, Problem, load_problems
from programs.explorer import run_explorer
from programs.offline import task as synthetic
from programs.pipeline import Stage, problem_record, stage_slots, synthesis_record
from programs.synthesizer import run_synthesizer

console = Console()
DEFAULT_DATASETS = ("aime24", "aime25", "beyond_aime")
FILES = ("explorations.jsonl", "syntheses.jsonl")  # records of Results.explorations and .syntheses
ACCURACY_PNG, COST_PNG = "accuracy_vs_n.png", "cost_vs_accuracy.png"
PER_N = ("cons", "pass", "a2r")  # Table 1's columns for each N, after Pass@1


Unit = tuple[str, Problem, int]  # (dataset, problem, run): one exploration, and its syntheses


def exploration_id(dataset: str, problem: Problem, run: int) -> str:
    return f"{dataset}/{problem.id}/run{run}"


def synthesis_id(dataset: str, problem: Problem, run: int, n: int) -> str:
    return f"{exploration_id(dataset, problem, run)}/n{n}"


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


@dataclass
class Results:
    """The records a protocol run reads and writes, addressed by (dataset, problem, run[, N])."""

    problems: dict[str, list[Problem]]
    runs: int
    ns: list[int]
    explorations: RecordFile
    syntheses: RecordFile

    def units(self) -> list[Unit]:
        return [(d, p, r) for d, ps in self.problems.items() for p in ps for r in range(self.runs)]

    def exploration(self, dataset: str, problem: Problem, run: int) -> dict[str, Any]:
        return self.explorations.records[exploration_id(dataset, problem, run)]

    def synthesis(self, dataset: str, problem: Problem, run: int, n: int) -> dict[str, Any]:
        return self.syntheses.records[synthesis_id(dataset, problem, run, n)]

    def missing(self) -> tuple[int, int]:
        """Explorations and syntheses still to do."""
        units = self.units()
        explore = sum(exploration_id(*u) not in self.explorations for u in units)
        return explore, sum(synthesis_id(*u, n) not in self.syntheses for u in units for n in self.ns)

    def problem_runs(self) -> dict[str, list[ProblemRuns]]:
        def one(dataset: str, p: Problem) -> ProblemRuns:
            units = [(dataset, p, r) for r in range(self.runs)]
            return ProblemRuns(
                gold=p.answer,
                answers=[[path["answer"] for path in self.exploration(*u)["paths"]] for u in units],
                a2r={
                    n: [bool(self.synthesis(*u, n)["synthesizer"]["correct"]) for u in units] for n in self.ns
                },
            )

        return {dataset: [one(dataset, p) for p in ps] for dataset, ps in self.problems.items()}

    def costs(self, prices: dict[str, Any]) -> dict[str, dict[str, float]]:
        """Mean cost per problem of Cons@N (its N paths) and A2R@N (those plus the synthesis), per dataset."""

        def priced(unit: Unit, n: int) -> Cost:
            exploration = self.exploration(*unit)
            view = {**exploration, "paths": exploration["paths"][:n]}
            return record_cost({**view, "synthesizer": self.synthesis(*unit, n)["synthesizer"]}, prices)

        rows: dict[str, dict[str, float]] = {dataset: {} for dataset in self.problems}
        for n in self.ns:
            for dataset in self.problems:
                cost = mean_cost([priced(u, n) for u in self.units() if u[0] == dataset])
                rows[dataset].update({f"cons@{n}": cost.explorer, f"a2r@{n}": cost.total})
        return rows


class Protocol:
    """Explores and synthesizes whatever the record files still lack; syntheses start as explorations end."""

    def __init__(self, config: RunConfig, explorer: Stage, synthesizer: Stage, results: Results) -> None:
        self.config, self.explorer, self.synthesizer, self.results = config, explorer, synthesizer, results

    def explore(self, dataset: str, problem: Problem, run: int) -> dict[str, Any]:
        cfg, stage = self.config, self.explorer
        label = f"{dataset} problem {problem.id}"
        prompt = stage.prompt(problem.problem, cfg.explorer.max_tokens, cfg.thinking, label)
        seeds = [cfg.path_seed(problem.id, run * cfg.n + i) for i in range(cfg.n)]
        start = time.perf_counter()
        paths = run_explorer(stage.backend, prompt, cfg.explorer, seeds)
        record = problem_record(problem, cfg, paths, None, {"explore_s": time.perf_counter() - start})
        where = {"dataset": dataset, "problem_id": problem.id, "run": run}
        return {**record, "id": exploration_id(dataset, problem, run), **where}

    def synthesize(self, dataset: str, problem: Problem, run: int, n: int) -> dict[str, Any]:
        cfg, stage = self.config, self.synthesizer
        parts = [p["answer_part"] for p in self.results.exploration(dataset, problem, run)["paths"][:n]]
        start = time.perf_counter()
        synthesis = run_synthesizer(
            stage.backend,
            stage.tokenizer,
            problem.problem,
            parts,
            cfg.synthesizer,
            stage.context_length,
            seed=cfg.path_seed(f"{problem.id}/a2r@{n}", run),
            shuffle=cfg.shuffle_references,
            thinking=cfg.thinking,
        )
        where = {"dataset": dataset, "problem_id": problem.id, "run": run, "n": n, "config": cfg.to_dict()}
        record = {"synthesizer": synthesis_record(synthesis, problem.answer)}
        timings = {"synthesize_s": time.perf_counter() - start}
        return {"id": synthesis_id(dataset, problem, run, n), **where, **record, "timings": timings}

    def run(self, on_record: Callable[[], None]) -> None:
        """Complete every (dataset, problem, run, N), appending each record (then `on_record()`) once done.

        An error ends the run; what is written stays, and the next run does the rest.
        """
        cfg, results = self.config, self.results
        explore_slots, synth_slots = stage_slots(cfg, self.explorer, self.synthesizer)
        explore_pool = ThreadPoolExecutor(explore_slots, "explore")
        synth_pool = ThreadPoolExecutor(synth_slots, "synthesize")
        running: dict[Future, Unit] = {}

        def synthesize_missing(unit: Unit) -> None:
            for n in results.ns:
                if synthesis_id(*unit, n) not in results.syntheses:
                    running[synth_pool.submit(self.synthesize, *unit, n)] = unit

        try:
            for unit in results.units():
                if exploration_id(*unit) in results.explorations:
                    synthesize_missing(unit)
                else:
                    running[explore_pool.submit(self.explore, *unit)] = unit
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    unit, record = running.pop(future), future.result()
                    (results.syntheses if "n" in record else results.explorations).append(record)
                    on_record()
                    if "n" not in record:
                        synthesize_missing(unit)
        finally:
            # On an error or Ctrl-C do not wait for requests in flight: stopping the engines ends them.
            for pool in (explore_pool, synth_pool):
                pool.shutdown(wait=not running, cancel_futures=True)


def model_label(config: dict[str, Any]) -> str:
    explorer, synthesizer = model_key(config["explorer_model"]), model_key(config["synthesizer_model"])
    return explorer if explorer == synthesizer else f"{explorer} -> {synthesizer}"


def accuracy_table(summary: dict[str, Any]) -> Table:
    """Table 1's layout: a row per dataset and model, Pass@1, then Cons@N, Pass@N and A2R per N."""
    ns, config = summary["protocol"]["ns"], summary["config"]
    table = Table(title=f"Accuracy (%), mean of {summary['protocol']['runs']} runs")
    for name in ("dataset", "model", "Pass@1", *(f"{m}@{n}" for n in ns for m in ("Cons", "Pass", "A2R"))):
        table.add_column(name, justify="left" if name in ("dataset", "model") else "right")
    rows = {**summary["datasets"], "Average": summary["average"]}
    for dataset, row in rows.items():
        cells = [row["pass@1"], *(row[f"{m}@{n}"] for n in ns for m in PER_N)]
        table.add_row(dataset, model_label(config), *(f"{v:.2f}" for v in cells))
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


def show(table: Table) -> None:
    """Print the table whole: piped or redirected, rich assumes 80 columns and would cut Table 1's twelve
    to "Pa…"."""
    if not console.is_terminal:
        wide = Measurement.get(console, console.options.update_width(1_000), table).maximum
        console.width = max(console.width, wide)
    console.print(table)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.split("\n")[0])
    run = parser.add_argument_group("protocol")
    run.add_argument(
        "--datasets",
        nargs="+",
        help=f"sets load_problems takes (default: {' '.join(DEFAULT_DATASETS)}; "
        f"{synthetic.NAME} with the offline tiny model)",
    )
    run.add_argument("--ns", type=int, nargs="+", default=[4, 8, 12], help="explorer paths per synthesis")
    run.add_argument("--runs", type=int, default=16, help="independent runs averaged per problem")
    run.add_argument("--limit", type=int, help="only the first LIMIT problems of each dataset")
    run.add_argument("--shuffle-references", action="store_true", help="shuffle reference order (seeded)")
    run.add_argument("--output", type=Path, default=Path("runs/accuracy"), help="run folder")
    prices = parser.add_argument_group("prices (for cost_vs_accuracy.png; see benchmarks.cost)")
    prices.add_argument("--prices", metavar="FILE", help='JSON {"MODEL": {"input": P, "output": P}}, CNY/1K')
    prices.add_argument("--price", action="append", default=[], metavar="MODEL=IN,OUT", help="set one price")
    add_engine_args(parser)
    add_sampling_args(parser)
    args = parser.parse_args(argv)
    if min(args.ns) < 1 or len(set(args.ns)) != len(args.ns):
        parser.error(f"--ns must be distinct numbers of at least 1, got {args.ns}")
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    args.datasets = args.datasets or ([synthetic.NAME] if offline(args) else list(DEFAULT_DATASETS))
    if len(set(args.datasets)) != len(args.datasets):
        parser.error(f"--datasets names a dataset twice: {args.datasets}")
    args.ns = sorted(args.ns)
    return args


def summarize(results: Results, config: RunConfig, prices: dict[str, Any], output: Path) -> dict[str, Any]:
    """summary.json's content, and the plots; the cost plot only when both models have a price."""
    rows = {d: dataset_metrics(problems, results.ns) for d, problems in results.problem_runs().items()}
    protocol = {"datasets": list(results.problems), "runs": results.runs, "ns": results.ns}
    summary = {"config": config.to_dict(), "protocol": protocol, "datasets": rows, "average": average(rows)}
    try:
        price_of(config.explorer_model, prices), price_of(config.synthesizer_model, prices)
    except ValueError as exc:
        console.print(f"[yellow]{COST_PNG} skipped:[/] {exc}")
        summary["cost"] = {"skipped": str(exc)}
        (output / COST_PNG).unlink(missing_ok=True)  # a plot from an earlier run would not match
    else:
        cost = results.costs(prices)
        summary["cost"] = {"currency": CURRENCY, "datasets": cost, "average": average(cost)}
    plot(summary, output)
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with sigterm_as_ctrl_c():
        return run(args)


def run(args: argparse.Namespace) -> int:
    try:
        problems = {name: load_problems(name, args.limit) for name in args.datasets}
        engines, device = plan_engines(args, console)
        # One RunConfig, at the largest N, stamps both files: resuming with other models, sampling or
        # largest N is refused, while runs, problems, datasets and smaller N may change.
        config = run_config(
            argparse.Namespace(**vars(args), n=args.ns[-1], no_synthesis=False), engines, device
        )
        prices = load_prices(args.prices, args.price)
        explorations, syntheses = (RecordFile(args.output, config.to_dict(), console, name=n) for n in FILES)
        results = Results(problems, args.runs, args.ns, explorations, syntheses)
    except (DatasetError, RecordsError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    explore, synth = results.missing()
    console.print(
        f"{sum(map(len, problems.values()))} problems x {args.runs} runs, N in {args.ns}: {explore} explorations "
        f"and {synth} syntheses to do in {args.output}; engines ({engines.layout}): explorer "
        f"{config.explorer_model}, synthesizer {config.synthesizer_model}"
    )
    try:
        if explore or synth:
            with serve(engines, args.output / "logs") as running:
                explorer, synthesizer = Stage.attach_roles(running)
                with Progress(*Progress.get_default_columns(), TimeElapsedColumn(), console=console) as bar:
                    task = bar.add_task("explorations + syntheses", total=explore + synth)
                    Protocol(config, explorer, synthesizer, results).run(lambda: bar.advance(task))
    except (RuntimeError, ValueError) as exc:  # an engine (EngineError), or a request it refused
        console.print(f"[red]error:[/] {exc}\nfinished records are kept in {args.output}; rerun to resume")
        return 1
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted:[/] finished records kept in {args.output}; rerun to resume")
        return 130
    summary = summarize(results, config, prices, args.output)
    show(accuracy_table(summary))
    console.print(f"summary: {args.output / 'summary.json'}, plots: {args.output / ACCURACY_PNG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
