"""Other libraries' output kept off the user's terminal: their warnings, log lines and progress bars go to a
log file, and the project's own lines still reach the user.

Redirecting at the file-descriptor level catches everything a library writes, whether through `warnings`,
a logger holding its own handle on stdout (DeepSpeed's "Setting accelerator to CPU"), tqdm (transformers'
"Writing model shards") or C code, however it was set up before or during the block.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


@contextlib.contextmanager
def foreign_output_to(log: Path) -> Iterator[TextIO]:
    """For the block, send everything written to this process's stdout and stderr to `log` (appended), and
    yield a stream on the original stderr for the project's own lines.

    The redirection is process-wide: use it on one thread at a time (a build lock, the main thread)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with log.open("a") as sink, os.fdopen(os.dup(saved[2]), "w", buffering=1) as terminal:
        for fd in saved:
            os.dup2(sink.fileno(), fd)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
