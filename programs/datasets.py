"""Problem sets in one shape (`id`, `problem`, `answer`), from the shipped copies, local files or the hub.

    load_problems("aime24")                           # shipped, see programs/data/SOURCES.md
    load_problems("mine.jsonl", limit=10)             # a local .jsonl / .json / .parquet file
    load_problems("hf:HuggingFaceH4/MATH-500:test")   # hf:REPO[:SPLIT] or hf:REPO:CONFIG:SPLIT (needs network)
    load_problems("chain:7:500")                      # generated arithmetic (also `synthetic`), programs/offline/chain.py

Sources name their fields differently (problem / question / Question, answer / Answer, id / unique_id); they
are mapped here once so nothing downstream has to know. A problem is text; an answer is text or a finite
number (AIME answers are often integers); anything else (a list, an object, a bool) is refused, not turned
into text. GSM8K-style answers ("... #### 1,234") keep only the final number. Every error names the file
and line (or row) and the field at fault; a set with no problems at all is an error too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from programs.core.jsonl import JsonlError, read_jsonl
from programs.core.records import Problem
from programs.offline import chain
from programs.shipped_data import DATA_DIR

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
HUB_PREFIX = "hf:"
HUB_DEFAULT_SPLIT = "test"
# Field names used by the shipped and hub copies, in order of preference.
PROBLEM_FIELDS = ("problem", "Problem", "question", "Question")
ANSWER_FIELDS = ("answer", "Answer")
ID_FIELDS = ("id", "ID", "unique_id")
GSM8K_ANSWER_MARK = "####"

# A raw row and where it came from: "file:LINE" for JSON lines, "file row I" (0-based) otherwise.
Located = tuple[str, dict[str, Any]]


class DatasetError(ValueError):
    """A problem set that cannot be loaded; the message says which file, line or row, and why."""


def shipped_names() -> list[str]:
    """The problem sets shipped with the project: the files in programs/data/, and the generated arithmetic
    sets (`chain:SEED:COUNT` for another draw)."""
    return sorted([*(path.stem for path in DATA_DIR.glob("*.jsonl")), *chain.SETS])


def load_problems(spec: str, limit: int | None = None) -> list[Problem]:
    """Load a shipped set by name, a local file by path, or a hub dataset as `hf:REPO[:SPLIT]`.

    `limit` keeps the first `limit` problems (after the whole set is checked, so duplicates are caught).
    """
    if limit is not None and limit < 1:
        raise DatasetError(f"limit must be at least 1, got {limit}")
    problems = _to_problems(_read_rows(spec))[:limit]
    if not problems:
        raise DatasetError(f"dataset {spec!r} has no problems")
    return problems


def question_problem(text: str) -> Problem:
    """A single ad-hoc question (`--question TEXT`) as a problem with no known gold answer."""
    if not text.strip():
        raise DatasetError("the question is empty")
    return Problem(id="q0", problem=text.strip(), answer="")


def _read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        return read_jsonl(path)
    except JsonlError as err:
        raise DatasetError(str(err)) from None


def _read_rows(spec: str) -> list[Located]:
    if spec.startswith(HUB_PREFIX):
        return _read_hub(spec[len(HUB_PREFIX) :])
    try:
        generated = chain.parse_spec(spec)
        if generated is not None:
            seed, count, name = generated
            rows = chain.problem_rows(seed, count, name)
            return [(f"{spec} row {index}", row) for index, row in enumerate(rows)]
    except ValueError as err:
        raise DatasetError(str(err)) from err
    if spec in shipped_names():
        path = DATA_DIR / f"{spec}.jsonl"
        return [(f"{path}:{lineno}", row) for lineno, row in _read_jsonl(path)]
    path = Path(spec)
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise DatasetError(
            f"unknown dataset {spec!r}: give a shipped name ({', '.join(shipped_names())}), "
            f"a file ending in {' / '.join(FILE_SUFFIXES)}, or {HUB_PREFIX}REPO[:SPLIT]"
        )
    if not path.is_file():
        raise DatasetError(f"{spec}: no such file")
    if path.suffix.lower() == ".jsonl":
        return [(f"{path}:{lineno}", row) for lineno, row in _read_jsonl(path)]
    if path.suffix.lower() == ".json":
        return _read_json(path)
    return _read_parquet(path)


def _read_json(path: Path) -> list[Located]:
    """A .json file holding a list of objects; one holding JSON lines instead is read as such."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return [(f"{path}:{lineno}", row) for lineno, row in _read_jsonl(path)]
    except ValueError as err:  # valid JSON Python will not read, e.g. an integer of more than 4300 digits
        raise DatasetError(f"{path}: cannot be read as JSON ({err})") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a list of objects at the top level, got {type(data).__name__}")
    for index, row in enumerate(data):
        if not isinstance(row, dict):
            raise DatasetError(f"{path} row {index}: expected an object, got {type(row).__name__}")
    return [(f"{path} row {index}", row) for index, row in enumerate(data)]


def _read_parquet(path: Path) -> list[Located]:
    import datasets  # imported when needed: it is slow to import and the shipped sets do not need it

    try:
        table = datasets.Dataset.from_parquet(str(path), keep_in_memory=True)
    except (OSError, ValueError, datasets.exceptions.DatasetGenerationError) as err:
        raise DatasetError(f"{path}: cannot be read as Parquet ({err})") from err
    return [(f"{path} row {index}", row) for index, row in enumerate(table.to_list())]


def _read_hub(target: str) -> list[Located]:
    """`REPO`, `REPO:SPLIT` or `REPO:CONFIG:SPLIT`, loaded with `datasets.load_dataset`."""
    import datasets

    parts = target.split(":")
    if not parts[0] or len(parts) > 3 or not all(parts):
        raise DatasetError(
            f"bad hub dataset {HUB_PREFIX + target!r}: expected {HUB_PREFIX}REPO[:CONFIG][:SPLIT]"
        )
    repo = parts[0]
    config = parts[1] if len(parts) == 3 else None
    split = parts[-1] if len(parts) > 1 else HUB_DEFAULT_SPLIT
    try:
        table = datasets.load_dataset(repo, config, split=split)
    except (OSError, ValueError) as err:  # offline, unknown repo, unknown config or split
        raise DatasetError(
            f"hub dataset {repo!r} (split {split!r}) could not be loaded: {err}. Without network access use a "
            f"shipped name ({', '.join(shipped_names())}) or a local file."
        ) from err
    return [(f"{HUB_PREFIX}{repo}[{split}] row {index}", row) for index, row in enumerate(table.to_list())]


def _to_problems(rows: list[Located]) -> list[Problem]:
    problems: list[Problem] = []
    first_seen: dict[str, str] = {}
    for index, (where, row) in enumerate(rows):
        problem = _text_field(row, PROBLEM_FIELDS, where, "problem", numbers=False)
        answer = _gold_answer(_text_field(row, ANSWER_FIELDS, where, "answer", numbers=True))
        raw_id = next((row[key] for key in ID_FIELDS if row.get(key) not in (None, "")), index)
        problem_id = str(raw_id)
        if problem_id in first_seen:
            raise DatasetError(f"{where}: duplicate id {problem_id!r} (first at {first_seen[problem_id]})")
        first_seen[problem_id] = where
        problems.append(Problem(id=problem_id, problem=problem, answer=answer))
    return problems


def _text_field(row: dict[str, Any], names: tuple[str, ...], where: str, label: str, numbers: bool) -> str:
    """The first of `names` the row fills, as stripped text; `numbers` also allows a finite int or float."""
    for name in names:
        value = row.get(name)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if not (isinstance(value, str) or (numbers and number and math.isfinite(value))):
            kind = "text or a finite number" if numbers else "text"
            raise DatasetError(
                f"{where}: field {name!r} ({label}) must be {kind}, got {type(value).__name__} {value!r:.80}"
            )
        return str(value).strip()
    raise DatasetError(
        f"{where}: missing field {label!r} (looked for {', '.join(names)}; the row has "
        f"{', '.join(row) or 'no fields'})"
    )


def _gold_answer(answer: str) -> str:
    """GSM8K writes a worked solution ending in `#### 1,234`: keep the number, without thousands commas."""
    if GSM8K_ANSWER_MARK not in answer:
        return answer
    return answer.rpartition(GSM8K_ANSWER_MARK)[2].strip().replace(",", "")
