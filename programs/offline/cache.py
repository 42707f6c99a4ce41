"""The cache of built offline pairs: where its entries live, and how one is built once however many processes
want it.

An entry is a folder under ~/.cache/a2r (or $A2R_CACHE) named by its build (`model.build_key`). One process
builds it, holding a file lock next to it; the others wait there and reuse what it built. The build happens
in a hidden staging folder beside the entry, renamed into place when done, so readers see a complete entry or
none; a staging folder left by a builder that died is removed by the next one, and SIGTERM removes its own
before it ends the process. Other libraries' output during a build goes to a log beside the entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from programs.core.quiet import foreign_output_to

CACHE_ENV = "A2R_CACHE"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "a2r").expanduser()


def build_log(entry: Path) -> Path:
    """Where other libraries' output during the build of `entry` goes: next to it, kept after a failure."""
    return entry.with_name(f"{entry.name}.log")


def build_once(
    entry: Path, complete: Callable[[Path], bool], build: Callable[[Path, TextIO], object]
) -> None:
    """Make `entry` `complete` by `build(entry, terminal)` unless it already is, one process at a time: the
    others wait for the lock and find it built. `terminal` carries the build's own lines to the user; all
    other output goes to `build_log(entry)`."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(entry):
        if complete(entry):  # built while this process waited for the lock
            return
        remove_stale_staging(entry)
        with foreign_output_to(build_log(entry)) as terminal:
            build(entry, terminal)


@contextlib.contextmanager
def staged(entry: Path, complete: Callable[[Path], bool]) -> Iterator[Path]:
    """A fresh staging folder beside `entry` to build in, renamed to `entry` when the block ends, so readers see
    a complete entry or none. If another process finished the same entry first, its copy stays. SIGTERM removes
    the staging folder before it ends the process (see `unwind_on_sigterm`)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    with unwind_on_sigterm():
        staging = Path(tempfile.mkdtemp(prefix=staging_prefix(entry), dir=entry.parent))
        staging.chmod(0o755)  # mkdtemp makes it private; entries are meant to be shared like any cache's
        try:
            yield staging
            try:
                os.rename(staging, entry)
            except OSError:
                if not complete(entry):
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already when the rename succeeded


def staging_prefix(entry: Path) -> str:
    """Staging folders of `entry` are hidden siblings named `.<name>.XXXXXXXX`."""
    return f".{entry.name}."


class _Terminated(BaseException):
    """SIGTERM arrived during a build: unwinds it like Ctrl-C, but is not caught as an error anywhere."""


@contextlib.contextmanager
def unwind_on_sigterm() -> Iterator[None]:
    """Where SIGTERM would end the process outright (on the main thread, with no handler of the program's
    own), let it first unwind the build, which removes the staging folder, then end the process by SIGTERM
    as it would have. A program that handles SIGTERM itself (the entry points take it as Ctrl-C) unwinds
    the build its own way."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def unwind(signum: int, frame: object) -> None:
        raise _Terminated

    signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def build_lock(entry: Path) -> Iterator[None]:
    """Hold `<entry>.lock` (flock, freed by the kernel however the holder ends) while building `entry`: the
    other processes that want the same entry wait here instead of building it a second time."""
    with open(entry.with_name(f"{entry.name}.lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # on stderr: stdout may carry a result (the model's command prints its folder there)
            print(f"Waiting for another process to finish building {entry.name}", file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def remove_stale_staging(entry: Path) -> None:
    """Remove what builders of `entry` that died (SIGKILL, a crash) left staged. Called with the build lock
    held, so no live builder owns any of them."""
    for stale in entry.parent.glob(f"{staging_prefix(entry)}*"):
        shutil.rmtree(stale, ignore_errors=True)
