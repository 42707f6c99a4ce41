"""What a stop policy would have spent and voted on groups of full-length paths, against running them all.

`evaluate` replays a policy (`programs.core.stopping.replay`) on every disjoint group of N paths of each
problem and adds the groups up per problem, with bootstrap intervals over problems;
`python -m benchmarks.adaptive` prints it and `benchmarks.frontier` tabulates it.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.bootstrap import RESAMPLES, Problems, interval
from benchmarks.score import ScoreInputError
from benchmarks.traces import Trace
from programs.core.grading import is_equivalent
from programs.core.stopping import PROBE_TOKENS, StopPolicy, most_confident, replay


def vote(answers: Sequence[str | None]) -> tuple[str | None, list[str]]:
    """The majority answer of answers already grouped (`Trace.grouped`: one class, one text), and every
    answer tied with it for the lead; ties go to the answer seen first, as `majority_vote` breaks them."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None, []
    top = max(counts.values())
    leaders = [a for a in counts if counts[a] == top]  # in first-seen order
    return leaders[0], leaders


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
    replayed = replay_traces(traces, policy, keep_confident, n, probe_tokens)
    return summarize(traces, replayed, n, probe_tokens, resamples)


def replay_traces(
    traces: Sequence[Trace],
    policy: StopPolicy | None,
    keep_confident: float | None = None,
    n: int | None = None,
    probe_tokens: int = PROBE_TOKENS,
) -> list[list[Group]]:
    """Each problem's groups of `n` paths replayed (`evaluate`), for `summarize` to add up: a table over
    several sets of the same stores replays each store once."""
    if policy is not None and policy.probe_every is not None:
        for trace in traces:
            if trace.probe_every is None or policy.probe_every % trace.probe_every:
                recorded = (
                    "has no probes" if trace.probe_every is None else f"probed every {trace.probe_every}"
                )
                raise ScoreInputError(f"{trace.where}: {recorded} tokens, so --stop {policy} cannot replay")
    by_text = policy.with_same(operator.eq) if policy is not None else None
    return [
        [
            replay_group(part, by_text, keep_confident, probe_tokens)
            for part in trace.grouped().groups(n or len(trace.paths))
        ]
        for trace in traces
    ]


def summarize(
    traces: Sequence[Trace],
    replayed: Sequence[list[Group]],
    n: int | None = None,
    probe_tokens: int = PROBE_TOKENS,
    resamples: int = RESAMPLES,
) -> dict[str, Any]:
    """`evaluate`'s figures from each problem's replayed groups (`replay_traces`, one list per trace)."""
    groups: list[Group] = []
    rows = []  # per problem: full tokens, spent tokens, Cons before, Cons after (fractions)
    left_out = 0
    for trace, mine in zip(traces, replayed, strict=True):
        left_out += len(trace.paths) - len(mine) * (n or len(trace.paths))
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
    sampled = table[Problems.of([""] * len(rows), resamples).draws]  # resamples x problems x columns
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
