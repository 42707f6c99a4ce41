"""The cache of offline pairs (`programs.offline.cache`): a built pair is found again, and one process builds
it however many want it, staged and renamed into place, with nothing staged left behind by a concurrent build,
by SIGTERM or by a builder that died. Random-weight pairs (seconds) stand in for the trained one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from programs.offline import model as tiny_model
from programs.offline.cache import CACHE_ENV
from programs.offline.model import OfflineModels, build_key, build_offline_models, offline_models


def test_cached_pair_is_reused_without_rebuilding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pair = offline_models(0, root=tmp_path, trained=False)

    def no_rebuild(*args: object, **kwargs: object) -> Path:
        raise AssertionError("the cached pair was rebuilt")

    monkeypatch.setattr(tiny_model, "build_offline_models", no_rebuild)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert offline_models(0, trained=False) == pair


def test_concurrent_builds_leave_one_complete_pair_and_no_staging(tmp_path: Path) -> None:
    target = tmp_path / "models"
    results: list[OfflineModels] = []
    threads = [
        threading.Thread(target=lambda: results.append(build_offline_models(target, 0, trained=False)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [OfflineModels.inside(target)] * 2
    assert [p.name for p in tmp_path.iterdir()] == ["models"]
    for folder in results[0].explorer, results[0].synthesizer:
        assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()


# `python -m programs.offline.model --untrained` with one of the module's functions (argv[1]) wrapped: the
# wrapper notes each call in a file (argv[2]), then waits for a gate file (argv[3]) before going on.
HOOKED_CLI = """
import sys, time
from pathlib import Path
from programs.offline import model

name, calls, gate = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
real = getattr(model, name)

def hooked(*args, **kwargs):
    with calls.open("a") as f:
        f.write(name + "\\n")
    while not gate.exists():
        time.sleep(0.05)
    return real(*args, **kwargs)

setattr(model, name, hooked)
model.main(["--untrained"])
"""


def start_cli(hook: str, calls: Path, gate: Path, cache: Path, stderr: Path) -> subprocess.Popen:
    repo = Path(tiny_model.__file__).parents[2]  # run the code under test, wherever it is checked out
    env = {**os.environ, CACHE_ENV: str(cache)}
    with stderr.open("w") as err:
        return subprocess.Popen(
            [sys.executable, "-c", HOOKED_CLI, hook, str(calls), str(gate)],
            cwd=repo,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )


def wait_until(condition: Callable[[], bool], what: str, limit_s: float = 300) -> None:
    """Poll `condition`; the limit only turns a hang into a failure, no result depends on it."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def staging_folders(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.glob(".qwen3-tiny-*"))


def test_two_processes_building_the_same_model_build_it_once(tmp_path: Path) -> None:
    cache, calls, gate = tmp_path / "cache", tmp_path / "builds", tmp_path / "gate"
    first = start_cli("build_offline_models", calls, gate, cache, tmp_path / "first.err")
    try:
        wait_until(lambda: lines(calls) == ["build_offline_models"], "the first process to start building")
        second = start_cli("build_offline_models", calls, gate, cache, tmp_path / "second.err")
        try:
            # The first build is held open until the second process has either queued behind it or started a
            # build of its own: whichever it does, the overlap is certain, not a matter of timing.
            wait_until(
                lambda: (
                    "Waiting for another process" in (tmp_path / "second.err").read_text()
                    or len(lines(calls)) > 1
                ),
                "the second process to wait or to build",
            )
            gate.touch()
            outputs = [first.communicate(timeout=300)[0], second.communicate(timeout=300)[0]]
        finally:
            second.kill()
    finally:
        first.kill()
    assert [first.returncode, second.returncode] == [0, 0], (tmp_path / "second.err").read_text()
    assert lines(calls) == ["build_offline_models"]  # the second process reused the first one's models
    (model,) = {Path(out.strip()) for out in outputs}
    assert (model / "config.json").is_file() and model.name == "explorer" and model.parent.parent == cache
    assert staging_folders(cache) == []


def test_sigterm_during_a_build_leaves_no_staging_folder(tmp_path: Path) -> None:
    cache, calls = tmp_path / "cache", tmp_path / "calls"
    # The build stops in its first step, inside its staging folder, until it is killed (there is no gate).
    cli = start_cli("build_tokenizer", calls, tmp_path / "no-gate", cache, tmp_path / "cli.err")
    try:
        wait_until(lambda: lines(calls) == ["build_tokenizer"], "the build to start")
        assert len(staging_folders(cache)) == 1
        cli.send_signal(signal.SIGTERM)
        cli.wait(timeout=120)
    finally:
        cli.kill()
    assert cli.returncode == -signal.SIGTERM, (tmp_path / "cli.err").read_text()  # still ends as killed
    assert staging_folders(cache) == []


def test_a_build_removes_the_staging_folders_of_builders_that_died(tmp_path: Path) -> None:
    stale = tmp_path / f".{build_key(0, trained=False)}.x1y2z3"  # as SIGKILL leaves one, mid-build
    stale.mkdir()
    (stale / "tokenizer.json").write_text("{}")
    other = tmp_path / f".{build_key(1, trained=False)}.a4b5c6"  # another entry's: not this build's business
    other.mkdir()
    models = offline_models(0, root=tmp_path, trained=False)
    assert (models.synthesizer / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.glob(".*")) == [other.name]
