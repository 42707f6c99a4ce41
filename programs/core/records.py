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
    reference_order: list[int]  # explorer path index of each reference, in prompt order
    trimmed_references: list[int] = field(default_factory=list)  # prompt positions (1-based) that were cut
    answer: str | None = None
    correct: bool | None = None

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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SynthesisRecord:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


PathOrSynthesis = TypeVar("PathOrSynthesis", PathRecord, SynthesisRecord)


@dataclass(frozen=True)
class ProblemRecord:
    """One problem done: its paths, the self-consistency vote over the kept ones, the synthesis (None when
    synthesis was off) and when each stage ran. `labels` carries an entry point's own keys (e.g. the
    accuracy protocol's dataset and run), written after the others."""

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

    @classmethod
    def build(
        cls,
        problem: Problem,
        config: dict[str, Any],
        paths: Sequence[PathRecord],
        synthesis: SynthesisRecord | None,
        timings: dict[str, float],
        labels: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> ProblemRecord:
        """Grade every answer against the problem's gold answer and take the majority vote."""
        gold = problem.answer
        graded_paths = [graded(path, gold, problem.id) for path in paths]
        voted = majority_vote([p.vote for p in graded_paths])
        return cls(
            id=problem.id,
            problem=problem.problem,
            gold=gold,
            config=config,
            paths=graded_paths,
            self_consistency={"answer": voted, "correct": grade(gold, voted, problem.id)},
            synthesizer=graded(synthesis, gold, problem.id) if synthesis else None,
            timings=timings,
            labels=dict(labels or {}),
            error=error,
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
        )


def graded(record: PathOrSynthesis, gold: str, label: str = "") -> PathOrSynthesis:
    """A path or synthesis record with its answer graded against `gold`."""
    return replace(record, correct=grade(gold, record.answer, label))


@dataclass(frozen=True)
class Usage:
    """What a set of problem records cost and how the engines served it, from their own token counts."""

    problems: int
    paths: int
    syntheses: int
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
    syntheses = [r.synthesizer for r in records if r.synthesizer and r.synthesizer.finish_reason != UNANIMOUS]
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
