"""JSON lines, read in one place (`read_jsonl`), and a run folder's record file, appended to and resumed.

`RecordFile` is a run folder's `records.jsonl`: one line per finished problem, appended at once. A rerun into the same folder skips the problems already there, and refuses to mix in records made with a
different configuration. Other entry points keep other files of records the same way (`name`), each
record keyed by its own `id` (e.g. `benchmarks.accuracy`'s one line per problem and run).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console


class JsonlError(ValueError):
    """A JSON-lines file that cannot be read; the message names the file and line."""


class RecordsError(ValueError):
    """The run folder cannot be resumed as asked; the message says why."""


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """Parse a JSON-lines file into (line number, object) pairs; blank lines are skipped.

    Parsed line by line so a bad line is reported as `file:line: reason` rather than a parser error
    somewhere downstream.
    """
    rows = []
    with open(path, encoding="utf-8") as handle:
        try:
            lines = handle.readlines()
        except UnicodeDecodeError as err:
            raise JsonlError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise JsonlError(
                    f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})"
                ) from None
            if not isinstance(row, dict):
                raise JsonlError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append((lineno, row))
    return rows


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


class RecordFile:
    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        console: Console | None = None,
        name: str = "records.jsonl",
    ) -> None:
        self.path = run_dir / name
        self.config = config
        self.console = console or Console(stderr=True)
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        if lines and lines[-1]:
            # A run killed mid-write leaves a partial last line: that problem is simply redone.
            self.console.print(f"[yellow]dropping an unfinished last line of {self.path}[/]")
            with self.path.open("r+b") as f:
                f.truncate(len(raw) - len(lines[-1]))
        try:
            rows = read_jsonl(self.path)
        except JsonlError as exc:
            raise RecordsError(f"{self.path} cannot be resumed: {exc}") from None
        for number, record in rows:
            if "id" not in record:
                raise RecordsError(f"{self.path}:{number}: a record without an id; it cannot be resumed")
            diff = config_diff(record.get("config", {}), self.config)
            if diff:
                raise RecordsError(
                    f"{self.path} holds records made with another configuration ({'; '.join(diff)}); "
                    "use another --output, or the same settings to resume"
                )
            self.records[record["id"]] = record

    def __contains__(self, problem_id: str) -> bool:
        return problem_id in self.records

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[record["id"]] = record
