"""The arena: methods compared on the accuracy protocol's own samples, at matched tokens, with intervals.

A method reads one problem's samples in one run (its exploration, each N's synthesis, and each N's calls of
the methods that make several: M syntheses voted, RSA's rounds) and gives an `Outcome`: whether its final answer is right, the calls it made (priced by `benchmarks.cost`), and when its
answer was known. A new method is one more entry of `METHODS`. From the outcomes come, per method and N,
accuracy with its bootstrap interval over problems, tokens, cost and time to answer; the paired comparisons
(`benchmarks.bootstrap.paired`); and the paths' diversity (`benchmarks.diversity`) against A2R's gain.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from statistics import mean
from typing import Any

import numpy as np
from rich.table import Table

from benchmarks.bootstrap import Problems, paired
from benchmarks.cost import CURRENCY, Cost, Price, record_cost, record_tokens
from benchmarks.diversity import (
    answer_entropy,
    distinct_answers,
    effective_paths,
    error_correlation,
    lexical_overlap,
)
from benchmarks.table1 import ProblemRuns, save_plot
from programs.core.grading import is_equivalent
from programs.core.metrics import majority_vote
from programs.core.records import PathRecord, SynthesisRecord, voted_call

TOKENS_PNG = "accuracy_vs_tokens.png"


@dataclass(frozen=True)
class Sample:
    """One problem in one run, as the protocol recorded it: what every method reads."""

    gold: str
    exploration: dict[str, Any]  # its explorations.jsonl line: all max(N) paths
    syntheses: dict[int, dict[str, Any]]  # per N, its syntheses.jsonl line
    # Per method that makes several synthesizer calls (`AGGREGATING`), per N, its line of `<method>.jsonl`
    aggregations: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)

    @cached_property
    def all_paths(self) -> list[PathRecord]:
        """Its max(N) paths, parsed once: every method and N reads them."""
        return [PathRecord.from_json(path) for path in self.exploration["paths"]]

    def paths(self, n: int) -> list[PathRecord]:
        return self.all_paths[:n]


@dataclass(frozen=True)
class ProblemSamples:
    """A problem's samples, one per run."""

    dataset: str
    problem_id: str
    runs: list[Sample]

    def table1(self, ns: Sequence[int]) -> ProblemRuns:
        """The problem as Table 1's metrics read it: each run's votes, and A2R's correctness at each N."""
        return ProblemRuns(
            gold=self.runs[0].gold,
            answers=[[path.vote for path in run.all_paths] for run in self.runs],
            a2r={n: [bool(run.syntheses[n]["synthesizer"]["correct"]) for run in self.runs] for n in ns},
        )


@dataclass(frozen=True)
class Outcome:
    """One method's answer to one problem in one run at one N."""

    correct: bool
    # the calls it made, as `benchmarks.cost` reads a record: config, paths, synthesizer
    record: dict[str, Any]
    seconds: float | None  # when its final answer was known, since its exploration began; None: not recorded

    @property
    def tokens(self) -> int:
        return record_tokens(self.record)

    def cost(self, prices: dict[str, Price]) -> Cost:
        return record_cost(self.record, prices)


def explored(sample: Sample, n: int) -> tuple[dict[str, Any], float | None]:
    """The first N paths as a record with no synthesizer call, and when the last of them ended."""
    finished = [path.finished_s for path in sample.paths(n)]
    record = {**sample.exploration, "paths": sample.exploration["paths"][:n], "synthesizer": None}
    return record, None if None in finished else max(finished)


def self_consistency(sample: Sample, n: int) -> Outcome:
    """The majority vote of the first N paths, known when the last of them ends."""
    record, seconds = explored(sample, n)
    votes = [path.vote for path in sample.paths(n)]
    return Outcome(is_equivalent(sample.gold, majority_vote(votes)), record, seconds)


def after_paths(sample: Sample, n: int, line: dict[str, Any], correct: bool) -> Outcome:
    """A method whose synthesizer calls (`line`, as the protocol wrote them) read the first N paths: its calls
    are the paths' and its own, and its answer is known when they end: started as those N paths end (the
    protocol itself waits for all max(N)), taking as long as they took in this run."""
    record, seconds = explored(sample, n)
    calls = {key: line[key] for key in ("synthesizer", "syntheses") if key in line}
    return Outcome(
        correct=correct,
        record={**record, **calls},
        seconds=None if seconds is None else seconds + line["timings"]["synthesize_s"],
    )


def a2r(sample: Sample, n: int) -> Outcome:
    """The synthesizer over the first N answer parts."""
    line = sample.syntheses[n]
    return after_paths(sample, n, line, bool(line["synthesizer"]["correct"]))


def voted(method: str, sample: Sample, n: int) -> Outcome:
    """A method of several synthesizer calls over the first N answer parts, answered by the vote of its last
    population: all M syntheses, or RSA's last round. Its tokens are every call's, of every round."""
    line = sample.aggregations[method][n]
    calls = [SynthesisRecord.from_json(call) for call in line["syntheses"]]
    return after_paths(sample, n, line, is_equivalent(sample.gold, voted_call(calls).answer))


@dataclass(frozen=True)
class Method:
    label: str  # its name in tables and plots, before "@N"
    outcome: Callable[[Sample, int], Outcome]


METHODS = {
    "sc": Method("Cons", self_consistency),
    "a2r": Method("A2R", a2r),
    "a2r-vote": Method("A2R-vote", partial(voted, "a2r-vote")),  # --syntheses M
    "rsa": Method("RSA", partial(voted, "rsa")),  # --rounds T --subset K
}
AGGREGATING = ("a2r-vote", "rsa")  # methods making several synthesizer calls, run by the protocol apart
BASELINE = "sc"  # every other method is compared with it at the same N
TABLE1 = ("sc", "a2r")  # the paper's Table 1, Cons@N and A2R@N: the methods summary.json's `cost` prices

Key = tuple[str, int]  # (method, N)
Outcomes = dict[Key, list[list[Outcome]]]  # per problem, per run


def score(problems: Sequence[ProblemSamples], methods: Sequence[str], ns: Sequence[int]) -> Outcomes:
    return {
        (m, n): [[METHODS[m].outcome(s, n) for s in p.runs] for p in problems] for m in methods for n in ns
    }


def per_problem(runs: list[list[Outcome]], value: Callable[[Outcome], float]) -> np.ndarray:
    """A figure per problem: its mean over the problem's runs."""
    return np.array([mean(value(outcome) for outcome in outcomes) for outcomes in runs], dtype=float)


def name(key: Key) -> str:
    return f"{key[0]}@{key[1]}"


def dataset_costs(
    problems: Sequence[ProblemSamples], outcomes: Outcomes, prices: dict[str, Price]
) -> dict[str, dict[str, float]]:
    """Mean cost per problem of each method@N (as Table 1 names it: `cons@4`), per dataset, N by N as Table 1
    orders its columns."""
    costs: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (method, n), runs in sorted(outcomes.items(), key=lambda item: item[0][1]):
        for problem, done in zip(problems, runs, strict=True):
            key = f"{METHODS[method].label.lower()}@{n}"
            costs[problem.dataset][key] += [outcome.cost(prices).total for outcome in done]
    return {dataset: {key: mean(v) for key, v in row.items()} for dataset, row in costs.items()}


@dataclass(frozen=True)
class PerProblem:
    """Each method@N's right-or-wrong and tokens per problem (means over runs), computed once for the table
    and the paired comparisons."""

    correct: dict[Key, np.ndarray]
    tokens: dict[Key, float]  # mean over problems, each problem weighted as `Problems.mean` weighs it

    @classmethod
    def of(cls, outcomes: Outcomes, problems: Problems) -> PerProblem:
        return cls(
            {key: per_problem(runs, lambda o: o.correct) for key, runs in outcomes.items()},
            {key: problems.mean(per_problem(runs, lambda o: o.tokens)) for key, runs in outcomes.items()},
        )


def results(
    outcomes: Outcomes, by_problem: PerProblem, problems: Problems, prices: dict[str, Price] | None
) -> dict[str, Any]:
    """Per method and N: accuracy (%) and its interval, tokens and cost per problem, time to answer."""
    table: dict[str, Any] = defaultdict(dict)
    for (method, n), runs in outcomes.items():
        accuracy, ci = problems.summary(by_problem.correct[method, n])
        seconds = [o.seconds for done in runs for o in done if o.seconds is not None]
        table[method][str(n)] = {
            "accuracy": round(accuracy, 2),
            "ci": ci,
            "tokens": round(by_problem.tokens[method, n], 1),
            "cost": None
            if prices is None
            else problems.mean(per_problem(runs, lambda o: o.cost(prices).total)),
            "latency_s": {f"p{q}": float(np.percentile(seconds, q)) for q in (50, 95)} if seconds else None,
        }
    return dict(table)


def comparisons(
    by_problem: PerProblem, methods: Sequence[str], ns: Sequence[int], problems: Problems
) -> list[dict[str, Any]]:
    """Each method against the baseline at the same N, then each against each other at the N of the other
    nearest in mean tokens per problem; a pair of method@N compared once."""
    correct, tokens = by_problem.correct, by_problem.tokens
    found, seen = [], set()

    def compare(a: Key, b: Key, match: str) -> None:
        if a != b and frozenset((a, b)) not in seen:
            seen.add(frozenset((a, b)))
            pair = {"a": name(a), "b": name(b), "match": match, "tokens": {"a": tokens[a], "b": tokens[b]}}
            found.append(pair | paired(correct[a], correct[b], problems))

    others = [m for m in methods if m != BASELINE]
    for method in others if BASELINE in methods else ():
        for n in ns:
            compare((method, n), (BASELINE, n), "same N")
    for a in sorted(methods, key=lambda m: m == BASELINE):  # the baseline last: it is B where it can be
        for b in methods:
            if b != a:
                for n in ns:
                    nearest = min(ns, key=lambda k: abs(tokens[b, k] - tokens[a, n]))
                    compare((a, n), (b, nearest), "nearest tokens")
    return found


def diversity(
    samples: Sequence[ProblemSamples], outcomes: Outcomes, methods: Sequence[str], ns: Sequence[int],
    problems: Problems,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
    """Per N, the paths' diversity averaged over problems, their effective number, and what diversity says
    about each method's gain over the baseline; and a row per problem and N with its own figures."""
    summary, rows = {}, []
    for n in ns:
        paths = [[s.paths(n) for s in p.runs] for p in samples]  # per problem, per run
        votes = [[[path.vote for path in run] for run in runs] for runs in paths]
        distinct = [[distinct_answers(run) for run in runs] for runs in votes]
        entropy = np.array([mean(answer_entropy(run) for run in runs) for runs in votes])
        overlaps = [[lexical_overlap([path.answer_part for path in run]) for run in runs] for runs in paths]
        overlap = np.array([mean(o) if None not in o else np.nan for o in overlaps])
        errors = np.array([[not path.correct for path in run] for runs in paths for run in runs], dtype=float)
        rho = error_correlation(errors)
        figures: dict[str, Any] = {
            "distinct_answers": problems.mean(np.array([mean(d) for d in distinct], dtype=float)),
            "entropy_bits": problems.mean(entropy),
            "lexical_overlap": None if np.isnan(overlap).any() else problems.mean(overlap),
            "error_correlation": rho,
            "effective_paths": effective_paths(n, rho),
            "gain": {},
        }
        for method in (m for m in methods if m != BASELINE and BASELINE in methods):
            figures["gain"][method] = gain(outcomes[method, n], outcomes[BASELINE, n], distinct, entropy)
        summary[str(n)] = figures
        for i, problem in enumerate(samples):
            accuracy = {m: 100 * float(mean(o.correct for o in outcomes[m, n][i])) for m in methods}
            rows.append(
                {
                    "dataset": problem.dataset,
                    "problem_id": problem.problem_id,
                    "n": n,
                    "accuracy": accuracy,
                    "distinct_answers": float(mean(distinct[i])),
                    "entropy_bits": float(entropy[i]),
                    "lexical_overlap": None if np.isnan(overlap[i]) else float(overlap[i]),
                }
            )
    return summary, rows


def gain(
    mine: list[list[Outcome]], base: list[list[Outcome]], distinct: list[list[int]], entropy: np.ndarray
) -> dict[str, Any]:
    """A method's gain over the baseline (right minus right, in points) for each count of distinct answers
    among the runs' paths, and its correlation over problems with their answer entropy."""
    gains = [
        [int(m.correct) - int(b.correct) for m, b in zip(m_runs, b_runs, strict=True)]
        for m_runs, b_runs in zip(mine, base, strict=True)
    ]
    by_distinct: dict[int, list[int]] = defaultdict(list)
    for problem_distinct, problem_gains in zip(distinct, gains, strict=True):
        for d, one in zip(problem_distinct, problem_gains, strict=True):
            by_distinct[d].append(one)
    return {
        "by_distinct_answers": {
            str(d): {"runs": len(g), "gain": round(100 * float(mean(g)), 2)}
            for d, g in sorted(by_distinct.items())
        },
        "entropy_correlation": correlation(np.array([mean(g) for g in gains]), entropy),
    }


def correlation(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson's r over problems; None when either side does not vary."""
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def arena(
    samples: Sequence[ProblemSamples], outcomes: Outcomes, prices: dict[str, Price] | None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """summary.json's `methods`, `paired` and `diversity`, and the rows per problem and N, for the methods
    and N `outcomes` (from `score`) holds."""
    methods, ns = list(dict.fromkeys(m for m, _ in outcomes)), list(dict.fromkeys(n for _, n in outcomes))
    problems = Problems.of([s.dataset for s in samples])
    by_problem = PerProblem.of(outcomes, problems)
    spread, rows = diversity(samples, outcomes, methods, ns, problems)
    figures = {
        "methods": results(outcomes, by_problem, problems, prices),
        "paired": comparisons(by_problem, methods, ns, problems),
        "diversity": spread,
    }
    return figures, rows


def label(key: str) -> str:
    """`a2r@4` as tables name it: `A2R@4`."""
    method, n = key.split("@")
    return f"{METHODS[method].label}@{n}"


def arena_tables(summary: dict[str, Any]) -> list[Table]:
    """Each method@N with its interval, tokens, cost and time to answer; then the paired comparisons, each
    saying whether its interval holds 0."""
    methods = Table(title="The arena: accuracy (%) with its 95% interval over problems, cost per problem")
    for column in ("method", "accuracy [95% CI]", "tokens", f"cost ({CURRENCY})", "answer p50 / p95 (s)"):
        methods.add_column(column, justify="left" if column == "method" else "right")
    for method, per_n in summary["methods"].items():
        for n, row in per_n.items():
            latency = row["latency_s"]
            methods.add_row(
                label(f"{method}@{n}"),
                f"{row['accuracy']:.2f} [{row['ci'][0]:.2f}, {row['ci'][1]:.2f}]",
                f"{row['tokens']:.0f}",
                "-" if row["cost"] is None else f"{row['cost']:.4g}",
                "-" if latency is None else f"{latency['p50']:.2f} / {latency['p95']:.2f}",
            )
    pairs = Table(title="Paired on the same samples: A - B in points, paired-bootstrap 95% interval")
    columns = ("A", "B", "matched by", "tokens A / B", "A - B [95% CI]", "wins A / B / ties", "0 in the CI?")
    for column in columns:
        pairs.add_column(column, justify="right" if column.startswith(("tokens", "A -", "wins")) else "left")
    for pair in summary["paired"]:
        ci, wins = pair["ci"], pair["wins"]
        ahead = label(pair["a"] if pair["difference"] > 0 else pair["b"])
        verdict = "yes: within noise" if pair["contains_zero"] else f"no: {ahead} ahead"
        pairs.add_row(
            label(pair["a"]),
            label(pair["b"]),
            pair["match"],
            f"{pair['tokens']['a']:.0f} / {pair['tokens']['b']:.0f}",
            f"{pair['difference']:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]",
            f"{wins['a']} / {wins['b']} / {wins['ties']}",
            verdict,
        )
    return [methods, pairs]


def plot_tokens(summary: dict[str, Any], path: Path, title: str) -> None:
    """Accuracy against mean tokens per problem, a curve per method, each point labelled with its N."""
    ns = summary["protocol"]["ns"]
    series = {
        f"{METHODS[m].label}@N": (
            [per_n[str(n)]["tokens"] for n in ns],
            [per_n[str(n)]["accuracy"] for n in ns],
        )
        for m, per_n in summary["methods"].items()
    }
    save_plot(path, title, "tokens per problem (explorer + synthesizer calls, prompt + output)", series, ns)
