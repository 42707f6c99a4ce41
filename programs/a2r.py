"""A2R end to end: explore N paths per problem, synthesize a final answer, compare with self-consistency.

    python -m programs.a2r --n 4                                   # GPU: the paper profile's models on aime24
    python -m programs.a2r --n 4 --dataset aime25 --limit 5
    python -m programs.a2r --n 8 --question "What is 17 * 23?"
    python -m programs.a2r --n 4 --syntheses 3                     # the vote of 3 syntheses (docs/arena.md)
    python -m programs.a2r --n 4 --method rsa --rounds 2 --subset 2  # recursive aggregation (docs/arena.md)

With no GPU it runs on the CPU with the project's offline pair, a small explorer and a larger synthesizer on
two engines pinned to their own cores (`--one-model`: the explorer alone), on the arithmetic chains they
were trained on (programs/offline/chain.py) unless `--dataset` names another. Results go to
`OUTPUT/records.jsonl`, one line per problem as soon as it is done; rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from engine.launch import EngineError, serve
from engine.layout import Engines
from programs import cli, planning
from programs.cli import console
from programs.core.config import RunConfig, check_method
from programs.core.jsonl import RecordFile, RecordsError
from programs.core.records import Problem, ProblemRecord
from programs.datasets import DatasetError, load_problems, question_problem
from programs.engine_handle import EngineHandle
from programs.pipeline import Pipeline
from programs.profile import PAPER
from programs.report import progress_line, question_table, run_summary, run_table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m programs.a2r", description=__doc__.split("\n\n")[0])
    run = parser.add_argument_group("run")
    run.add_argument("--n", type=int, default=4, help="explorer paths per problem")
    source = run.add_mutually_exclusive_group()
    source.add_argument(
        "--dataset",
        help=f"shipped name, a .jsonl/.parquet file, or hf:REPO (default: the profile's first, "
        f"{PAPER.datasets[0]} for the paper's models)",
    )
    source.add_argument("--question", help="one question instead of a dataset")
    run.add_argument("--limit", type=int, help="only the first LIMIT problems")
    run.add_argument(
        "--output",
        type=Path,
        help="run folder (default: runs/[<method>-]<dataset>-n<N>, e.g. runs/rsa-t2-k2-chain-n4)",
    )
    run.add_argument(
        "--retry-failed", action="store_true", help="solve again the problems whose records say they failed"
    )
    run.add_argument(
        "--max-in-flight", type=int, help="cap on problems explored at once (default: from KV pool)"
    )
    cli.add_engine_args(parser)
    cli.add_run_args(parser, methods=True)
    args = parser.parse_args(argv)
    cli.check_positive(parser, args, "n", "max_in_flight")
    if args.question is not None and not args.question.strip():
        parser.error("--question is empty")
    return args


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run, parse_args(argv))


def run(args: argparse.Namespace) -> int:
    with cli.refusing(DatasetError, RecordsError, ValueError):
        check_method(args)
        profile, device = planning.profile_for(args)
        dataset = None if args.question else args.dataset or profile.datasets[0]
        problems = [question_problem(args.question)] if args.question else load_problems(dataset, args.limit)
        engines, config = planning.plan_run(args, profile, device)
        output = args.output or cli.default_output(dataset, args.n, run_kind(config), args.question)
        records = RecordFile(output, config.to_dict(), console)
        records.check_problems((p.id, p) for p in problems)
    todo = [p for p in problems if p.id not in records or (args.retry_failed and records.failed(p.id))]
    console.print(
        escape(
            f"{len(problems)} problems, {len(problems) - len(todo)} already in {records.path}; engines "
            f"({engines.layout}): explorer {config.explorer_model}, synthesizer {config.synthesizer_model}"
        )
    )
    try:
        if todo:
            solve(todo, engines, config, records, output, args.max_in_flight)
        finished = [ProblemRecord.from_json(records.records[p.id]) for p in problems if p.id in records]
        summary = {**run_summary(finished, config.to_dict()), "dataset": dataset or "question"}
        (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    except (KeyboardInterrupt, EngineError, RuntimeError, ValueError, OSError) as exc:  # OSError: a full disk
        return cli.stopped(exc, f"{len(records.records)} records kept in {records.path}")
    if summary["failed"]:
        first = next(r for r in finished if r.error)
        console.print(
            f"[red]{summary['failed']} of {len(finished)} problems failed[/] "
            f"(first: {escape(f'{first.id}: {first.error}')}); "
            "their records say why; rerun with --retry-failed to try them again"
        )
    if args.question and not finished[0].error:
        cli.show(question_table(finished[0]))
        synthesis = finished[0].synthesizer
        if synthesis is not None:
            console.print("[bold]synthesizer's reply:[/]")
            console.print(Text(synthesis.text))
    else:
        cli.show(run_table(summary))
    tokens = summary["explorer"]["tokens_per_problem"]
    console.print(f"explorer: {tokens:,.0f} tokens per problem, probes included")
    console.print(escape(f"records: {records.path}\nsummary: {output / 'summary.json'}"))
    return 1 if summary["failed"] else 0


def run_kind(config: RunConfig) -> str:
    """The run folder's prefix for a method other than the paper's one synthesis (`runs/rsa-t2-k2-chain-n4`)."""
    if config.method == "rsa":
        return f"rsa-t{config.rounds}-k{config.subset}"
    return f"a2r-m{config.syntheses}" if config.syntheses > 1 else ""


def solve(
    todo: list[Problem],
    engines: Engines,
    config: RunConfig,
    records: RecordFile,
    output: Path,
    max_in_flight: int | None,
) -> None:
    cli.log_frontend_warnings(output / "logs")
    with serve(engines, output / "logs") as running:
        explorer, synthesizer = EngineHandle.attach_roles(running)
        pipeline = Pipeline(config, explorer, synthesizer if config.synthesize else None)
        done: list[ProblemRecord] = []
        start = time.perf_counter()
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, TextColumn("{task.fields[rates]}"), console=console) as progress:
            task = progress.add_task("problems", total=len(todo), rates="")

            def on_record(record: ProblemRecord) -> None:
                records.append(record.to_json())
                done.append(record)
                progress.update(task, advance=1, rates=progress_line(done, time.perf_counter() - start))

            pipeline.run(todo, on_record, max_in_flight)


if __name__ == "__main__":
    cli.exit_with(main())
