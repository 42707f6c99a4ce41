"""The paper's accuracy protocol (its Table 1): Pass@1, Cons@N, Pass@N and A2R@N per dataset, over many runs.

    python -m benchmarks.accuracy                       # GPU: the paper profile's models, 16 runs, N = 4 8 12
    python -m benchmarks.accuracy --synthesizer-model Qwen/Qwen3-32B --ns 4 8 --prices prices.json
    python -m benchmarks.accuracy --runs 4 --ns 2 4 8 --limit 30      # CPU: the tiny model on `synthetic`
    python -m benchmarks.accuracy --ns 4 8 --methods sc a2r rsa --rounds 2 --subset 2   # the arena with RSA

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
- `--stop`, `--keep-confident` and `--online-confidence` (`programs.core.stopping`) need a single N; a path they drop counts as
  no answer in every metric, and its tokens in every cost.

OUTPUT holds explorations.jsonl (a line per dataset, problem and run), syntheses.jsonl (a line per dataset,
problem, run and N), summary.json, accuracy_vs_n.png and cost_vs_accuracy.png (cost per problem from
`benchmarks.cost`; skipped, with a message, when a model has no price: add `--price MODEL=IN,OUT`).
The arena (`benchmarks.arena`) compares `--methods` (default `sc a2r`) on the same samples: summary.json
also holds `methods` (per method and N: accuracy with its interval, tokens, cost, time to answer), `paired`
and `diversity`; arena.jsonl a row per problem and N; accuracy_vs_tokens.png (or `--tokens-plot PNG`) a curve
per method. The methods of several synthesizer calls run over the same explorations, once per (problem, run,
N), each into its own file: `a2r-vote` (`--syntheses M`) into a2r-vote.jsonl, `rsa` (`--rounds T --subset K`)
into rsa.jsonl, each line holding every call; `Pipeline.answer` makes them, keyed (seeds, RSA's subsets) by
the line's id and method, so runs and N draw apart.
Rerunning resumes; more runs, problems, datasets or smaller N extend the same folder.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.progress import Progress, TimeElapsedColumn

from benchmarks.arena import (
    AGGREGATING,
    METHODS,
    TABLE1,
    TOKENS_PNG,
    ProblemSamples,
    Sample,
    arena,
    arena_tables,
    dataset_costs,
    plot_tokens,
    score,
)
from benchmarks.cost import CURRENCY, add_price_args, load_prices, price_of
from benchmarks.table1 import (
    ACCURACY_PNG,
    COST_PNG,
    average,
    dataset_metrics,
    model_label,
    plot,
    table1,
)
from engine.launch import serve
from programs import cli, planning
from programs.cli import console
from programs.core.config import RunConfig, adaptive_flags
from programs.core.jsonl import RecordFile, RecordsError
from programs.core.records import Problem, ProblemRecord, SynthesisRecord, graded, voted_call
from programs.datasets import DatasetError, load_problems
from programs.engine_handle import EngineHandle
from programs.executor import TwoStageExecutor
from programs.pipeline import Pipeline, stage_slots
from programs.profile import PAPER

FILES = ("explorations.jsonl", "syntheses.jsonl")  # records of ProtocolRecords.explorations and .syntheses
DEFAULT_METHODS = [m for m in METHODS if m not in AGGREGATING]  # those that need no parameters of their own


def aggregation_file(method: str) -> str:
    """Where the protocol keeps the calls of a method of several (`benchmarks.arena.AGGREGATING`)."""
    return f"{method}.jsonl"


def method_configs(config: RunConfig, args: argparse.Namespace) -> dict[str, RunConfig]:
    """The run each chosen method of several synthesizer calls makes at the largest N (its file's stamp, so
    a rerun with other parameters is refused, naming them); at N it is the same with `n` = N."""
    made = {
        "a2r-vote": lambda: replace(config, syntheses=args.syntheses),
        "rsa": lambda: replace(config, method="rsa", rounds=args.rounds, subset=args.subset),
    }
    return {method: made[method]() for method in args.methods if method in AGGREGATING}


Calls = tuple[str, int, list[SynthesisRecord]]  # a method's synthesizer calls over a trial's first N paths


@dataclass(frozen=True)
class Trial:
    """One exploration of the protocol: a problem of a dataset in one run; its syntheses are one per N."""

    dataset: str
    problem: Problem
    run: int

    @property
    def id(self) -> str:
        return f"{self.dataset}/{self.problem.id}/run{self.run}"

    def synthesis_id(self, n: int) -> str:
        return f"{self.id}/n{n}"


@dataclass
class ProtocolRecords:
    """The records a protocol run reads and writes, addressed by trial (and N)."""

    problems: dict[str, list[Problem]]
    runs: int
    ns: list[int]
    explorations: RecordFile
    syntheses: RecordFile  # A2R's one synthesis per (trial, N)
    aggregations: dict[str, RecordFile] = field(default_factory=dict)  # per method of several calls

    def trials(self) -> list[Trial]:
        return [Trial(d, p, r) for d, ps in self.problems.items() for p in ps for r in range(self.runs)]

    def exploration(self, trial: Trial) -> ProblemRecord:
        return ProblemRecord.from_json(self.explorations.records[trial.id])

    @property
    def call_files(self) -> dict[str, RecordFile]:
        """Each method's file of synthesizer calls, a line per (trial, N): `a2r`'s, then each method of
        several's."""
        return {"a2r": self.syntheses, **self.aggregations}

    def missing_calls(self, trial: Trial) -> list[tuple[str, int]]:
        """The (method, N) whose synthesizer calls over the trial's paths are still to make."""
        files = self.call_files.items()
        return [(m, n) for m, file in files for n in self.ns if trial.synthesis_id(n) not in file]

    def missing(self) -> tuple[int, int]:
        """Explorations and synthesis jobs (a method's calls at one N) still to do."""
        trials = self.trials()
        return sum(t.id not in self.explorations for t in trials), sum(
            len(self.missing_calls(t)) for t in trials
        )

    def samples(self) -> list[ProblemSamples]:
        """Every problem's runs as the arena's methods read them."""

        def sample(trial: Trial) -> Sample:
            def lines(file: RecordFile) -> dict[int, dict[str, Any]]:
                return {n: file.records[trial.synthesis_id(n)] for n in self.ns}

            aggregations = {method: lines(file) for method, file in self.aggregations.items()}
            return Sample(
                trial.problem.answer, self.explorations.records[trial.id], lines(self.syntheses), aggregations
            )

        return [
            ProblemSamples(d, p.id, [sample(Trial(d, p, r)) for r in range(self.runs)])
            for d, ps in self.problems.items()
            for p in ps
        ]


class Protocol:
    """Explores and synthesizes whatever the record files still lack; syntheses start as explorations end.

    `methods` are the runs of the methods of several synthesizer calls (`method_configs`), made over the
    same paths as A2R's synthesis, in the same synthesis stage."""

    def __init__(
        self, pipeline: Pipeline, records: ProtocolRecords, methods: dict[str, RunConfig] | None = None
    ) -> None:
        self.pipeline, self.records, self.methods = pipeline, records, methods or {}
        self.config = pipeline.config.to_dict()

    def explore(self, trial: Trial) -> ProblemRecord:
        """The trial's exploration: read back when it is on disk, else run (paths r*maxN .. r*maxN + maxN)."""
        if trial.id in self.records.explorations:
            return self.records.exploration(trial)
        n = self.pipeline.config.n
        paths = self.pipeline.explore(trial.problem, first_path=trial.run * n)
        labels = {"dataset": trial.dataset, "problem_id": trial.problem.id, "run": trial.run}
        record = ProblemRecord.build(trial.problem, self.config, paths, None, {}, labels)
        return replace(record, id=trial.id)  # keyed by trial; `problem_id` names the problem

    def syntheses(self, trial: Trial, exploration: ProblemRecord) -> list[Callable[[], Calls]]:
        def synthesize(method: str, n: int) -> Calls:
            paths = exploration.paths[:n]
            if method == "a2r":
                seed = self.pipeline.config.path_seed(f"{trial.problem.id}/a2r@{n}", trial.run)
                return method, n, [self.pipeline.synthesize(trial.problem, paths, seed)]
            # Pipeline.answer seeds (and RSA draws its subsets) by the problem's id: keyed by the line's id
            # and the method, every run and N draws its own.
            keyed = replace(trial.problem, id=f"{trial.synthesis_id(n)}/{method}")
            pipeline = Pipeline(
                replace(self.methods[method], n=n), self.pipeline.explorer, self.pipeline.synthesizer
            )
            return method, n, pipeline.answer(keyed, paths)

        return [lambda m=m, n=n: synthesize(m, n) for m, n in self.records.missing_calls(trial)]

    def run(self, on_record: Callable[[], None]) -> None:
        """Complete every (dataset, problem, run, N), appending each record (then `on_record()`) once done.

        An error ends the run; what is written stays, and the next run does the rest.
        """
        records = self.records

        def explored(trial: Trial, exploration: ProblemRecord, seconds: float) -> None:
            if trial.id not in records.explorations:
                records.explorations.append(replace(exploration, timings={"explore_s": seconds}).to_json())
                on_record()

        def synthesized(trial: Trial, result: Calls, seconds: float) -> None:
            method, n, calls = result
            calls = [graded(call, trial.problem.answer, trial.id) for call in calls]
            line = {
                "id": trial.synthesis_id(n),
                "dataset": trial.dataset,
                "problem_id": trial.problem.id,
                "run": trial.run,
                "n": n,
                "config": self.config if method == "a2r" else self.methods[method].to_dict(),
                "synthesizer": voted_call(calls).to_json(),
                # every call of a method of several, in order (RSA's round by round, each with its subset)
                **({} if method == "a2r" else {"syntheses": [call.to_json() for call in calls]}),
                "timings": {"synthesize_s": seconds},  # all the method's calls at this N, from their start
            }
            records.call_files[method].append(line)
            on_record()

        explorer, synthesizer = self.pipeline.explorer, self.pipeline.synthesizer
        widest = max([self.pipeline.config, *self.methods.values()], key=lambda c: c.synthesis_width)
        executor = TwoStageExecutor(*stage_slots(widest, explorer, synthesizer))
        executor.run(records.trials(), self.explore, self.syntheses, explored, synthesized)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.split("\n")[0])
    protocol = parser.add_argument_group("protocol")
    protocol.add_argument(
        "--datasets",
        nargs="+",
        help=f"sets load_problems takes (default: the profile's; {' '.join(PAPER.datasets)} for the paper's)",
    )
    protocol.add_argument(
        "--ns", type=int, nargs="+", default=[4, 8, 12], help="explorer paths per synthesis"
    )
    protocol.add_argument("--runs", type=int, default=16, help="independent runs averaged per problem")
    protocol.add_argument("--limit", type=int, help="only the first LIMIT problems of each dataset")
    protocol.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        default=DEFAULT_METHODS,
        help="methods the arena compares, on the same samples (benchmarks.arena; default: sc a2r)",
    )
    protocol.add_argument(
        "--syntheses",
        type=int,
        metavar="M",
        help="a2r-vote: synthesizer samples over the same references, answered by their vote (at least 2)",
    )
    protocol.add_argument("--rounds", type=int, metavar="T", help="rsa: aggregation rounds")
    protocol.add_argument(
        "--subset", type=int, metavar="K", help="rsa: members of the last population each aggregation reads"
    )
    protocol.add_argument("--output", type=Path, default=Path("runs/accuracy"), help="run folder")
    protocol.add_argument(
        "--tokens-plot",
        type=Path,
        metavar="PNG",
        help=f"where the arena's plot goes (default: OUTPUT/{TOKENS_PNG})",
    )
    add_price_args(parser.add_argument_group("prices (for cost_vs_accuracy.png; see benchmarks.cost)"))
    cli.add_engine_args(parser)
    cli.add_run_args(parser, skip=("synthesize",))
    args = parser.parse_args(argv)
    if min(args.ns) < 1 or len(set(args.ns)) != len(args.ns):
        parser.error(f"--ns must be distinct numbers of at least 1, got {args.ns}")
    cli.check_positive(parser, args, "runs", "limit", "rounds", "subset")
    if len(set(args.methods)) != len(args.methods):
        parser.error(f"--methods names a method twice: {args.methods}")
    if problem := method_flags_problem(args):
        parser.error(problem)
    if args.datasets and len(set(args.datasets)) != len(args.datasets):
        parser.error(f"--datasets names a dataset twice: {args.datasets}")
    if (args.stop or args.keep_confident or args.online_confidence) and len(args.ns) > 1:
        parser.error(
            f"--stop, --keep-confident and --online-confidence need one N (--ns {args.ns[-1]}): smaller N reuse the first paths of "
            "the largest, which a policy that drops paths would change"
        )
    args.ns = sorted(args.ns)
    return args


def method_flags_problem(args: argparse.Namespace) -> str | None:
    """What makes the methods' parameters unable to work together, or None: each is its method's, and a
    method needs its own."""
    rsa, vote = "rsa" in args.methods, "a2r-vote" in args.methods
    if (args.rounds is not None or args.subset is not None) and not rsa:
        return "--rounds and --subset are RSA's: add rsa to --methods"
    if rsa and (args.rounds is None or args.subset is None):
        return "--methods rsa needs --rounds T and --subset K"
    if rsa and args.subset > min(args.ns):
        return (
            f"--subset {args.subset} is larger than the smallest population it draws from, "
            f"--ns {min(args.ns)} paths"
        )
    if rsa and (adaptive := adaptive_flags(args)):
        return f"rsa starts from all N paths; {', '.join(adaptive)} stops or drops some: choose one"
    if args.syntheses is not None and not vote:
        return "--syntheses is a2r-vote's: add a2r-vote to --methods"
    if vote and args.syntheses is None:
        return "--methods a2r-vote needs --syntheses M"
    if vote and args.syntheses < 2:
        return f"--syntheses must be at least 2 (one synthesis is a2r), got {args.syntheses}"
    return None


def summarize(
    records: ProtocolRecords,
    config: RunConfig,
    prices: dict[str, Any],
    output: Path,
    methods: list[str],
    tokens_plot: Path,
    parameters: dict[str, int] | None = None,
) -> dict[str, Any]:
    """summary.json's content (Table 1, then the arena of `methods`, whose `parameters` the protocol entry
    names), arena.jsonl's rows per problem and N, and the plots; costs and the cost plot only when both
    models have a price."""
    samples = records.samples()
    rows = {
        d: dataset_metrics([s.table1(records.ns) for s in samples if s.dataset == d], records.ns)
        for d in records.problems
    }
    protocol = {
        "datasets": list(records.problems),
        "runs": records.runs,
        "ns": records.ns,
        "methods": methods,
        **(parameters or {}),
    }
    summary = {"config": config.to_dict(), "protocol": protocol, "datasets": rows, "average": average(rows)}
    outcomes = score(samples, list(dict.fromkeys([*TABLE1, *methods])), records.ns)
    try:
        price_of(config.explorer_model, prices), price_of(config.synthesizer_model, prices)
    except ValueError as exc:
        console.print(f"[yellow]{COST_PNG} skipped:[/] {exc}")
        summary["cost"] = {"skipped": str(exc)}
        (output / COST_PNG).unlink(missing_ok=True)  # a plot from an earlier run would not match
        priced = None
    else:
        cost = dataset_costs(samples, {k: v for k, v in outcomes.items() if k[0] in TABLE1}, prices)
        summary["cost"] = {"currency": CURRENCY, "datasets": cost, "average": average(cost)}
        priced = prices
    figures, per_problem = arena(samples, {k: v for k, v in outcomes.items() if k[0] in methods}, priced)
    summary |= figures
    plot(summary, output)
    tokens_plot.parent.mkdir(parents=True, exist_ok=True)
    plot_tokens(summary, tokens_plot, f"{model_label(summary['config'])} on {', '.join(records.problems)}")
    (output / "arena.jsonl").write_text("".join(json.dumps(row) + "\n" for row in per_problem))
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run, parse_args(argv))


def run(args: argparse.Namespace) -> int:
    with cli.refusing(DatasetError, RecordsError, ValueError):
        profile, device = planning.profile_for(args)
        datasets = args.datasets or list(profile.datasets)
        problems = {name: load_problems(name, args.limit) for name in datasets}
        # One RunConfig, at the largest N, stamps both files: resuming with other models, sampling or
        # largest N is refused, while runs, problems, datasets and smaller N may change.
        engines, config = planning.plan_run(args, profile, device, n=args.ns[-1], synthesize=True)
        prices = load_prices(args.prices, args.price)
        explorations, syntheses = (RecordFile(args.output, config.to_dict(), console, name=n) for n in FILES)
        methods = method_configs(config, args)
        aggregations = {
            m: RecordFile(args.output, c.to_dict(), console, name=aggregation_file(m))
            for m, c in methods.items()
        }
        records = ProtocolRecords(problems, args.runs, args.ns, explorations, syntheses, aggregations)
        explorations.check_problems((trial.id, trial.problem) for trial in records.trials())
    explore, synth = records.missing()
    console.print(
        f"{sum(map(len, problems.values()))} problems x {args.runs} runs, N in {args.ns}: {explore} explorations "
        f"and {synth} synthesis jobs ({' '.join(['a2r', *methods])}, one per N) to do in {args.output}; "
        f"engines ({engines.layout}): explorer "
        f"{config.explorer_model}, synthesizer {config.synthesizer_model}"
    )
    try:
        if explore or synth:
            cli.log_frontend_warnings(args.output / "logs")
            with serve(engines, args.output / "logs") as running:
                pipeline = Pipeline(config, *EngineHandle.attach_roles(running))
                with Progress(*Progress.get_default_columns(), TimeElapsedColumn(), console=console) as bar:
                    task = bar.add_task("explorations + synthesis jobs", total=explore + synth)
                    Protocol(pipeline, records, methods).run(lambda: bar.advance(task))
    except (KeyboardInterrupt, RuntimeError, ValueError) as exc:  # RuntimeError: an engine (EngineError)
        return cli.stopped(exc, f"finished records are kept in {args.output}")
    tokens_plot = args.tokens_plot or args.output / TOKENS_PNG
    parameters = {k: v for k in ("syntheses", "rounds", "subset") if (v := getattr(args, k)) is not None}
    summary = summarize(records, config, prices, args.output, args.methods, tokens_plot, parameters)
    for table in (table1(summary), *arena_tables(summary)):
        cli.show(table)
    console.print(
        f"summary: {args.output / 'summary.json'}, plots: {args.output / ACCURACY_PNG}, {tokens_plot}"
    )
    return 0


if __name__ == "__main__":
    cli.exit_with(main())
