"""A2R end to end: explore N paths per problem, synthesize a final answer, compare with self-consistency.

    python -m programs.a2r --n 4                                   # GPU: Qwen3-4B -> Qwen3-8B on aime24
    python -m programs.a2r --n 4 --dataset aime25 --limit 5
    python -m programs.a2r --n 8 --question "What is 17 * 23?"

With no GPU it runs on the CPU with the project's offline tiny model, on the synthetic arithmetic set it
was trained on (programs/offline/task.py) unless `--dataset` names another. Results go to
`OUTPUT/records.jsonl`, one line per problem as soon as it is done; rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from engine.launch import EngineError, serve
from programs.cli import add_engine_args, add_sampling_args, offline, plan_engines, sigterm_as_ctrl_c
from programs.core.config import BUDGETS, RunConfig, SamplingConfig
from programs.core.jsonl import RecordFile, RecordsError
from programs.datasets import DatasetError, load_problems, question_problem
from programs.offline import task as synthetic
from programs.pipeline import Pipeline, Stage
from programs.report import accuracy_table, run_summary

console = Console()
DEFAULT_DATASET = "aime24"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m programs.a2r", description=__doc__.split("\n\n")[0])
    run = parser.add_argument_group("run")
    run.add_argument("--n", type=int, default=4, help="explorer paths per problem")
    source = run.add_mutually_exclusive_group()
    source.add_argument(
        "--dataset",
        help=f"shipped name, a .jsonl/.parquet file, or hf:REPO (default: {DEFAULT_DATASET}; "
        f"{synthetic.NAME} with the offline tiny model)",
    )
    source.add_argument("--question", help="one question instead of a dataset")
    run.add_argument("--limit", type=int, help="only the first LIMIT problems")
    run.add_argument("--shuffle-references", action="store_true", help="shuffle reference order (seeded)")
    run.add_argument("--no-synthesis", action="store_true", help="explore and vote only (self-consistency)")
    run.add_argument("--output", type=Path, help="run folder (default: runs/<dataset>-n<N>)")
    run.add_argument(
        "--max-in-flight", type=int, help="cap on problems explored at once (default: from KV pool)"
    )
    add_engine_args(parser)
    add_sampling_args(parser)
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")
    if args.max_in_flight is not None and args.max_in_flight < 1:
        parser.error(f"--max-in-flight must be at least 1, got {args.max_in_flight}")
    if not (args.dataset or args.question):
        args.dataset = synthetic.NAME if offline(args) else DEFAULT_DATASET
    return args


def run_config(args: argparse.Namespace, engines: Any, device: str) -> RunConfig:
    budgets = BUDGETS[device]

    def sampling(max_tokens: int | None, role: str) -> SamplingConfig:
        return SamplingConfig(max_tokens or budgets[role], args.temperature, args.top_p, args.top_k)

    return RunConfig(
        n=args.n,
        explorer=sampling(args.explorer_max_tokens, "explorer"),
        synthesizer=sampling(args.synthesizer_max_tokens, "synthesizer"),
        explorer_model=engines.explorer.model or engines.explorer.base_url,
        synthesizer_model=engines.synthesizer.model or engines.synthesizer.base_url,
        seed=args.seed,
        shuffle_references=args.shuffle_references,
        thinking=not args.no_thinking,
        synthesize=not args.no_synthesis,
    )


def progress_line(records: list[dict[str, Any]], elapsed: float) -> str:
    """Throughput and prefix-cache reuse from the engines' own token counts."""
    paths = [p for r in records for p in r["paths"]]
    synth = [r["synthesizer"] for r in records if r["synthesizer"]]
    explored = sum(p["completion_tokens"] for p in paths)
    prompted = sum(p["prompt_tokens"] for p in paths)
    hit = sum(p["cached_tokens"] for p in paths) / prompted if prompted else 0.0
    synthesized = sum(s["completion_tokens"] for s in synth)
    return (
        f"explorer {explored / elapsed:,.0f} tok/s · synthesizer {synthesized / elapsed:,.0f} tok/s · "
        f"prefix cache {hit:.0%}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with sigterm_as_ctrl_c():
        return run(args)


def run(args: argparse.Namespace) -> int:
    try:
        problems = (
            [question_problem(args.question)] if args.question else load_problems(args.dataset, args.limit)
        )
        engines, device = plan_engines(args, console)
        config = run_config(args, engines, device)
        name = "question" if args.question else Path(args.dataset).stem.removeprefix("hf:").replace("/", "_")
        output = args.output or Path("runs") / f"{name}-n{args.n}"
        records = RecordFile(output, config.to_dict(), console)
    except (DatasetError, RecordsError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    todo = [p for p in problems if p.id not in records]
    console.print(
        f"{len(problems)} problems, {len(problems) - len(todo)} already in {records.path}; engines "
        f"({engines.layout}): explorer {config.explorer_model}, synthesizer {config.synthesizer_model}"
    )
    try:
        if todo:
            solve(todo, engines, config, records, output, args.max_in_flight)
        finished = [records.records[p.id] for p in problems if p.id in records]
        summary = run_summary(finished, config.to_dict())
        (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    except KeyboardInterrupt:
        console.print(
            f"[yellow]interrupted:[/] {len(records.records)} records kept in {records.path}; rerun to resume"
        )
        return 130
    except (EngineError, RuntimeError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}\n{len(records.records)} records kept in {records.path}")
        return 1
    console.print(accuracy_table(summary))
    if args.question:
        record = finished[0]
        synthesized = record["synthesizer"]["answer"] if record["synthesizer"] else None
        console.print(
            f"self-consistency answer: {record['self_consistency']['answer']}\nA2R answer: {synthesized}"
        )
    console.print(f"records: {records.path}\nsummary: {output / 'summary.json'}")
    return 0


def solve(
    todo: list,
    engines: Any,
    config: RunConfig,
    records: RecordFile,
    output: Path,
    max_in_flight: int | None,
) -> None:
    with serve(engines, output / "logs") as running:
        explorer, synthesizer = Stage.attach_roles(running)
        pipeline = Pipeline(config, explorer, synthesizer if config.synthesize else None)
        done: list[dict[str, Any]] = []
        start = time.perf_counter()
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, TextColumn("{task.fields[rates]}"), console=console) as progress:
            task = progress.add_task("problems", total=len(todo), rates="")

            def on_record(record: dict[str, Any]) -> None:
                records.append(record)
                done.append(record)
                rates = progress_line(done, time.perf_counter() - start)
                progress.update(task, advance=1, rates=rates)

            pipeline.run(todo, on_record, max_in_flight)


if __name__ == "__main__":
    sys.exit(main())
