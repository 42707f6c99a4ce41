"""The tether (engine.tether) execs the engine's server in place, so the process a run holds is the server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_tethered_engine_pid_is_the_server(tmp_path):
    """The tether execs the server in place, so the process we hold is the one that binds the port."""
    marker = tmp_path / "pid"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.tether",
            str(os.getpid()),
            sys.executable,
            "-c",
            f"import os; open({str(marker)!r}, 'w').write(str(os.getpid()))",
        ],
        cwd=REPO,
    )
    assert process.wait(timeout=60) == 0
    assert int(marker.read_text()) == process.pid
