"""A first run shows its user the project's own lines: other libraries' warnings and progress bars go to
logs. Each command runs as a user types it, piped."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# What other libraries print when left alone: a Python warning and its source line, a logging record (its
# level, or the timestamp SGLang's records start with), a tqdm bar.
FOREIGN = re.compile(r"warnings\.warn\(|\w+Warning: |\[WARNING\]|\[\d{4}-\d\d-\d\d \d\d:\d\d|\d+%\|")


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_building_the_offline_pair_sends_library_output_to_its_log(tmp_path):
    done = run("programs.offline.model", "--untrained", env={"A2R_CACHE": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).is_dir()  # stdout carries the model's folder alone
    assert not FOREIGN.search(done.stderr), done.stderr
    (log,) = tmp_path.glob("*.log")
    assert "Writing model shards" in log.read_text()  # transformers' bar, one per model saved


# A build's steps as they run on a terminal, with other libraries writing in between.
BUILD_ON_A_TERMINAL = """
import sys, warnings
from pathlib import Path
from programs.core.quiet import foreign_output_to
from programs.offline.model import BuildProgress
with foreign_output_to(Path(sys.argv[1])) as terminal, BuildProgress(terminal, 3) as progress:
    progress.step("explorer")
    warnings.warn("a library's warning")
    print("a library's progress: 50%|#####", file=sys.stderr)
    progress.step("explorer")
    progress.say("Trained the explorer")
    progress.step("synthesizer")
"""


def test_on_a_terminal_the_build_shows_its_bar_and_library_output_goes_to_its_log(tmp_path):
    log = tmp_path / "build.log"
    parent, child = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-c", BUILD_ON_A_TERMINAL, str(log)], cwd=REPO, stdout=child, stderr=child
    )
    os.close(child)
    shown = b""
    with contextlib.suppress(OSError):  # the terminal closes with the process
        while chunk := os.read(parent, 4096):
            shown += chunk
    os.close(parent)
    assert process.wait(timeout=60) == 0, shown
    text = shown.decode(errors="replace")
    assert "training the synthesizer" in text and "3/3" in text and "Trained the explorer" in text
    assert not FOREIGN.search(text) and "a library's" not in text, text
    assert "a library's warning" in log.read_text() and "a library's progress" in log.read_text()


@pytest.mark.engine
def test_a_run_shows_progress_and_results_and_leaves_library_output_in_its_logs(offline_pair, tmp_path):
    output = tmp_path / "run"
    done = run("programs.a2r", "--n", "4", "--limit", "2", "--output", str(output))
    shown = done.stdout + done.stderr
    assert done.returncode == 0, shown
    assert "A2R@4" in shown and f"records: {output / 'records.jsonl'}" in shown
    assert not FOREIGN.search(shown), shown
    logs = "".join(log.read_text(errors="replace") for log in (output / "logs").glob("*.log"))
    assert "warnings.warn(" in logs  # the engines warn as they start: their logs keep it
