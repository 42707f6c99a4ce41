"""What every entry point that starts engines shares on its command line: its flags, its default output folder,
signal handling, refusals and exit statuses, and output that stays whole in a pipe (planning the run's engines
is `programs.planning`).

Each entry point has one shape, `main(argv) -> parse_args(argv) -> run(args)`, run through `run_main`: a
polite kill (SIGTERM) takes the Ctrl-C path, so engines stop and finished records stay, and a run its opening
checks refuse (`refusing`) ends in one error line and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from engine.layout import EngineConfig
from programs.core.config import METHOD_FIELDS, RunConfig, SamplingConfig
from programs.core.flags import add_dataclass_args
from programs.profile import PROFILES

# soft_wrap: rich never breaks a printed line itself. Piped output (CI, logs, tests) otherwise wraps at 80
# columns, cutting paths and messages mid-word. emoji off: `chain:x:5` is a dataset name, not ❌. Text that did
# not come from the project (names, paths, questions, replies, errors quoting them) is printed through `escape`
# or as `Text`, never read as markup.
console = Console(soft_wrap=True, emoji=False)

ROLES = ("explorer", "synthesizer")
RUN_FLAGS_NOT_ON_THE_COMMAND_LINE = (
    "n",
    "explorer",
    "synthesizer",
    "explorer_model",
    "synthesizer_model",
    "extra",
    "probe",
)

# Flags an entry point that runs the explorer alone (`planning.explorer_engines`) leaves out: nothing would act
# on them.
EXPLORER_ONLY_SKIP = ("synthesizer_model", "synthesizer_url", "gpu_shares", "one_model")


def show(table: Table) -> None:
    """Print a table whole: piped or redirected, rich assumes 80 columns and would squeeze its cells."""
    if not console.is_terminal:
        wide = Measurement.get(console, console.options.update_width(1_000), table).maximum
        console.width = max(console.width, wide)
    console.print(table)


def add_engine_args(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    group = parser.add_argument_group("engines")
    add_dataclass_args(group, EngineConfig, skip=skip)
    group.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        help="defaults for models, problem sets and budgets (default: offline with no GPU and no model named, "
        "else paper)",
    )
    if "one_model" in skip:
        return
    group.add_argument(
        "--one-model",
        action="store_true",
        help="serve both roles from the explorer's engine (symmetric A2R; offline: the small model alone)",
    )


def add_run_args(parser: argparse.ArgumentParser, skip: tuple[str, ...] = (), methods: bool = False) -> None:
    """Sampling (both roles), per-role token budgets and the A2R run's own flags, from their dataclasses;
    with `methods`, the synthesis methods' too (`--method`, `--syntheses`, `--rounds`, `--subset`), for entry
    points whose synthesis stage runs them (`Pipeline.run`)."""
    group = parser.add_argument_group("sampling and run")
    add_dataclass_args(group, SamplingConfig, skip=("max_tokens", "ignore_eos"))
    for role in ROLES:
        if f"{role}_max_tokens" not in skip:
            group.add_argument(
                f"--{role}-max-tokens", type=int, help=f"{role} token budget (default: the profile's)"
            )
    unused = () if methods else METHOD_FIELDS
    add_dataclass_args(group, RunConfig, skip=RUN_FLAGS_NOT_ON_THE_COMMAND_LINE + skip + unused)


def check_positive(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """Refuse a count flag below 1, naming it."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def default_output(dataset: str | None, n: int, kind: str = "", question: str | None = None) -> Path:
    """`runs/[<kind>-]<name>-n<N>`: the name is a shipped or generated set's own, a local file's stem with a
    hash of its full path (two `test.jsonl` in different folders must not share a run folder), or, for one
    question, `question` with a hash of its text."""
    if question is not None:
        name = f"question-{short_hash(question)}"
    else:
        path = Path(dataset or "")
        name = f"{path.stem}-{short_hash(str(path.resolve()))}" if path.is_file() else path.stem
    return Path("runs") / "-".join(filter(None, [kind, name, f"n{n}"]))


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """A polite kill (SIGTERM) takes the Ctrl-C path: engines stop and finished records stay."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Refused(Exception):
    """A run refused before it starts anything (its arguments, data or records will not do)."""


@contextlib.contextmanager
def refusing(*errors: type[Exception]) -> Iterator[None]:
    """Around the checks that open an entry point's `run`: any of `errors` refuses the run, which `run_main`
    answers with the error's one line and exit status 2 (so every entry point refuses alike)."""
    try:
        yield
    except errors as exc:
        raise Refused(str(exc)) from exc


def run_main(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run an entry point's `run(args)` with SIGTERM handled as Ctrl-C; its exit status (2 for a run
    `refusing` refused, after its one line)."""
    with sigterm_as_ctrl_c():
        try:
            return run(args)
        except Refused as exc:
            print_error(exc)
            return 2


def stopped(exc: BaseException, kept: str) -> int:
    """Say why a run stopped early and what it `kept`; its exit status: 130 for Ctrl-C or SIGTERM, else 1."""
    if isinstance(exc, KeyboardInterrupt):
        console.print(f"[yellow]interrupted:[/] {escape(kept)}; rerun to resume")
        return 130
    console.print(f"[red]error:[/] {escape(str(exc))}\n{escape(kept)}")
    return 1


def print_error(exc: BaseException | str) -> None:
    """The one line a refused run prints: its message, which may quote a user's name or path, as text."""
    console.print(f"[red]error:[/] {escape(str(exc))}")


def log_frontend_warnings(log_dir: Path) -> None:
    """Send Python warnings to `log_dir/frontend.log`. SGLang's frontend reports every request that fails
    as a warning with its traceback: when the engines stop under a run that was interrupted, that is dozens
    of lines per request in flight, and the user is better served by the one line the run prints."""
    log_dir.mkdir(parents=True, exist_ok=True)
    logging.captureWarnings(True)
    logger = logging.getLogger("py.warnings")
    logger.handlers = [logging.FileHandler(log_dir / "frontend.log")]
    logger.propagate = False


def exit_with(code: int) -> NoReturn:
    """Leave the process with `code`. After an interrupt or an engine failure SGLang's frontend threads may
    still wait on engines that are gone (non-daemon threads in `Queue.get`), and a normal exit would wait
    for them forever; records are already on disk and engines stopped, so leave without waiting."""
    if code in (0, 2):
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
