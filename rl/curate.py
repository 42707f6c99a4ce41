"""Curate synthesizer RL data: sample up to 16 explorer paths per query and keep the queries synthesis can help.

    python -m rl.curate --dataset data/skywork_math.jsonl --samples 16 --output data/rl/curated
    python -m rl.curate --dataset hf:REPO:SPLIT --limit 10000 --output data/rl/curated   # GPU: the paper profile's explorer

The explorer runs through the A2R pipeline itself (`programs.pipeline.Pipeline`, synthesis off), so candidates
are sampled exactly as at inference. A candidate is valid when its answer part holds a boxed answer (and,
for a thinking model, its thought was closed). A query is kept when its valid candidates leave the
synthesizer something to decide (`KeepRule`; default: at least one right and one wrong). Every query gets
one line in `OUTPUT/curated.jsonl`, kept or not, written as soon as it is explored; a rerun skips the queries
already there. `rl.dataset` turns the kept ones into training prompts.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.launch import EngineError, serve
from programs import cli, planning
from programs.cli import console
from programs.core.config import ADAPTIVE_FIELDS, RunConfig
from programs.core.flags import add_dataclass_args, dataclass_from_args
from programs.core.jsonl import RecordFile, RecordsError
from programs.core.records import Problem, ProblemRecord
from programs.datasets import DatasetError, load_problems
from programs.engine_handle import EngineHandle
from programs.pipeline import Pipeline

RECORDS = "curated.jsonl"
CANDIDATE_FIELDS = ("answer_part", "answer", "correct", "completion_tokens", "finish_reason", "seed")


@dataclass(frozen=True)
class KeepRule:
    """Which explored queries become training queries, from the correctness of their valid candidates."""

    min_valid: int = field(
        default=1, metadata={"help": "keep queries with at least this many valid candidates"}
    )
    min_correct: int = field(
        default=1, metadata={"help": "... and at least this many correct ones (0: keep all-wrong queries)"}
    )
    min_wrong: int = field(
        default=1, metadata={"help": "... and at least this many wrong ones (0: keep all-right queries)"}
    )

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")

    def verdict(self, correct: list[bool]) -> str | None:
        """Why a query with valid candidates of this correctness is dropped, or None to keep it."""
        right = sum(correct)
        if len(correct) < self.min_valid:
            return "too_few_valid"
        if right < self.min_correct:
            return "too_few_correct"
        if len(correct) - right < self.min_wrong:
            return "too_few_wrong"
        return None


def invalid_reason(path: dict[str, Any], thinking: bool) -> str | None:
    """Why an explorer path (a pipeline path record) cannot be a reference, or None when it can.

    A thinking model's path that never closed its thought has no answer part, only a cut-off trace, even if a
    boxed guess appears in it.
    """
    if thinking and path["answer_part_fallback"]:
        return "unclosed_think"
    if path["answer"] is None:
        return "no_answer"
    return None


def curated_record(problem_record: dict[str, Any], rule: KeepRule, thinking: bool) -> dict[str, Any]:
    """One query's line: its valid candidates (answer parts only, not the long traces) and the verdict."""
    candidates, invalid = [], Counter()
    for path in problem_record["paths"]:
        reason = invalid_reason(path, thinking)
        if reason:
            invalid[reason] += 1
        else:
            candidates.append({k: path[k] for k in CANDIDATE_FIELDS})
    reason = (
        "failed" if problem_record.get("error") else rule.verdict([bool(c["correct"]) for c in candidates])
    )
    return {
        "id": problem_record["id"],
        "problem": problem_record["problem"],
        "gold": problem_record["gold"],
        "config": problem_record["config"],
        "kept": reason is None,
        "reason": reason,
        "sampled": len(problem_record["paths"]),
        "candidates": candidates,
        "invalid": dict(invalid),
        "timings": problem_record["timings"],
        **({"error": problem_record["error"]} if problem_record.get("error") else {}),
    }


def curate(
    problems: list[Problem],
    config: RunConfig,
    explorer: EngineHandle,
    records: RecordFile,
    rule: KeepRule,
    max_in_flight: int | None = None,
) -> None:
    """Explore every problem not yet in `records` and append its curated line as soon as it is done."""
    if config.synthesize:
        raise ValueError("curation explores only: give a RunConfig with synthesize=False")
    todo = [p for p in problems if p.id not in records]

    def keep(problem_record: ProblemRecord) -> None:
        records.append(curated_record(problem_record.to_json(), rule, config.thinking))

    Pipeline(config, explorer, None).run(todo, keep, max_in_flight)


def summary(records: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    kept = [r for r in records if r["kept"]]
    invalid = Counter()
    for record in records:
        invalid.update(record["invalid"])
    return {
        "config": config,
        "queries": len(records),
        "kept": len(kept),
        "dropped": dict(Counter(r["reason"] for r in records if not r["kept"])),
        "sampled_paths": sum(r["sampled"] for r in records),
        "valid_candidates": sum(len(r["candidates"]) for r in records),
        "invalid_paths": dict(invalid),
        "kept_correct_share": (
            sum(c["correct"] for r in kept for c in r["candidates"]) / sum(len(r["candidates"]) for r in kept)
            if kept
            else None
        ),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rl.curate", description=__doc__.split("\n\n")[0])
    run = parser.add_argument_group("curation")
    run.add_argument(
        "--dataset", required=True, help="shipped name, a .jsonl/.parquet file, or hf:REPO[:SPLIT]"
    )
    run.add_argument("--limit", type=int, help="only the first LIMIT queries")
    run.add_argument("--samples", type=int, default=16, help="explorer paths per query")
    run.add_argument("--output", type=Path, required=True, help="folder for curated.jsonl and summary.json")
    run.add_argument(
        "--max-in-flight", type=int, help="cap on queries explored at once (default: from KV pool)"
    )
    add_dataclass_args(parser.add_argument_group("which queries to keep"), KeepRule)
    cli.add_engine_args(parser, skip=cli.EXPLORER_ONLY_SKIP)
    # Curation needs every path to its end, and never synthesizes: no adaptive exploration.
    skip = ("synthesizer_max_tokens", "synthesize", "shuffle_references", *ADAPTIVE_FIELDS)
    cli.add_run_args(parser, skip=skip)
    args = parser.parse_args(argv)
    cli.check_positive(parser, args, "samples", "max_in_flight", "limit")
    return args


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run, parse_args(argv))


def run(args: argparse.Namespace) -> int:
    with cli.refusing(DatasetError, RecordsError, ValueError):
        rule = dataclass_from_args(KeepRule, args)
        problems = load_problems(args.dataset, args.limit)
        engines, profile = planning.explorer_engines(args)
        model = engines.explorer.model or engines.explorer.base_url
        config = RunConfig.from_args(
            args,
            budgets=planning.budgets(profile),
            n=args.samples,
            explorer_model=model,
            synthesizer_model=model,
            synthesize=False,
            extra={"keep": asdict(rule)},
        )
        records = RecordFile(args.output, config.to_dict(), console, name=RECORDS)
        records.check_problems((p.id, p) for p in problems)
    todo = [p for p in problems if p.id not in records]
    console.print(
        f"{len(problems)} queries, {len(problems) - len(todo)} already in {records.path}; "
        f"{args.samples} explorer paths each from {config.explorer_model}"
    )
    try:
        if todo:
            cli.log_frontend_warnings(args.output / "logs")
            with serve(engines, args.output / "logs") as running:
                curate(todo, config, EngineHandle.attach(running.explorer), records, rule, args.max_in_flight)
    except (KeyboardInterrupt, EngineError, RuntimeError, ValueError) as exc:
        return cli.stopped(exc, f"{len(records.records)} queries kept in {records.path}")
    result = summary([records.records[p.id] for p in problems if p.id in records], config.to_dict())
    (args.output / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    console.print(
        f"kept {result['kept']} of {result['queries']} queries (dropped: {result['dropped'] or 'none'}); "
        f"{result['valid_candidates']} valid candidates of {result['sampled_paths']} paths "
        f"(invalid: {result['invalid_paths'] or 'none'})\nrecords: {records.path}"
    )
    return 0


if __name__ == "__main__":
    cli.exit_with(main())
