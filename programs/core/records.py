"""What goes into a run and what comes out: a `Problem`, and the record of each path, synthesis and problem.

Records are built here and only here (`ProblemRecord.build` grades the answers and takes the vote), and
every figure that adds them up (token totals, prefix-cache reuse, stage times) comes from `usage`. On disk a
record is one JSON object per line with the keys of `to_json`; `from_json` reads the same keys back, so run
folders written before these types existed still resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, replace
from typing import Any, TypeVar

from programs.core.grading import extract_answer, extract_boxed, is_equivalent
from programs.core.metrics import majority_vote
from programs.core.prompts import answer_part


@dataclass(frozen=True)
class Problem:
    """One problem; `answer` is the gold answer as text, "" when unknown (a single `--question`).

    `conversation`, when given (the server's chat messages), is what the explorer reads instead of the bare
    problem; the synthesizer's query is always `problem`."""

    id: str
    problem: str
    answer: str
    conversation: tuple[dict[str, str], ...] = ()


def grade(gold: str, answer: str | None, label: str = "") -> bool | None:
    """Correctness of one answer; None when the gold answer is unknown (a free-form question). An answer that
    cannot be compared is wrong, and logged with `label`."""
    return is_equivalent(gold, answer, label=label) if gold else None


ADAPTIVE_PATH_FIELDS = (
    "confidence",
    "finished_s",
    "stopped_by",
    "stopped_s",
    "stopped_after",
    "kept",
    "probe_tokens",
    "probes",
    "probed_s",
    "forced_answer",
    "wave",
)
UNANIMOUS = "unanimous"  # a synthesis skipped because every kept path agreed


def finish_reason(meta: dict[str, Any]) -> str | None:
    """The engine's finish reason (`stop`, `length`, `abort`) from a `meta_info`."""
    reason = meta.get("finish_reason")
    return reason.get("type") if isinstance(reason, dict) else reason


def default(f: Field) -> Any:
    """A record field's default; None for a field that has none."""
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None if f.default is MISSING else f.default


@dataclass(frozen=True)
class PathRecord:
    """One explorer path with the engine's own account of it; `correct` is set once graded."""

    text: str
    answer_part: str
    answer_part_fallback: bool  # no </think>: the whole text stands in for the answer part
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    finish_reason: str | None
    seed: int | None
    answer: str | None = None
    correct: bool | None = None
    confidence: float | None = None  # lowest group confidence (programs.core.confidence), if asked for
    finished_s: float | None = None  # when its reply came back, seconds since its exploration began
    stopped_by: str | None = None  # the stop policy that ended it early; None when it ran to its end
    stopped_s: float | None = None  # when the policy stopped it
    stopped_after: int | None = None  # tokens it had streamed by then; None when it was not streamed
    kept: bool = True  # in the vote and the synthesis (a stop policy or the confidence filter can drop it)
    # What asking it for its current answer cost (programs.thinking): each probe's prompt tokens not served
    # from the cache and its generated tokens, and the uncached prompt of each chunk that continued it.
    probe_tokens: int = 0
    probes: list[tuple[int, str | None]] = field(default_factory=list)  # (tokens so far, answer) per probe
    probed_s: list[float] = field(default_factory=list)  # when each probe's answer came back
    forced_answer: bool = False  # cut at its thinking budget, it was closed and made to answer
    wave: int | None = None  # the wave it was launched in (0 first), when paths are launched in waves

    @classmethod
    def from_engine(cls, text: str, meta: dict[str, Any], seed: int | None) -> PathRecord:
        """A path from its text and the engine's `meta_info`; its answer is read from its answer part.

        A path stopped before the engine scheduled it (SGLang: "Abort in waiting queue") prefilled nothing,
        and its reply carries no prompt count: it is recorded as 0 prompt tokens, not lost."""
        part = answer_part(text)
        return cls(
            text=text,
            answer_part=part.text,
            answer_part_fallback=part.fallback,
            prompt_tokens=meta.get("prompt_tokens", 0),
            completion_tokens=meta["completion_tokens"],
            cached_tokens=meta.get("cached_tokens", 0),
            finish_reason=finish_reason(meta),
            seed=seed,
            answer=extract_boxed(part.text),
        )

    @property
    def vote(self) -> str | None:
        """Its answer as the vote and the metrics count it. A path a stop policy ended votes its last probe
        that read an answer, as `programs.core.stopping.current_answers` has it (none without probes); one the
        confidence filter dropped votes for none."""
        if self.kept:
            return self.answer
        if self.stopped_by is None:
            return None
        return next((answer for _, answer in reversed(self.probes) if answer), None)

    def to_json(self) -> dict[str, Any]:
        """Its fields; the adaptive ones only when they differ from their defaults, so records written
        before those existed read back key for key."""
        data = asdict(self)
        for f in fields(self):
            if f.name in ADAPTIVE_PATH_FIELDS and data[f.name] == default(f):
                del data[f.name]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PathRecord:
        """A path from JSON; a key it lacks reads as its default, or None (throughput's raw mode keeps token
        counts only)."""
        return cls(**{f.name: data[f.name] if f.name in data else default(f) for f in fields(cls)})


@dataclass(frozen=True)
class SynthesisRecord:
    """The synthesizer's call: the exact prompt it was sent, its reply and the engine's token counts."""

    prompt: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    finish_reason: str | None
    # Index of each reference, in prompt order, among the explorer's paths (in RSA's round t, among round
    # t-1's members, the paths for t = 1): for RSA, the subset it aggregated.
    reference_order: list[int]
    trimmed_references: list[int] = field(default_factory=list)  # prompt positions (1-based) that were cut
    answer: str | None = None
    correct: bool | None = None
    round: int | None = None  # RSA's round (1 first) it belongs to; None for A2R's syntheses

    @classmethod
    def from_engine(
        cls, prompt: str, text: str, meta: dict[str, Any], order: list[int], trimmed: list[int]
    ) -> SynthesisRecord:
        return cls(
            prompt=prompt,
            text=text,
            prompt_tokens=meta["prompt_tokens"],
            completion_tokens=meta["completion_tokens"],
            cached_tokens=meta.get("cached_tokens", 0),
            finish_reason=finish_reason(meta),
            reference_order=order,
            trimmed_references=trimmed,
            answer=extract_answer(text),
        )

    @classmethod
    def unanimous(cls, answer: str, kept: list[int]) -> SynthesisRecord:
        """The answer every kept path gave, returned without asking the synthesizer."""
        return cls("", "", 0, 0, 0, UNANIMOUS, kept, answer=answer)

    @property
    def answer_part(self) -> str:
        """What it wrote after its thinking: RSA's next population reads this, as A2R reads a path's."""
        return answer_part(self.text).text

    def to_json(self) -> dict[str, Any]:
        """Its fields; `round` only for RSA's calls, so A2R's records read as before."""
        data = asdict(self)
        if self.round is None:
            del data["round"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SynthesisRecord:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


PathOrSynthesis = TypeVar("PathOrSynthesis", PathRecord, SynthesisRecord)


@dataclass(frozen=True)
class ProblemRecord:
    """One problem done: its paths, the self-consistency vote over the kept ones, the synthesis (None when
    synthesis was off) and when each stage ran. `labels` carries an entry point's own keys (e.g. the
    accuracy protocol's dataset and run), written after the others.

    A method that makes several synthesizer calls (`--syntheses M`, `--method rsa`) keeps every one in
    `syntheses`, in order (RSA's round by round), and its answer is their vote (RSA's: its last round's);
    `synthesizer` is then the first call that gave the voted answer (the first of the vote when none
    answered), so every reader of the final answer reads it there."""

    id: str
    problem: str
    gold: str
    config: dict[str, Any]
    paths: list[PathRecord]
    self_consistency: dict[str, Any]  # {"answer", "correct"}
    synthesizer: SynthesisRecord | None
    timings: dict[str, float]
    labels: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # why this problem failed alone (its prompt did not fit, ...); None when solved
    syntheses: list[SynthesisRecord] = field(default_factory=list)  # every call, when there are several

    @classmethod
    def build(
        cls,
        problem: Problem,
        config: dict[str, Any],
        paths: Sequence[PathRecord],
        synthesis: SynthesisRecord | Sequence[SynthesisRecord] | None,
        timings: dict[str, float],
        labels: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> ProblemRecord:
        """Grade every answer against the problem's gold answer and take the majority votes: the paths', and
        the synthesizer's over its calls when `synthesis` is a list of them (one A2R synthesis alone is
        recorded as a single synthesis)."""
        gold = problem.answer
        graded_paths = [graded(path, gold, problem.id) for path in paths]
        voted = majority_vote([p.vote for p in graded_paths])
        calls = [synthesis] if isinstance(synthesis, SynthesisRecord) else list(synthesis or [])
        calls = [graded(call, gold, problem.id) for call in calls]
        several = len(calls) > 1 or any(call.round is not None for call in calls)
        return cls(
            id=problem.id,
            problem=problem.problem,
            gold=gold,
            config=config,
            paths=graded_paths,
            self_consistency={"answer": voted, "correct": grade(gold, voted, problem.id)},
            synthesizer=voted_call(calls) if calls else None,
            timings=timings,
            labels=dict(labels or {}),
            error=error,
            syntheses=calls if several else [],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "problem": self.problem,
            "gold": self.gold,
            "config": self.config,
            "paths": [p.to_json() for p in self.paths],
            "self_consistency": self.self_consistency,
            "synthesizer": self.synthesizer.to_json() if self.synthesizer else None,
            "timings": self.timings,
            **({"syntheses": [s.to_json() for s in self.syntheses]} if self.syntheses else {}),
            **({"error": self.error} if self.error else {}),
            **self.labels,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProblemRecord:
        own = {f.name for f in fields(cls)} - {"labels"}
        synthesizer = data.get("synthesizer")
        return cls(
            id=data["id"],
            problem=data["problem"],
            gold=data["gold"],
            config=data["config"],
            paths=[PathRecord.from_json(p) for p in data["paths"]],
            self_consistency=data["self_consistency"],
            synthesizer=SynthesisRecord.from_json(synthesizer) if synthesizer else None,
            timings=data["timings"],
            labels={k: v for k, v in data.items() if k not in own},
            error=data.get("error"),
            syntheses=[SynthesisRecord.from_json(s) for s in data.get("syntheses", [])],
        )

    @property
    def calls(self) -> list[SynthesisRecord]:
        """Every synthesizer call the problem made (none when synthesis was off)."""
        return self.syntheses or ([self.synthesizer] if self.synthesizer else [])


def last_population(calls: Sequence[SynthesisRecord]) -> list[SynthesisRecord]:
    """The calls the final answer is voted over: RSA's last round, or all of A2R's syntheses."""
    last = max((c.round for c in calls if c.round is not None), default=None)
    return [c for c in calls if c.round == last]


def voted_call(calls: Sequence[SynthesisRecord]) -> SynthesisRecord:
    """The first call of the last population that gave its majority answer; its first when none answered."""
    population = last_population(calls)
    vote = majority_vote([c.answer for c in population])
    return next((c for c in population if vote is not None and c.answer == vote), population[0])


def graded(record: PathOrSynthesis, gold: str, label: str = "") -> PathOrSynthesis:
    """A path or synthesis record with its answer graded against `gold`."""
    return replace(record, correct=grade(gold, record.answer, label))


@dataclass(frozen=True)
class Usage:
    """What a set of problem records cost and how the engines served it, from their own token counts."""

    problems: int
    paths: int
    syntheses: int  # synthesizer calls, every one of a method that makes several
    explorer_prompt_tokens: int
    explorer_cached_tokens: int
    explorer_completion_tokens: int
    explorer_probe_tokens: int  # what asking running paths for their answers cost (PathRecord.probe_tokens)
    synthesizer_prompt_tokens: int
    synthesizer_cached_tokens: int
    synthesizer_completion_tokens: int
    answer_part_fallbacks: int  # paths that never closed their thought
    trimmed_prompts: int  # syntheses whose references were cut to fit the context
    stage_seconds: dict[str, float]  # summed over problems: explore_s, synthesize_s, total_s

    @property
    def prefix_cache_hit_ratio(self) -> float:
        """Share of the explorer's prompt tokens the engine served from its prefix cache."""
        return (
            self.explorer_cached_tokens / self.explorer_prompt_tokens if self.explorer_prompt_tokens else 0.0
        )

    @property
    def output_tokens(self) -> int:
        """Tokens generated by both stages: the work a throughput figure counts."""
        return self.explorer_completion_tokens + self.synthesizer_completion_tokens


STAGES = ("explore_s", "synthesize_s", "total_s")


def usage(records: Sequence[ProblemRecord]) -> Usage:
    """Token totals, prefix-cache reuse and stage times of `records`: the one place they are added up."""
    paths = [p for r in records for p in r.paths]
    syntheses = [s for r in records for s in r.calls if s.finish_reason != UNANIMOUS]
    return Usage(
        problems=len(records),
        paths=len(paths),
        syntheses=len(syntheses),
        explorer_prompt_tokens=sum(p.prompt_tokens for p in paths),
        explorer_cached_tokens=sum(p.cached_tokens for p in paths),
        explorer_completion_tokens=sum(p.completion_tokens for p in paths),
        explorer_probe_tokens=sum(p.probe_tokens for p in paths),
        synthesizer_prompt_tokens=sum(s.prompt_tokens for s in syntheses),
        synthesizer_cached_tokens=sum(s.cached_tokens for s in syntheses),
        synthesizer_completion_tokens=sum(s.completion_tokens for s in syntheses),
        answer_part_fallbacks=sum(bool(p.answer_part_fallback) for p in paths),
        trimmed_prompts=sum(bool(s.trimmed_references) for s in syntheses),
        stage_seconds={k: sum(r.timings.get(k, 0.0) for r in records) for k in STAGES},
    )
