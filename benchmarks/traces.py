"""What replay reads: full-length paths per problem, from run records, generic samples or trace stores.

A trace store is the AutoTTS replay format (../shared/data/traces/SOURCES.md): one JSON list, gzip'd or
not, of problems `{"gold_answer", "probe_freq", "each_branch": [[probe_answers, tokens, final_answer],
...]}`, where `probe_answers[k]` is the path's answer when probed after `probe_freq * (k + 1)` tokens and
"ERR" means none could be read. Every reader checks what it reads and names the file, the problem and the
field of anything it cannot use (`ScoreInputError`); a cut-off last line of a JSONL file is dropped with a
note, as the CLI's resume drops it.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks.score import ScoreInputError, gold_field, read_problems
from programs.core.grading import integer_key, is_equivalent
from programs.core.jsonl import JsonlError, read_jsonl
from programs.core.records import PathRecord
from programs.core.stopping import PathTrace

MAX_TOKENS = 10_000_000  # a path length above this is a broken file, not a model's output
NO_ANSWER = "ERR"  # the trace stores' mark for an answer that could not be read


@dataclass(frozen=True)
class Trace:
    """One problem's full-length paths, as replay needs them."""

    where: str  # file:line or file: problem k, for messages
    gold: str
    paths: list[PathTrace]
    confidences: list[float | None]
    synthesizer_correct: bool | None = None
    probe_every: int | None = None  # the interval the paths were probed at; None: no probes
    classed: bool = False  # answers already replaced by their class's spelling (`grouped`)

    @property
    def answers(self) -> list[str | None]:
        return [p.answer for p in self.paths]

    @property
    def lengths(self) -> list[int]:
        return [p.tokens for p in self.paths]

    def groups(self, n: int) -> list[Trace]:
        """The disjoint groups of `n` consecutive paths (k // n of them; a remainder is left out)."""
        if len(self.paths) < n:
            raise ScoreInputError(f"{self.where}: {len(self.paths)} paths, fewer than --n {n}")
        return [
            replace(self, paths=self.paths[i : i + n], confidences=self.confidences[i : i + n])
            for i in range(0, len(self.paths) - n + 1, n)
        ]

    def grouped(self) -> Trace:
        """The same paths with each answer replaced by its class's first-seen spelling, so that answers are
        one exactly when their texts are. Final answers are grouped by the project's equivalence
        (`is_equivalent`, as `majority_vote` groups them); a probe answer joins a class when it is the same
        plain integer or the same text, else starts its own (probes are many and mostly integers, and
        comparing every pair of them with math-verify would take hours)."""
        if self.classed:
            return self
        rep: dict[str, str] = {}
        reps: list[str] = []
        for answer in self.answers:
            if answer is not None and answer not in rep:
                rep[answer] = next((r for r in reps if is_equivalent(r, answer)), answer)
                if rep[answer] == answer:
                    reps.append(answer)
        by_integer = {integer_key(a): r for a, r in rep.items() if integer_key(a) is not None}

        def of(answer: str | None) -> str | None:
            if answer is None:
                return None
            if answer not in rep:
                key = integer_key(answer)
                rep[answer] = by_integer.setdefault(key, answer) if key is not None else answer
            return rep[answer]

        paths = [PathTrace(p.tokens, of(p.answer), [(t, of(a)) for t, a in p.probes]) for p in self.paths]
        return replace(self, paths=paths, classed=True)


def tokens_field(value: Any, where: str, name: str) -> int:
    """A path's token count, checked: a whole number from 0 to MAX_TOKENS."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScoreInputError(f"{where}: {name} must be a whole number of tokens, got {value!r:.40}")
    if not math.isfinite(value) or value != int(value) or not 0 <= value <= MAX_TOKENS:
        raise ScoreInputError(
            f"{where}: {name} must be a whole number of tokens from 0 to {MAX_TOKENS:,}, got {value!r}"
        )
    return int(value)


def _answer(value: Any, where: str, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ScoreInputError(f"{where}: {name} must be a string or null, got {value!r:.40}")
    return None if value is None or value.strip() in ("", NO_ANSWER) else value


def read_store(path: Path, data: Any) -> list[Trace]:
    """Problems of a trace store (the module docstring), checked field by field."""
    if not isinstance(data, list) or not all(isinstance(p, dict) for p in data):
        raise ScoreInputError(f"{path}: not a trace store (a JSON list of problems with 'each_branch')")
    traces = []
    for k, problem in enumerate(data, start=1):
        where = f"{path}: problem {k}"
        for key in ("gold_answer", "each_branch", "probe_freq"):
            if key not in problem:
                raise ScoreInputError(f"{where}: no {key!r} (keys: {', '.join(map(repr, problem))})")
        gold = gold_field(problem["gold_answer"], where, "gold_answer")
        branches, every = problem["each_branch"], problem["probe_freq"]
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ScoreInputError(f"{where}: probe_freq must be a whole number >= 1, got {every!r:.40}")
        if not isinstance(branches, list) or not branches:
            raise ScoreInputError(f"{where}: each_branch must be a non-empty list of paths")
        paths = []
        for i, branch in enumerate(branches):
            name = f"each_branch[{i}]"
            if not isinstance(branch, list) or len(branch) != 3 or not isinstance(branch[0], list):
                raise ScoreInputError(f"{where}: {name} is not [probe_answers, tokens, final_answer]")
            probes, tokens, final = branch
            tokens = tokens_field(tokens, where, f"{name} tokens")
            answers = [_answer(a, where, f"{name} probe_answers[{j}]") for j, a in enumerate(probes)]
            paths.append(
                PathTrace(
                    tokens,
                    _answer(final, where, f"{name} final_answer"),
                    [(every * (j + 1), a) for j, a in enumerate(answers)],
                )
            )
        traces.append(Trace(where, gold, paths, [None] * len(paths), probe_every=every))
    return traces


def _path(row: Any, where: str) -> PathTrace:
    """One path of a records line, checked: its tokens, answer and, when recorded, its probes."""
    if not isinstance(row, dict):
        raise ScoreInputError(f"{where}: must be an object, got {type(row).__name__}")
    tokens = tokens_field(row.get("completion_tokens"), where, "completion_tokens")
    probes = row.get("probes") or []
    if not isinstance(probes, list) or not all(isinstance(p, list) and len(p) == 2 for p in probes):
        raise ScoreInputError(f"{where}: probes must be a list of [tokens, answer] pairs")
    checked = [
        (tokens_field(t, where, f"probes[{j}] tokens"), _answer(a, where, f"probes[{j}] answer"))
        for j, (t, a) in enumerate(probes)
    ]
    return PathTrace(tokens, _answer(row.get("answer"), where, "answer"), checked)


def read_records(path: Path, note: Callable[[str], None] | None = None) -> list[Trace]:
    """Problems of a records file; failed problems are skipped, and a run that stopped paths is refused."""
    traces = []
    try:
        rows = read_jsonl(path, note)
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
        if not isinstance(row["paths"], list) or not row["paths"]:
            raise ScoreInputError(f"{where}: 'paths' must be a non-empty list of path records")
        paths = [_path(p, f"{where}: paths[{i}]") for i, p in enumerate(row["paths"])]
        records = [PathRecord.from_json(p) for p in row["paths"]]
        if any(p.stopped_by or not p.kept for p in records):
            raise ScoreInputError(
                f"{where}: a policy already dropped paths here; replay needs full-length runs"
            )
        every = min((t for p in paths for t, _ in p.probes), default=None)
        synthesizer = row.get("synthesizer")
        if synthesizer is not None and not isinstance(synthesizer, dict):
            raise ScoreInputError(f"{where}: 'synthesizer' must be an object or null")
        traces.append(
            Trace(
                where,
                gold_field(row["gold"], where, "gold"),
                paths,
                [p.confidence for p in records],
                bool(synthesizer.get("correct")) if synthesizer else None,
                probe_every=every,
            )
        )
    return traces


def read_samples(
    path: Path, gold_key: str, responses_key: str, tokenizer: Any, note: Callable[[str], None] | None = None
) -> list[Trace]:
    """Problems of a generic samples file (as `benchmarks.score` reads it), each response's tokens counted by
    `tokenizer`."""
    problems = read_problems(path, gold_key, responses_key, responses=True, on_cut_line=note)
    return [
        Trace(
            f"{path}:{p.line}",
            p.gold,
            [
                PathTrace(len(tokenizer.encode(r, add_special_tokens=False)), a)
                for r, a in zip(p.responses or [], p.answers, strict=True)
            ],
            [None] * len(p.answers),
        )
        for p in problems
    ]


def read_file(path: Path, note: Callable[[str], None] | None = None) -> list[Trace]:
    """A records file or a trace store (gzip'd or not), told apart by their content."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ScoreInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ScoreInputError(f"{path}: a broken gzip file ({exc})") from None
    if raw.lstrip()[:1] != b"[":
        return read_records(path, note)
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ScoreInputError(f"{path}: not a trace store: malformed JSON ({exc})") from None
    return read_store(path, data)
