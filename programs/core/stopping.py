"""Adaptive exploration: when a problem's paths stop, how many are launched, and which answers then vote.

A policy is a pure function of what has been seen, in observed order, so a live run (`programs.explorer`,
which aborts the paths still running) and a replay of full-length runs (`replay`, used by
`benchmarks.adaptive`) decide alike:
- an observation is a `Seen`: path `path` gave `answer` after `tokens` tokens, as a probe of its current
  answer (`final=False`) or at its end (`final=True`);
- a policy's `probe_every` says how often (in tokens) a running path is probed, None when it reads no
  probes (none are made); its `wave` how many paths a wave launches, None for all N at once;
- after each observation the driver asks `settled(seen, n)`: True stops every running path and launches no
  more. When every launched path has ended, nothing settled and fewer than N were launched, the driver
  launches the next wave.

The vote after a stop (`current_answers`): every launched path's latest answer, that is a finished path's
final answer and a stopped path's last probe answer (a probe that read no answer keeps the one before).
Without probes that is the finished paths' answers, as with all N paths run to their end. All policies are
off by default: the paper's A2R waits for all N paths and hands every one to the synthesizer.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

from programs.core.grading import is_equivalent

PROBE_EVERY = 500  # tokens between probes, as the AutoTTS traces were probed
# What one probe costs in replay, in tokens: the probe prompt's suffix past the cached path (end of thinking
# and an answer prefix, about 12 tokens) plus the few tokens decoded greedily for the answer. A live run
# records the real figure per path (`probe_tokens`: uncached prompt tokens plus generated ones).
PROBE_TOKENS = 24
POSTERIOR_EPS = 0.05  # posterior's default: stop once the leader stays the leader with probability > 95%
# `settled`'s defaults, chosen on the Qwen3-0.6B/1.7B traces only by the rule in `benchmarks.frontier`
# (docs/adaptive.md, "How settled was tuned"). It reads no probes: on those traces a path's probe answer,
# even one unchanged over 4,000 tokens, was its final answer only about half the time.
SETTLED: dict[str, float] = {"wave": 4, "eps": 0.25}

STOP_FORMS = (
    "majority, agree:K, first:M, posterior[:EPS] or settled[:wave=W,eps=E], each optionally followed by "
    ",wave=W (launch W paths at a time), ,probe=T (read each running path's answer every T tokens) and "
    ",stable=S (count a probe answer once S probes in a row gave it); e.g. agree:3,wave=4 or "
    "posterior:0.1,probe=500,stable=3"
)
STOP_HELP = (
    "stop a problem's paths early: 'majority' once the leading answer can no longer be overtaken (the vote is "
    "then unchanged), 'agree:K' once K answers agree, 'first:M' once M paths finished, 'posterior:EPS' once "
    "the leader stays the leader with probability above 1-EPS (Adaptive-Consistency's Beta model), and "
    "'settled', the recommended composition: waves of 4 paths under posterior:0.25. On held-out Qwen3 AIME "
    "traces it spent about a third of the explorer tokens at N=16 and an eighth at N=64, with Cons@N within a "
    "point. It trades latency for tokens: a wave starts only when the one before has ended, so a problem whose "
    "paths disagree answers later than with all N at once (up to 3.5x on Qwen3-0.6B), and the vote may now "
    "and then differ from the full run's. ',wave=W', ',probe=T' and ',stable=S' add waves and probes to any "
    "policy"
)


@dataclass(frozen=True)
class Seen:
    """One observation: path `path` gave `answer` (None: none could be read) after decoding `tokens` tokens,
    as a probe (`final=False`) or at its end (`final=True`)."""

    path: int
    tokens: int
    answer: str | None
    final: bool


def _answered(answer: str | None) -> bool:
    return answer is not None and answer.strip() != ""


def current_answers(seen: Sequence[Seen]) -> dict[int, str | None]:
    """Each observed path's answer as it stands: its final answer once it ended, else its last probe answer
    that read one (None when none did). This is what votes after a stop.

    >>> current_answers([Seen(0, 500, "7", False), Seen(1, 500, "8", False), Seen(0, 1000, None, False),
    ...                  Seen(1, 800, None, True)])
    {0: '7', 1: None}
    """
    answers: dict[int, str | None] = {}
    for s in seen:
        if s.final or _answered(s.answer) or s.path not in answers:
            answers[s.path] = s.answer if _answered(s.answer) else None
    return answers


class Tally:
    """The vote as it stands, updated one observation at a time: each path's current answer, answers grouped
    by `same` (first-seen representative first, as `programs.core.metrics.answer_groups` groups them). A
    running path's probe answer counts once its last `stable` answered probes agreed."""

    def __init__(self, same: Callable[[str, str], bool], stable: int = 1) -> None:
        self.same, self.stable = same, stable
        self.count = 0  # observations read
        self.last: Seen | None = None
        self.finished: set[int] = set()
        self.decided = 0  # paths whose answer is in: finished ones, and running ones with a counted probe
        self.group_of: dict[int, int | None] = {}  # path -> group of its counted answer
        self.sizes: list[int] = []  # per group, in first-seen order
        self._streak: dict[int, tuple[int, int]] = {}  # running path -> (group of its last probe, repeats)
        self._reps: list[str] = []
        self._known: dict[str, int] = {}

    def _group(self, answer: str) -> int:
        group = self._known.get(answer)
        if group is None:
            group = next((g for g, rep in enumerate(self._reps) if self.same(rep, answer)), None)
            if group is None:
                group = len(self._reps)
                self._reps.append(answer)
                self.sizes.append(0)
            self._known[answer] = group
        return group

    def add(self, s: Seen) -> None:
        self.count, self.last = self.count + 1, s
        if s.path in self.finished:
            return  # nothing follows a path's end
        answered = _answered(s.answer)
        if s.final:
            self.finished.add(s.path)
            new = self._group(s.answer) if answered else None  # type: ignore[arg-type]
        elif not answered:
            return  # an unreadable probe changes nothing
        else:
            group = self._group(s.answer)  # type: ignore[arg-type]
            before, repeats = self._streak.get(s.path, (None, 0))
            repeats = repeats + 1 if before == group else 1
            self._streak[s.path] = (group, repeats)
            new = group if repeats >= self.stable else None
        old = self.group_of.get(s.path)
        if old is not None:
            self.sizes[old] -= 1
            self.decided -= 1
        if new is not None or s.final:
            self.decided += 1
        if new is not None:
            self.sizes[new] += 1
        self.group_of[s.path] = new

    def top_two(self) -> tuple[int, int]:
        """The leading answer's votes and the runner-up's (0 when there is none)."""
        first = second = 0
        for size in self.sizes:
            if size > first:
                first, second = size, first
            elif size > second:
                second = size
        return first, second


@lru_cache(maxsize=1 << 14)
def leader_stays(leader: int, runner_up: int) -> float:
    """P(p_leader > p_runner_up) under a uniform prior, given their votes: their shares of the two-answer
    vote are Beta(leader + 1, runner_up + 1), and for integer parameters P(share > 1/2) is
    P(Binomial(leader + runner_up + 1, 1/2) <= leader). Adaptive-Consistency's Beta stopping criterion.

    >>> leader_stays(1, 0), leader_stays(3, 0), leader_stays(4, 0)
    (0.75, 0.9375, 0.96875)
    """
    trials = leader + runner_up + 1
    return sum(math.comb(trials, k) for k in range(leader + 1)) / 2**trials


RULES = ("majority", "agree", "first", "posterior", "settled")
VALUE_KINDS = {
    "agree": int,
    "first": int,
    "posterior": float,
}  # the value after the colon, where one is taken


@dataclass(frozen=True)
class StopPolicy:
    """A stop rule, with optional waves and probes; `parse` reads it from a `--stop` string.

    `same` says whether two answers are one (the project's equivalence; a replay that has already grouped a
    problem's answers passes string equality), and is no part of the policy's identity.
    """

    name: str  # one of RULES
    count: int | None = None  # K of agree:K, M of first:M
    eps: float | None = None  # of posterior and settled
    wave: int | None = None  # paths per wave; None (or N or more): all N at once
    probe_every: int | None = None  # tokens between probes; None: no probes
    stable: int = 1  # a probe answer counts once a path's last `stable` probes agreed
    same: Callable[[str, str], bool] = field(default=is_equivalent, compare=False, repr=False)
    _cache: dict = field(default_factory=dict, compare=False, repr=False)  # the last tally, see `tally`
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @classmethod
    def parse(cls, spec: str) -> StopPolicy:
        """`NAME[:VALUE][,KEY=VALUE...]` (`STOP_FORMS`); a string that is not one raises ValueError naming the
        accepted forms."""

        def bad(why: str) -> ValueError:
            return ValueError(f"--stop {spec!r} is not a policy ({why}): use {STOP_FORMS}")

        name, *parts = re.split("[:,]", spec)
        if name not in RULES:
            raise bad(f"unknown name {name!r}")
        if not all(parts):
            raise bad("an empty part")
        values = [p for p in parts if "=" not in p]
        options = dict(p.split("=", 1) for p in parts if "=" in p)
        if len(options) < len(parts) - len(values):
            raise bad("a key given twice")
        kind = VALUE_KINDS.get(name)
        if len(values) > (kind is not None) or (kind is int and not values):
            raise bad(f"{name} takes " + ("one value" if kind else "no value"))
        allowed = {"wave", "probe", "stable"} | ({"eps"} if name == "settled" else set())
        if set(options) - allowed:
            raise bad(f"unknown key {sorted(set(options) - allowed)[0]!r}")
        settings = {**(SETTLED if name == "settled" else {}), **options}
        try:
            count = int(values[0]) if kind is int else None
            eps = float(values[0]) if kind is float and values else float(settings.get("eps", POSTERIOR_EPS))
            wave, probe = (int(settings[key]) if key in settings else None for key in ("wave", "probe"))
            stable = int(settings.get("stable", 1))
        except ValueError:
            raise bad("a value is not a number") from None
        if any(v is not None and v < 1 for v in (count, wave, probe, stable)):
            raise bad("counts must be whole numbers >= 1")
        if not 0 < eps < 1:
            raise bad("EPS must be in (0, 1)")
        return cls(name, count, eps if name in ("posterior", "settled") else None, wave, probe, stable)

    def __str__(self) -> str:
        """The `--stop` string `parse` reads back, defaults left out."""
        defaults = {"stable": 1, **(SETTLED if self.name == "settled" else {})}
        parts = [str(self.count)] if self.count is not None else []
        if self.name == "posterior" and self.eps != POSTERIOR_EPS:
            parts.append(f"{self.eps:g}")
        options = {"wave": self.wave, "probe": self.probe_every, "stable": self.stable}
        if self.name == "settled":
            options["eps"] = self.eps
        parts += [f"{k}={v:g}" for k, v in options.items() if v is not None and v != defaults.get(k)]
        return self.name + (":" + ",".join(parts) if parts else "")

    def check(self, n: int) -> None:
        """Refuse a count that cannot stop anything with `n` paths."""
        if self.count is not None and self.count >= n:
            raise ValueError(f"--stop {self} never stops a path with N={n}: its count must be below N")

    def with_same(self, same: Callable[[str, str], bool]) -> StopPolicy:
        """The same policy comparing answers with `same`."""
        return replace(self, same=same, _cache={}, _lock=threading.Lock())

    def tally(self, seen: Sequence[Seen]) -> Tally:
        """The tally of `seen`. A driver extends one list as it observes, so the last tally is kept and only
        the new observations are read: the result is the tally of `seen`, whatever the caller passes."""
        with self._lock:
            tally = self._cache.get("tally")
            fresh = (
                tally is None
                or self._cache.get("source") is not seen
                or tally.count > len(seen)
                or (tally.count and seen[tally.count - 1] is not tally.last)
            )
            if fresh:
                tally = Tally(self.same, self.stable)
            for s in seen[tally.count :]:
                tally.add(s)
            self._cache.update(tally=tally, source=seen)
            return tally

    def settled(self, seen: Sequence[Seen], n: int) -> bool:
        """Whether every running path should stop now (and, with waves, no more be launched), given `seen` in
        observed order and N = `n`. Each rule reads the current answers (`current_answers`): finished paths'
        answers, and running paths' probe answers when the policy probes. A path whose answer is not in yet
        may still vote for anyone, so `majority` fires only when the leader beats the runner-up even if all
        of them join the runner-up; with probes a running path may still change its answer, so there only
        finished answers make that guarantee.

        >>> majority = StopPolicy.parse("majority")
        >>> majority.settled([Seen(0, 9, "7", True), Seen(1, 9, "7", True), Seen(2, 9, None, True)], 5)
        False
        >>> majority.settled([Seen(i, 9, "7", True) for i in range(3)], 5)
        True
        """
        tally = self.tally(seen)
        if self.name == "first":
            return len(tally.finished) >= (self.count or 0)
        first, second = tally.top_two()
        if self.name == "agree":
            return first >= (self.count or 0)
        if first > second + (n - tally.decided):  # the leader cannot be overtaken
            return True
        if self.name == "majority":
            return False
        assert self.eps is not None
        return first > 0 and leader_stays(first, second) > 1 - self.eps


@dataclass(frozen=True)
class PathTrace:
    """One full-length path as replay reads it: its length, final answer and probe answers, each probe as
    (tokens decoded when it was asked, answer)."""

    tokens: int
    answer: str | None
    probes: Sequence[tuple[int, str | None]] = ()


@dataclass(frozen=True)
class Replayed:
    """A policy applied to one problem's full-length paths."""

    kept: list[bool]  # the path ended on its own before the stop
    spent: list[int]  # tokens each path decoded (0 for a path never launched)
    stop_after: int | None  # the decode position when the stop fired; None when nothing stopped
    votes: list[str | None] | None = None  # each path's answer in the vote after the stop (None: none)
    probes: int = 0  # probes made, over all paths
    waves: int = 1
    answer_at: int = 0  # the decode position at which the answer is known (all launched paths ended or stop)


def finish_order(lengths: Sequence[int]) -> list[int]:
    """Path indices in the order paths decoding at one rate finish: by length, ties by index."""
    return sorted(range(len(lengths)), key=lambda i: (lengths[i], i))


def _events(paths: Sequence[PathTrace], launched: range, start: int, probe_every: int | None) -> list[tuple]:
    """The observations a wave's paths make, as (decode position, path, Seen), in the order they are made:
    by position, then path, a probe before the path's end."""
    events = []
    for i in launched:
        path = paths[i]
        if probe_every is not None:
            for tokens, answer in path.probes:
                if tokens % probe_every == 0 and tokens < path.tokens:
                    events.append((start + tokens, i, 0, Seen(i, tokens, answer, False)))
        events.append((start + path.tokens, i, 1, Seen(i, path.tokens, path.answer, True)))
    events.sort(key=lambda e: e[:3])
    return events


def replay(
    policy: StopPolicy | None,
    answers: Sequence[str | None],
    lengths: Sequence[int],
    order: Sequence[int] | None = None,
    probes: Sequence[Sequence[tuple[int, str | None]]] | None = None,
) -> Replayed:
    """What `policy` would have done on full-length paths (their `answers`, token `lengths` and, when the
    policy probes, `probes`: per path the (tokens, answer) pairs recorded). The driver of the module
    docstring, with every path decoding at one rate: a wave starts at the decode position where its
    predecessor's last path ended, a probe is made when the path reaches its token count, and once the
    policy fires each running path has spent the tokens it decoded by then.

    `order` replays the paths' ends in an observed order instead (a live run's finish order), for policies
    with neither waves nor probes.
    """
    n = len(answers)
    paths = [PathTrace(lengths[i], answers[i], probes[i] if probes is not None else ()) for i in range(n)]
    wave = (policy.wave if policy else None) or n
    probe_every = policy.probe_every if policy else None
    if order is not None:
        if wave != n or probe_every is not None:
            raise ValueError("an observed finish order replays policies without waves or probes only")
        schedule = [(lengths[i], i, 1, Seen(i, lengths[i], answers[i], True)) for i in order]
    seen: list[Seen] = []
    starts: dict[int, int] = {}
    made = waves = 0
    now = 0
    while len(starts) < n:
        launched = range(len(starts), min(len(starts) + wave, n))
        starts.update(dict.fromkeys(launched, now))
        waves += 1
        events = schedule if order is not None else _events(paths, launched, now, probe_every)
        for position, (now, _, _, s) in enumerate(events):
            seen.append(s)
            made += not s.final
            last_of_all = position == len(events) - 1 and len(starts) == n
            if policy is not None and not last_of_all and policy.settled(seen, n):
                return _stopped(paths, starts, seen, now, made, waves)
    return Replayed(
        [True] * n,
        list(lengths),
        None,
        list(current_answers(seen).get(i) for i in range(n)),
        made,
        waves,
        now,
    )


def _stopped(
    paths: Sequence[PathTrace], starts: dict[int, int], seen: list[Seen], now: int, made: int, waves: int
) -> Replayed:
    ended = {s.path for s in seen if s.final}
    current = current_answers(seen)
    return Replayed(
        kept=[i in ended for i in range(len(paths))],
        spent=[
            p.tokens if i in ended else min(p.tokens, now - starts[i]) if i in starts else 0
            for i, p in enumerate(paths)
        ],
        stop_after=now,
        votes=[current.get(i) for i in range(len(paths))],
        probes=made,
        waves=waves,
        answer_at=now,
    )


def most_confident(confidences: Sequence[float | None], kept: Sequence[bool], fraction: float) -> list[bool]:
    """Of the kept paths, the most confident `fraction`, rounded up (ties go to the earlier path).

    >>> most_confident([0.5, 2.0, 1.0, 3.0], [True, True, True, False], 0.5)
    [False, True, True, False]
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"--keep-confident must be a fraction in (0, 1], got {fraction}")
    candidates = [i for i, keep in enumerate(kept) if keep]
    if any(confidences[i] is None for i in candidates):
        raise ValueError(
            "keeping the most confident paths needs each path's confidence (its log-probabilities)"
        )
    ranked = sorted(candidates, key=lambda i: (-(confidences[i] or 0.0), i))
    chosen = set(ranked[: math.ceil(fraction * len(candidates))])
    return [i in chosen for i in range(len(kept))]
