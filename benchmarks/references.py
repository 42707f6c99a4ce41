"""Does a synthesizer read its references? Show it real explorer answer parts in five conditions and measure.

    python -m benchmarks.references --n 3 --paths 8 --limit 3 --json    # CPU: a first look, the offline pair
    python -m benchmarks.references --dataset chain:0:250 --limit 100    # CPU: the offline pair's profile
    python -m benchmarks.references --explorations runs/accuracy/explorations.jsonl \\
        --synthesizer-url http://gpu-host:30000 --limit 100              # any synthesizer, served anywhere

References are the answer parts of real explorer paths: read from `--explorations` (an A2R run's
records.jsonl or the accuracy protocol's explorations.jsonl; only the synthesizer is then served), or made
here by exploring `--paths` per problem (OUTPUT/explorations.jsonl, whose file later probes can reuse).
Problems with both a right and a wrong part are probed, the first `--limit` of them (default: all), in five
conditions (`benchmarks.conditions`): all_right, agreeing_wrong, wrong_majority, right_majority, solo. One
synthesis per problem and condition, its references drawn and shuffled with `--seed`, each written to
OUTPUT/references.jsonl as it finishes (a rerun resumes). Per condition: the share right, the share that
copied the references' majority answer and the share that gave anything else, with Wilson 95% intervals,
and a verdict (`benchmarks.verdict` states its thresholds). OUTPUT/summary.json holds what `--json` prints:
{"conditions": {name: {right, copied, other, ci, problems, rewritten, reused}}, "verdict", "because",
"thresholds", "config"}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.progress import Progress, TimeElapsedColumn
from rich.table import Table

from benchmarks.conditions import (
    CONDITIONS,
    MIN_N,
    Condition,
    ProblemParts,
    ReferencesError,
    build_conditions,
    read_parts,
)
from benchmarks.verdict import THRESHOLDS, Measures, Outcome, verdict
from engine.launch import EngineError, check_remote, serve
from engine.layout import EngineConfig, Engines
from programs import cli, planning
from programs.cli import console
from programs.core.config import RunConfig
from programs.core.flags import dataclass_from_args
from programs.core.grading import is_equivalent
from programs.core.jsonl import RecordFile, RecordsError
from programs.core.records import Problem, ProblemRecord, SynthesisRecord, graded
from programs.datasets import DatasetError, load_problems
from programs.engine_handle import EngineHandle
from programs.executor import TwoStageExecutor
from programs.pipeline import Pipeline
from programs.profile import Profile, choose_profile
from programs.synthesizer import run_synthesizer

# The shared run flags this probe has no use for: it never stops paths early, always synthesizes, and
# always shuffles its references (seeded).
NOT_HERE = (
    "synthesize",
    "shuffle_references",
    "stop",
    "keep_confident",
    "online_confidence",
    "skip_synthesis_if_unanimous",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.references", description=__doc__.split("\n")[0]
    )
    probe = parser.add_argument_group("probe")
    probe.add_argument("--n", type=int, default=4, help=f"references per synthesis (at least {MIN_N})")
    source = probe.add_mutually_exclusive_group()
    source.add_argument(
        "--explorations", type=Path, metavar="FILE", help="records whose answer parts are the references"
    )
    source.add_argument("--dataset", help="problems to explore for references (default: the profile's first)")
    probe.add_argument(
        "--paths",
        type=int,
        default=16,
        help="explorer paths per problem, more than --n (without --explorations)",
    )
    probe.add_argument(
        "--limit", type=int, help="probe this many problems with right and wrong parts (default: all)"
    )
    probe.add_argument("--output", type=Path, help="run folder (default: runs/references-<source>-n<N>)")
    probe.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    cli.add_engine_args(parser, skip=("one_model",))
    cli.add_run_args(parser, skip=NOT_HERE)
    args = parser.parse_args(argv)
    cli.check_positive(parser, args, "limit")
    if args.n < MIN_N:
        parser.error(f"--n must be at least {MIN_N} (a majority of N-1 over 1 needs it), got {args.n}")
    if not args.explorations and args.paths <= args.n:
        parser.error(
            f"--paths must be more than --n {args.n}, so that right and wrong parts exist; got {args.paths}"
        )
    if args.explorations and (args.explorer_model or args.explorer_url):
        parser.error("--explorations gives the references: drop --explorer-model / --explorer-url")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with messages_to_stderr(args.json):
        return cli.run_main(run, args)


@contextlib.contextmanager
def messages_to_stderr(on: bool) -> Iterator[None]:
    """With --json, stdout carries the one object alone: progress and messages go to stderr."""
    previous = console.stderr
    console.stderr = on or previous
    try:
        yield
    finally:
        console.stderr = previous


def synthesizer_alone(args: argparse.Namespace, device: str) -> tuple[Profile, Engines]:
    """The synthesizer's engine only, for references read from a file: the one named, or the profile's."""
    named = args.synthesizer_model or args.synthesizer_url
    profile = choose_profile(args.profile, device, bool(named))
    model = args.synthesizer_model
    if not named:
        offline = planning.build_offline_models(profile, args)
        model = str(offline.synthesizer) if offline else profile.synthesizer_model
    config = dataclass_from_args(
        EngineConfig,
        args,
        device=device,
        explorer_model=model,
        explorer_url=args.synthesizer_url,
        synthesizer_model=None,
        synthesizer_url=None,
    )
    return profile, planning.plan_here(config, device)


def plan(args: argparse.Namespace) -> tuple[Engines, RunConfig, str]:
    """The engines, the probe's run configuration (N = --paths for exploring) and the references' source."""
    if args.explorations:
        profile, engines = synthesizer_alone(args, planning.detect_device(args.device))
        source = str(args.explorations)
    else:
        profile, device = planning.profile_for(args)
        engines = planning.plan_engines(args, profile, device, planning.build_offline_models(profile, args))
        source = args.dataset or profile.datasets[0]
    for spec in {id(s): s for s in (engines.explorer, engines.synthesizer)}.values():
        if not spec.launched:
            check_remote(spec)  # before anything is explored: a synthesizer that does not answer is bad input
    models = planning.role_models(engines)
    if args.explorations:
        models["explorer_model"] = source
    config = RunConfig.from_args(
        args,
        budgets=planning.budgets(profile),
        n=args.paths,
        shuffle_references=True,
        synthesize=False,
        **models,
    )
    return engines, config, source


def probe_config(config: RunConfig, n: int, source: str) -> dict[str, Any]:
    """What references.jsonl's records were made with: a rerun resumes only the same probe."""
    return {**config.to_dict(), "n": n, "synthesize": True, "extra": {"references": source}}


def chosen(found: list[ProblemParts], limit: int | None, source: str) -> list[ProblemParts]:
    """The first `limit` problems with a right and a wrong part; fewer than asked is an error."""
    usable = [p for p in found if p.usable]
    asked = limit or 1
    if len(usable) < asked:
        raise ReferencesError(
            f"{source}: {len(usable)} of {len(found)} problems have both a right and a wrong answer part, "
            f"fewer than the {asked} asked for (--limit); explore more problems or paths"
        )
    return usable[:limit]


def explore(
    args: argparse.Namespace, pipeline: Pipeline, explorations: RecordFile, dataset: str
) -> list[ProblemParts]:
    """Explore the dataset's problems in order, in batches, until `--limit` of them are usable (or all are
    explored); each exploration is appended to `explorations` as it ends. The problems found are in the
    file's order, so a later probe given that file chooses the same ones."""
    problems = load_problems(dataset)
    explorations.check_problems((p.id, p) for p in problems)

    def found() -> list[ProblemParts]:  # in the file's order, as a later `--explorations` run reads them
        return read_parts(explorations.path) if explorations.records else []

    while True:
        usable = sum(p.usable for p in found())
        todo = [p for p in problems if p.id not in explorations]
        if not todo or (args.limit and usable >= args.limit):
            return found()
        explore_batch(pipeline, todo[: args.limit - usable] if args.limit else todo, explorations)


def explore_batch(pipeline: Pipeline, todo: list[Problem], explorations: RecordFile) -> None:
    with Progress(*Progress.get_default_columns(), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(f"exploring {pipeline.config.n} paths per problem", total=len(todo))

        def on_record(record: ProblemRecord) -> None:
            explorations.append(record.to_json())
            bar.advance(task)

        pipeline.run(todo, on_record)


def synthesize_all(
    problems: list[ProblemParts], n: int, config: RunConfig, synthesizer: EngineHandle, records: RecordFile
) -> None:
    """One synthesis per problem and condition not yet in `records`, each appended as it finishes."""
    records.check_problems((record_id(p.problem.id, c), p.problem) for p in problems for c in CONDITIONS)
    todo = {
        p.problem.id: [
            c for c in build_conditions(p, n, config.seed) if record_id(p.problem.id, c.name) not in records
        ]
        for p in problems
    }
    count = sum(map(len, todo.values()))

    def syntheses(parts: ProblemParts, conditions: list[Condition]) -> list[Callable[[], Any]]:
        def call(condition: Condition) -> tuple[Condition, SynthesisRecord]:
            seed = config.path_seed(f"{parts.problem.id}/{condition.name}", 0)
            texts = [r.text for r in condition.references]
            return condition, run_synthesizer(synthesizer, parts.problem.problem, texts, config, seed=seed)

        return [lambda c=c: call(c) for c in conditions]

    slots = synthesizer.in_flight(config.synthesizer.max_tokens)
    with Progress(*Progress.get_default_columns(), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(f"syntheses, {len(CONDITIONS)} conditions per problem", total=count)

        def done(parts: ProblemParts, result: tuple[Condition, SynthesisRecord], seconds: float) -> None:
            records.append(result_line(parts, *result, records.config, seconds))
            bar.advance(task)

        TwoStageExecutor(1, slots).run(
            [p for p in problems if todo[p.problem.id]],
            lambda p: todo[p.problem.id],
            syntheses,
            on_synthesized=done,
        )


def record_id(problem_id: str, condition: str) -> str:
    """The key of one synthesis in references.jsonl."""
    return f"{problem_id}/{condition}"


def result_line(
    parts: ProblemParts, condition: Condition, synthesis: SynthesisRecord, config: dict, seconds: float
) -> dict[str, Any]:
    """references.jsonl's line for one synthesis: what it was shown, what it answered, how that scores."""
    problem = parts.problem
    rid = record_id(problem.id, condition.name)
    synthesis = graded(synthesis, problem.answer, rid)
    majority = condition.majority
    return {
        "id": rid,
        "problem_id": problem.id,
        "condition": condition.name,
        "problem": problem.problem,
        "gold": problem.answer,
        "config": config,
        "majority": majority,
        # As drawn; the prompt's order is synthesizer.reference_order.
        "references": [asdict(r) for r in condition.references],
        "synthesizer": synthesis.to_json(),
        "right": bool(synthesis.correct),
        "copied": None if majority is None else is_equivalent(majority, synthesis.answer),
        "timings": {"synthesize_s": seconds},
    }


def summarize(lines: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """summary.json (and --json): each condition's profile and the verdict, from references.jsonl's lines."""
    profiles = {}
    for name in CONDITIONS:
        mine = [line for line in lines if line["condition"] == name]
        outcomes = [Outcome(line["right"], line["copied"]) for line in mine]
        rewritten = sum(r["rewritten_from"] is not None for line in mine for r in line["references"])
        reused = sum(r["reused"] for line in mine for r in line["references"])
        profiles[name] = Measures.of(outcomes, rewritten, reused)
    found = verdict(profiles)
    return {
        "conditions": {name: p.to_json() for name, p in profiles.items()},
        "verdict": found.label,
        "because": found.because,
        "thresholds": THRESHOLDS,
        "config": config,
    }


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"does {summary['config']['synthesizer_model']} read its references?")
    for column in ("condition", "problems", "right %", "copied majority %", "other %", "rewritten", "reused"):
        table.add_column(column, justify="left" if column == "condition" else "right")
    for name, row in summary["conditions"].items():
        shares = (share_cell(row, key) for key in ("right", "copied", "other"))
        table.add_row(name, str(row["problems"]), *shares, str(row["rewritten"]), str(row["reused"]))
    return table


def share_cell(row: dict[str, Any], key: str) -> str:
    """`12.5 [5.5-26.1]`: a share in percent and its interval; `-` where there is none (solo's copied)."""
    if row[key] is None:
        return "-"
    low, high = row["ci"][key]
    return f"{row[key]:.1f} [{low:.1f}-{high:.1f}]"


def run(args: argparse.Namespace) -> int:
    problems: list[ProblemParts] = []
    explorations: RecordFile | None = None
    with cli.refusing(DatasetError, RecordsError, ReferencesError, EngineError, ValueError):
        if args.explorations:  # first: the file is cheap to check, and starting engines is not
            problems = chosen(read_parts(args.explorations), args.limit, str(args.explorations))
        engines, config, source = plan(args)
        output = args.output or cli.default_output(source, args.n, kind="references")
        records = RecordFile(output, probe_config(config, args.n, source), console, name="references.jsonl")
        if not args.explorations:
            explorations = RecordFile(output, config.to_dict(), console, name="explorations.jsonl")
    roles = f"synthesizer {config.synthesizer_model}"
    if explorations is not None:
        roles += f", explorer {config.explorer_model} ({config.n} paths per problem)"
    console.print(f"references from {source}; engines ({engines.layout}): {roles}")
    try:
        cli.log_frontend_warnings(output / "logs")
        with serve(engines, output / "logs") as running:
            explorer, synthesizer = EngineHandle.attach_roles(running)
            if explorations is not None:
                found = explore(args, Pipeline(config, explorer, None), explorations, source)
                problems = chosen(found, args.limit, str(explorations.path))
            synthesize_all(problems, args.n, config, synthesizer, records)
    except (DatasetError, ReferencesError) as exc:
        cli.print_error(exc)
        return 2
    except (KeyboardInterrupt, RuntimeError, ValueError) as exc:  # RuntimeError: an engine (EngineError)
        return cli.stopped(exc, f"finished explorations and syntheses are kept in {output}")
    lines = [records.records[record_id(p.problem.id, c)] for p in problems for c in CONDITIONS]
    summary = summarize(lines, records.config)
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary))
        return 0
    cli.show(summary_table(summary))
    console.print(f"[bold]verdict: {summary['verdict']}[/] ({summary['because']})")
    console.print(f"thresholds: {THRESHOLDS}")
    console.print(f"records: {records.path}\nsummary: {output / 'summary.json'}")
    return 0


if __name__ == "__main__":
    cli.exit_with(main())
