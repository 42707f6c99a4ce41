"""Run a command that dies with the process that started it, even when that process is killed with SIGKILL.

    python -m engine.tether PARENT_PID COMMAND [ARG ...]

The kernel's parent-death signal (prctl PR_SET_PDEATHSIG) is set here, in a fresh single-threaded process,
and survives the exec into COMMAND; setting it through `preexec_fn` instead is unsafe in a threaded parent.
SGLang's scheduler and detokenizer already die with the server, so tethering the server tethers them all.
The signal fires when the parent's launching thread ends, so engines are started from a thread that lives
as long as the run (the main thread of every entry point).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    if len(argv) < 2 or not argv[0].isdigit():
        sys.exit("usage: python -m engine.tether PARENT_PID COMMAND [ARG ...]")
    parent, command = int(argv[0]), argv[1:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        sys.exit(f"engine.tether: prctl failed: {os.strerror(ctypes.get_errno())}")
    if os.getppid() != parent:  # the parent died before the signal was armed: nothing to serve
        sys.exit("engine.tether: the launching process is gone")
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
