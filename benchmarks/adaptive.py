"""Replay a stop policy or the confidence filter on finished full-length runs, with no engine.

    python -m benchmarks.adaptive runs/chain-n8/records.jsonl --stop majority
    python -m benchmarks.adaptive runs/accuracy/explorations.jsonl --stop agree:3 --keep-confident 0.5 --json
    python -m benchmarks.adaptive samples.jsonl --gold-key answer --responses-key responses \\
        --tokenizer Qwen/Qwen3-4B --stop first:4

FILE is any records.jsonl of full-length runs (A2R records, the accuracy protocol's explorations) or, with
--gold-key/--responses-key/--tokenizer, a generic JSONL of samples as `benchmarks.score` reads it (the
tokenizer counts each response's tokens). The N paths of a problem are taken to decode at one rate: they
finish in order of length (ties by index), and a stopped path has spent min(its length, the length decoded
when the stop fired). The confidence filter needs each path's confidence, which runs made with
`--keep-confident` (1.0 keeps every path) record. With --json it prints one object: explorer_tokens_full,
explorer_tokens_kept (what the policy would have spent), saved_percent, cons_before, cons_after,
answers_changed (problems whose voted answer changed), problems, and for records with a synthesizer
a2r_before; a2r_after is null, with the count of problems whose references would change, because a
synthesis over other references needs the engine (`benchmarks.policies` measures it live).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.score import ScoreInputError, read_problems
from programs.cli import console, show
from programs.core.grading import is_equivalent
from programs.core.jsonl import JsonlError, read_jsonl
from programs.core.metrics import majority_vote
from programs.core.records import PathRecord
from programs.core.stopping import STOP_HELP, StopPolicy, most_confident, replay


@dataclass(frozen=True)
class Trace:
    """One problem's full-length paths, as replay needs them."""

    where: str  # file:line, for messages
    gold: str
    answers: list[str | None]
    lengths: list[int]
    confidences: list[float | None]
    synthesizer_correct: bool | None = None

    def first(self, n: int) -> Trace:
        if len(self.answers) < n:
            raise ScoreInputError(f"{self.where}: {len(self.answers)} paths, fewer than --n {n}")
        return Trace(self.where, self.gold, self.answers[:n], self.lengths[:n], self.confidences[:n])


def read_records(path: Path) -> list[Trace]:
    """Problems of a records file; failed problems are skipped, and a run that stopped paths is refused."""
    traces = []
    try:
        rows = read_jsonl(path)
    except (OSError, JsonlError) as exc:
        raise ScoreInputError(f"{path}: cannot read: {exc}") from exc
    for line, row in rows:
        where = f"{path}:{line}"
        if "paths" not in row or "gold" not in row:
            raise ScoreInputError(
                f"{where}: not a run record (no 'paths' or 'gold'); for samples give --gold-key"
            )
        if row.get("error"):
            continue
        paths = [PathRecord.from_json(p) for p in row["paths"]]
        if any(p.stopped_by or not p.kept for p in paths):
            raise ScoreInputError(
                f"{where}: a policy already dropped paths here; replay needs full-length runs"
            )
        synthesizer = row.get("synthesizer")
        traces.append(
            Trace(
                where,
                row["gold"],
                [p.answer for p in paths],
                [p.completion_tokens for p in paths],
                [p.confidence for p in paths],
                bool(synthesizer["correct"]) if synthesizer else None,
            )
        )
    return traces


def read_samples(path: Path, gold_key: str, responses_key: str, tokenizer: Any) -> list[Trace]:
    problems = read_problems(path, gold_key, responses_key, responses=True)
    return [
        Trace(
            f"{path}:{p.line}",
            p.gold,
            p.answers,
            [len(tokenizer.encode(r, add_special_tokens=False)) for r in p.responses or []],
            [None] * len(p.answers),
        )
        for p in problems
    ]


def same_answer(a: str | None, b: str | None) -> bool:
    """Two votes name the same answer: both none, or equivalent."""
    return a is None and b is None or (a is not None and b is not None and is_equivalent(a, b))


def evaluate(
    traces: Sequence[Trace], policy: StopPolicy | None, keep_confident: float | None
) -> dict[str, Any]:
    """What the policy would have spent and voted on every problem, against the full-length run."""
    full = kept_tokens = cons_before = cons_after = changed = references_changed = 0
    for trace in traces:
        if policy is not None:
            policy.check(len(trace.answers))
        result = replay(policy, trace.answers, trace.lengths)
        kept = result.kept
        if keep_confident is not None:
            try:
                kept = most_confident(trace.confidences, kept, keep_confident)
            except ValueError as exc:
                raise ScoreInputError(
                    f"{trace.where}: {exc}; record it with a --keep-confident 1.0 run"
                ) from None
        before = majority_vote(trace.answers)
        after = majority_vote([a for a, k in zip(trace.answers, kept, strict=True) if k])
        full += sum(trace.lengths)
        kept_tokens += sum(result.spent)
        cons_before += is_equivalent(trace.gold, before)
        cons_after += is_equivalent(trace.gold, after)
        changed += not same_answer(before, after)
        references_changed += not all(kept)
    synthesized = [t.synthesizer_correct for t in traces if t.synthesizer_correct is not None]
    count = len(traces)
    summary = {
        "problems": count,
        "explorer_tokens_full": full,
        "explorer_tokens_kept": kept_tokens,
        "saved_percent": 100.0 * (1 - kept_tokens / full) if full else 0.0,
        "cons_before": 100.0 * cons_before / count,
        "cons_after": 100.0 * cons_after / count,
        "answers_changed": changed,
    }
    if len(synthesized) == count:
        summary.update(
            a2r_before=100.0 * sum(synthesized) / count, a2r_after=None, references_changed=references_changed
        )
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.adaptive", description=__doc__.split("\n")[0])
    parser.add_argument("files", type=Path, nargs="+", metavar="FILE", help="records.jsonl, or samples JSONL")
    parser.add_argument("--stop", metavar="POLICY", help=STOP_HELP)
    parser.add_argument(
        "--keep-confident", type=float, metavar="FRACTION", help="keep the most confident paths"
    )
    parser.add_argument("--n", type=int, help="replay the first N paths of each problem (default: all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    samples = parser.add_argument_group("generic samples (as benchmarks.score reads them)")
    samples.add_argument("--gold-key", help="key of the gold answer")
    samples.add_argument("--responses-key", help="key of the list of raw model responses")
    samples.add_argument("--tokenizer", help="tokenizer that counts each response's tokens")
    args = parser.parse_args(argv)
    generic = [args.gold_key, args.responses_key, args.tokenizer]
    if any(generic) and not all(generic):
        parser.error("samples need all three of --gold-key, --responses-key and --tokenizer")
    if args.stop is None and args.keep_confident is None:
        parser.error("give a policy to replay: --stop POLICY and/or --keep-confident FRACTION")
    if args.n is not None and args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")
    try:
        args.policy = StopPolicy.parse(args.stop) if args.stop else None
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.gold_key:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
            traces = [
                t for f in args.files for t in read_samples(f, args.gold_key, args.responses_key, tokenizer)
            ]
        else:
            traces = [t for f in args.files for t in read_records(f)]
        if not traces:
            raise ScoreInputError(f"no finished problems in {', '.join(map(str, args.files))}")
        if args.n:
            traces = [t.first(args.n) for t in traces]
        summary = evaluate(traces, args.policy, args.keep_confident)
    except (ScoreInputError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary))
        return 0
    from rich.table import Table

    table = Table(title=f"replay: --stop {args.stop} --keep-confident {args.keep_confident}")
    table.add_column("")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, f"{value:.2f}" if isinstance(value, float) else str(value))
    show(table)
    console.print("a2r_after needs the synthesizer: `python -m benchmarks.policies` measures it live")
    return 0


if __name__ == "__main__":
    sys.exit(main())
