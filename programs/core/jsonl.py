"""JSON lines, read in one place (`read_jsonl`), and a run folder's record file, appended to and resumed.

`RecordFile` is a run folder's `records.jsonl`: one line per finished problem, appended at once. A rerun into the same folder skips the problems already there, and refuses to mix in records made with a
different configuration. Other entry points keep other files of records the same way (`name`), each
record keyed by its own `id` (e.g. `benchmarks.accuracy`'s one line per problem and run).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console

from programs.core.records import Problem

LOCK_FILE = ".lock"


class JsonlError(ValueError):
    """A JSON-lines file that cannot be read; the message names the file and line."""


class RecordsError(ValueError):
    """The run folder cannot be resumed as asked; the message says why."""


def read_jsonl(
    path: str | Path, on_cut_line: Callable[[str], None] | None = None
) -> list[tuple[int, dict[str, Any]]]:
    """Parse a JSON-lines file into (line number, object) pairs; blank lines are skipped.

    Parsed line by line so a bad line is reported as `file:line: reason` rather than a parser error
    somewhere downstream. With `on_cut_line`, a last line that is not JSON and has no newline (a writer
    killed mid-line, the line `RecordFile` drops on resume) is dropped and `on_cut_line` told so.
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
                if on_cut_line is not None and lineno == len(lines) and not line.endswith("\n"):
                    on_cut_line(f"{path}:{lineno}: dropping a cut-off last line ({err.msg})")
                    continue
                raise JsonlError(
                    f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})"
                ) from None
            except ValueError as err:  # e.g. an integer past int()'s 4300-digit limit
                raise JsonlError(f"{path}:{lineno}: {err}") from None
            if not isinstance(row, dict):
                raise JsonlError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append((lineno, row))
    return rows


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


_HELD_LOCKS: dict[Path, TextIO] = {}  # run folders this process writes, each locked once


def lock_run_folder(run_dir: Path) -> None:
    """Take the run folder for this process, or refuse: two runs writing one folder would solve every problem
    twice and interleave their records and logs. The kernel drops the lock when its holder dies, so a killed
    run never blocks the next one."""
    run_dir = run_dir.resolve()
    if run_dir in _HELD_LOCKS:
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise RecordsError(f"--output {run_dir} is a file, not a folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = (run_dir / LOCK_FILE).open("a+")
    except OSError as exc:
        raise RecordsError(f"--output {run_dir} cannot be created: {exc.strerror}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RecordsError(
            f"{run_dir} is being written by another run (process {holder}); wait for it to end or give "
            "another --output"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _HELD_LOCKS[run_dir] = handle


class RecordFile:
    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        console: Console | None = None,
        name: str = "records.jsonl",
    ) -> None:
        lock_run_folder(run_dir)
        self.path = run_dir / name
        self.config = config
        self.console = console or Console(stderr=True)
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self._load()

    def check_problems(self, problems: Iterable[tuple[str, Problem]]) -> None:
        """Refuse to resume records of another problem under the same id: a record resumes only if its
        problem text and gold answer are the ones asked for now (`problems` pairs record ids with problems)."""
        for record_id, problem in problems:
            record = self.records.get(record_id)
            if record is not None and (record["problem"], record["gold"]) != (
                problem.problem,
                problem.answer,
            ):
                raise RecordsError(
                    f"{self.path} holds {record_id} with another problem text or gold answer: it was written "
                    "for another dataset; give another --output"
                )

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

    def failed(self, record_id: str) -> bool:
        """Whether the record of `record_id` is a failure (it carries an `error`)."""
        return bool(self.records.get(record_id, {}).get("error"))

    def __contains__(self, problem_id: str) -> bool:
        return problem_id in self.records

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[record["id"]] = record
