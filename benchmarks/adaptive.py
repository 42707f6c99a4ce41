"""Replay stop policies or the confidence filter on full-length paths, with no engine.

    python -m benchmarks.adaptive runs/chain-n8/records.jsonl --stop majority
    python -m benchmarks.adaptive runs/accuracy/explorations.jsonl --stop agree:3 --keep-confident 0.5 --json
    python -m benchmarks.adaptive Qwen3-4B-aime24.json.gz --n 16 --stop settled --json
    python -m benchmarks.adaptive samples.jsonl --gold-key answer --responses-key responses \\
        --tokenizer Qwen/Qwen3-4B --stop first:4
    python -m benchmarks.adaptive --traces ../shared/data/traces --output docs   # the table and plot

FILE is a records.jsonl of full-length runs (A2R records, the accuracy protocol's explorations), a trace
store (`benchmarks.traces`: many paths per problem with probe answers, gzip'd or not) or, with
--gold-key/--responses-key/--tokenizer, a generic JSONL of samples as `benchmarks.score` reads it (the
tokenizer counts each response's tokens). Each problem's paths are split into disjoint groups of --n (8
groups of 16 for 128 paths) and the policy is replayed on each group as `programs.core.stopping.replay`
drives it: paths decode at one rate, a probe answer is known when its path reaches its token count, and a
stopped path has spent what it decoded by the stop. Every probe is charged --probe-tokens. The confidence
filter needs each path's confidence, which runs made with `--keep-confident` (1.0 keeps every path) record.

With --json it prints one object: problems, groups, explorer_tokens_full, explorer_tokens_kept (what the
policy spends, probes included), probes, saved_percent, cons_before, cons_after (Cons@N of the full groups
and after the policy, averaged per problem), their 95% bootstrap intervals over problems (*_ci, and
cons_change_ci for after minus before), answers_changed (groups whose voted answer changed),
cons_changes_from_ties (groups whose correctness changed only because a tie for the lead was broken the
other way), waves (launched per group, mean) and time_to_answer_percent (the decode position at which the
answer is known, against the full run's longest path). For records with a synthesizer, a2r_before; a2r_after
is null because a synthesis over other references needs the engine (`benchmarks.policies` measures it).
--traces DIR writes the table of every policy at N=8, 16 and 64 over the trace stores in DIR instead
(`benchmarks.frontier`).
"""

from __future__ import annotations

import argparse
import json
import operator
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.score import ScoreInputError
from benchmarks.traces import Trace, read_file, read_samples
from programs.cli import console, show
from programs.core.grading import is_equivalent
from programs.core.stopping import PROBE_TOKENS, STOP_HELP, StopPolicy, most_confident, replay

RESAMPLES = 2000  # bootstrap resamples of the problems


def vote(answers: Sequence[str | None]) -> tuple[str | None, list[str]]:
    """The majority answer of answers already grouped (`Trace.grouped`: one class, one text), and every
    answer tied with it for the lead; ties go to the answer seen first, as `majority_vote` breaks them."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None, []
    top = max(counts.values())
    leaders = [a for a in counts if counts[a] == top]  # in first-seen order
    return leaders[0], leaders


def interval(values: np.ndarray) -> list[float]:
    """The central 95% of bootstrap `values`."""
    low, high = np.percentile(values, [2.5, 97.5])
    return [round(float(low), 2), round(float(high), 2)]


@dataclass(frozen=True)
class Group:
    """One group of paths replayed: its tokens run to the end and as the policy spends them, and its votes."""

    full: int
    spent: int  # probes included
    right_before: bool
    right_after: bool
    changed: bool  # the voted answer changed
    by_tie: bool  # correctness changed only because a tie for the lead was broken the other way
    probes: int
    waves: int
    time: float  # when the answer is known, as a share of the full run's longest path


def replay_group(
    part: Trace, policy: StopPolicy | None, keep_confident: float | None, probe_tokens: int
) -> Group:
    """`policy` (comparing answers by text: `part` is grouped) and the confidence filter on one group."""
    if policy is not None:
        policy.check(len(part.paths))
    result = replay(policy, part.answers, part.lengths, probes=[p.probes for p in part.paths])
    votes = result.votes or part.answers
    if keep_confident is not None:
        try:
            kept = most_confident(part.confidences, result.kept, keep_confident)
        except ValueError as exc:
            raise ScoreInputError(f"{part.where}: {exc}; record it with a --keep-confident 1.0 run") from None
        votes = [v if k else None for v, k in zip(votes, kept, strict=True)]
    before, before_tied = vote(part.answers)
    after, after_tied = vote(votes)
    right_before, right_after = is_equivalent(part.gold, before), is_equivalent(part.gold, after)
    return Group(
        full=sum(part.lengths),
        spent=sum(result.spent) + probe_tokens * result.probes,
        right_before=right_before,
        right_after=right_after,
        changed=before != after,
        by_tie=right_before != right_after and (after in before_tied or before in after_tied),
        probes=result.probes,
        waves=result.waves,
        time=result.answer_at / max(part.lengths) if max(part.lengths) else 1.0,
    )


def evaluate(
    traces: Sequence[Trace],
    policy: StopPolicy | None,
    keep_confident: float | None = None,
    n: int | None = None,
    probe_tokens: int = PROBE_TOKENS,
    resamples: int = RESAMPLES,
) -> dict[str, Any]:
    """What `policy` would have spent and voted on every disjoint group of `n` paths (default: all of a
    problem's paths) against those paths run to their end, averaged per problem, with 95% bootstrap intervals
    over problems. Each probe is charged `probe_tokens`."""
    if policy is not None and policy.probe_every is not None:
        for trace in traces:
            if trace.probe_every is None or policy.probe_every % trace.probe_every:
                recorded = (
                    "has no probes" if trace.probe_every is None else f"probed every {trace.probe_every}"
                )
                raise ScoreInputError(f"{trace.where}: {recorded} tokens, so --stop {policy} cannot replay")
    by_text = policy.with_same(operator.eq) if policy is not None else None
    groups: list[Group] = []
    rows = []  # per problem: full tokens, spent tokens, Cons before, Cons after (fractions)
    left_out = 0
    for trace in traces:
        parts = trace.grouped().groups(n or len(trace.paths))
        left_out += len(trace.paths) - sum(len(part.paths) for part in parts)
        mine = [replay_group(part, by_text, keep_confident, probe_tokens) for part in parts]
        groups += mine
        rows.append(
            (
                sum(g.full for g in mine),
                sum(g.spent for g in mine),
                sum(g.right_before for g in mine) / len(mine),
                sum(g.right_after for g in mine) / len(mine),
            )
        )
    table = np.array(rows, dtype=float)
    full_total, spent_total = table[:, 0].sum(), table[:, 1].sum()
    picks = np.random.default_rng(0).integers(0, len(rows), (resamples, len(rows)))
    sampled = table[picks]  # resamples x problems x columns
    saved = 100.0 * (1 - sampled[..., 1].sum(1) / np.maximum(sampled[..., 0].sum(1), 1))
    summary = {
        "problems": len(rows),
        "groups": len(groups),
        "paths_left_out": left_out,  # of problems whose path count is not a multiple of N
        "explorer_tokens_full": int(full_total),
        "explorer_tokens_kept": int(spent_total),
        "probes": sum(g.probes for g in groups),
        "probe_tokens_each": probe_tokens,
        "saved_percent": 100.0 * (1 - spent_total / full_total) if full_total else 0.0,
        "saved_percent_ci": interval(saved),
        "cons_before": 100.0 * table[:, 2].mean(),
        "cons_before_ci": interval(100.0 * sampled[..., 2].mean(1)),
        "cons_after": 100.0 * table[:, 3].mean(),
        "cons_after_ci": interval(100.0 * sampled[..., 3].mean(1)),
        "cons_change_ci": interval(100.0 * (sampled[..., 3] - sampled[..., 2]).mean(1)),
        "answers_changed": sum(g.changed for g in groups),
        "cons_changes_from_ties": sum(g.by_tie for g in groups),
        "waves": float(np.mean([g.waves for g in groups])),
        "time_to_answer_percent": 100.0 * float(np.mean([g.time for g in groups])),
    }
    synthesized = [t.synthesizer_correct for t in traces if t.synthesizer_correct is not None]
    if len(synthesized) == len(traces) and n in (None, len(traces[0].paths)):
        summary.update(a2r_before=100.0 * sum(synthesized) / len(traces), a2r_after=None)
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.adaptive", description=__doc__.split("\n")[0])
    parser.add_argument(
        "files", type=Path, nargs="*", metavar="FILE", help="records.jsonl, trace store, or samples JSONL"
    )
    parser.add_argument("--stop", metavar="POLICY", help=STOP_HELP)
    parser.add_argument(
        "--keep-confident", type=float, metavar="FRACTION", help="keep the most confident paths"
    )
    parser.add_argument(
        "--n", type=int, help="paths per group: disjoint groups of N per problem (default: all)"
    )
    parser.add_argument(
        "--probe-tokens",
        type=int,
        default=PROBE_TOKENS,
        metavar="T",
        help=f"tokens charged per probe (default {PROBE_TOKENS}: the probe prompt's uncached suffix plus the "
        "answer's few decoded tokens; a live run records the real figure)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    table = parser.add_argument_group("the table over trace stores")
    table.add_argument("--traces", type=Path, metavar="DIR", help="replay every policy on the stores in DIR")
    table.add_argument("--output", type=Path, default=Path("docs"), help="folder for the table and plot")
    samples = parser.add_argument_group("generic samples (as benchmarks.score reads them)")
    samples.add_argument("--gold-key", help="key of the gold answer")
    samples.add_argument("--responses-key", help="key of the list of raw model responses")
    samples.add_argument("--tokenizer", help="tokenizer that counts each response's tokens")
    args = parser.parse_args(argv)
    generic = [args.gold_key, args.responses_key, args.tokenizer]
    if any(generic) and not all(generic):
        parser.error("samples need all three of --gold-key, --responses-key and --tokenizer")
    if args.traces is not None:
        if args.files or args.stop or args.keep_confident is not None:
            parser.error("--traces replays every policy on its own: give no FILE, --stop or --keep-confident")
        return args
    if not args.files:
        parser.error("give a FILE to replay (or --traces DIR for the table)")
    if args.stop is None and args.keep_confident is None:
        parser.error("give a policy to replay: --stop POLICY and/or --keep-confident FRACTION")
    if args.n is not None and args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")
    if args.probe_tokens < 0:
        parser.error(f"--probe-tokens must be at least 0, got {args.probe_tokens}")
    try:
        args.policy = StopPolicy.parse(args.stop) if args.stop else None
    except ValueError as exc:
        parser.error(str(exc))
    return args


def note(message: str) -> None:
    """A note beside the results, on stderr so that --json output stays one object."""
    print(f"note: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.traces is not None:
        from benchmarks.frontier import write_table

        return write_table(args.traces, args.output, args.probe_tokens)
    try:
        if args.gold_key:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
            traces = [
                t
                for f in args.files
                for t in read_samples(f, args.gold_key, args.responses_key, tokenizer, note)
            ]
        else:
            traces = [t for f in args.files for t in read_file(f, note)]
        if not traces:
            raise ScoreInputError(f"no finished problems in {', '.join(map(str, args.files))}")
        summary = evaluate(traces, args.policy, args.keep_confident, args.n, args.probe_tokens)
    except (ScoreInputError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, allow_nan=False))
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
