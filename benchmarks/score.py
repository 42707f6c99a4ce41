"""Score any JSONL file of sampled answers with the project's metrics.

    python -m benchmarks.score FILE --gold-key K (--responses-key K | --answers-key K) [--n N] [--json]

Each line of FILE is one problem: its gold answer under --gold-key (a string or a finite number) and its k
samples as a list, either raw model responses under --responses-key (the answer is the last `\\boxed{...}`
after the last `</think>`, or in the whole response when there is none) or already-extracted answers under
--answers-key (a string, or null for no answer).
Reported in percent, averaged over problems (conventions in full in `programs.core.metrics`):
- pass@1: the fraction of correct samples (math-verify equivalence to the gold answer, gold first);
- pass@N: the unbiased estimate 1 - C(k-c, N)/C(k, N) from all k samples, c of them correct;
- cons@N: majority-vote correctness over the k/N disjoint consecutive groups of N samples; samples with no
  answer do not vote, ties go to the answer seen first, a group where nobody answered is wrong.
N defaults to k, which must then be the same on every line; k must always be a multiple of N.
With --json it prints one object whose keys are exactly "pass@1", "cons@N" and "pass@N" (N filled in) plus
the counts "problems", "samples" and "no_answer".
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from programs.core.grading import extract_answer
from programs.core.jsonl import JsonlError, read_jsonl
from programs.core.metrics import Summary, aggregate, score_problem


class ScoreInputError(ValueError):
    """The input file cannot be scored; the message names the file and, where it applies, the line."""


@dataclass(frozen=True)
class SampledProblem:
    """One line of the input: a gold answer and the answers of its k samples (None: no answer)."""

    line: int  # 1-based line in the input file, for error messages
    gold: str
    answers: list[str | None]
    responses: list[str] | None = None  # the raw samples, when they were responses


def gold_field(value: Any, where: str, key: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ScoreInputError(f"{where}: gold answer {key!r} must be a string or a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):  # JSON's NaN and Infinity parse as floats
        raise ScoreInputError(f"{where}: gold answer {key!r} must be a finite number, got {value!r}")
    gold = str(value).strip()
    if not gold:
        raise ScoreInputError(f"{where}: gold answer {key!r} is empty")
    return gold


def _answers(samples: Any, where: str, key: str, responses: bool) -> list[str | None]:
    if not isinstance(samples, list) or not samples:
        raise ScoreInputError(f"{where}: {key!r} must be a non-empty list of samples, got {samples!r:.80}")
    allowed = (str,) if responses else (str, type(None))
    for i, sample in enumerate(samples):
        if not isinstance(sample, allowed):
            kind = "responses must be strings" if responses else "answers must be strings or null"
            raise ScoreInputError(f"{where}: {key!r}[{i}] is {type(sample).__name__}; {kind}")
    return [extract_answer(s) for s in samples] if responses else list(samples)


def read_problems(
    path: Path,
    gold_key: str,
    samples_key: str,
    responses: bool,
    on_cut_line: Callable[[str], None] | None = None,
) -> list[SampledProblem]:
    """Read and check every line of `path`; `responses` says whether samples are raw responses, and
    `on_cut_line` drops a cut-off last line (`read_jsonl`)."""
    try:
        rows = read_jsonl(path, on_cut_line)
    except OSError as e:
        raise ScoreInputError(f"{path}: cannot read: {e.strerror or e}") from e
    except JsonlError as e:
        raise ScoreInputError(str(e)) from e
    problems = []
    for number, row in rows:
        where = f"{path}:{number}"
        for key in (gold_key, samples_key):
            if key not in row:
                raise ScoreInputError(
                    f"{where}: no key {key!r} (keys: {', '.join(map(repr, row)) or 'none'})"
                )
        answers = _answers(row[samples_key], where, samples_key, responses)
        raw = row[samples_key] if responses else None
        problems.append(SampledProblem(number, gold_field(row[gold_key], where, gold_key), answers, raw))
    if not problems:
        raise ScoreInputError(f"{path}: no problems (the file is empty)")
    return problems


def score_problems(problems: list[SampledProblem], n: int | None, path: Path) -> Summary:
    """Score every problem at N (default: the common number of samples k) and average them."""
    if n is None:
        sizes = {len(p.answers): p.line for p in problems}
        if len(sizes) > 1:
            seen = ", ".join(f"{k} on line {line}" for k, line in sizes.items())
            raise ScoreInputError(f"{path}: problems have different numbers of samples ({seen}); pass --n")
        n = len(problems[0].answers)
    scores = []
    for problem in problems:
        try:
            scores.append(score_problem(problem.gold, problem.answers, n))
        except ValueError as e:
            raise ScoreInputError(f"{path}:{problem.line}: {e}") from e
    return aggregate(scores)


def print_table(summary: Summary, source: Path) -> None:
    print(
        f"{source}: {summary.problems} problems, {summary.samples} samples, {summary.no_answer} without an answer"
    )
    table = Table()
    for name in summary.metrics:
        table.add_column(name, justify="right")
    table.add_row(*(f"{value:.2f}" for value in summary.metrics.values()))
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.score", description=__doc__.split("\n")[0])
    parser.add_argument("file", type=Path, help="JSONL file, one problem per line")
    parser.add_argument("--gold-key", required=True, help="key of the gold answer")
    samples = parser.add_mutually_exclusive_group(required=True)
    samples.add_argument("--responses-key", help="key of the list of raw model responses")
    samples.add_argument("--answers-key", help="key of the list of extracted answers (null = no answer)")
    parser.add_argument("--n", type=int, help="N for cons@N and pass@N (default: samples per problem)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if args.n is not None and args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")

    responses = args.responses_key is not None
    try:
        problems = read_problems(args.file, args.gold_key, args.responses_key or args.answers_key, responses)
        summary = score_problems(problems, args.n, args.file)
    except ScoreInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary.as_dict()))
    else:
        print_table(summary, args.file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
