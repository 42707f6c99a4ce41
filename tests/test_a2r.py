"""`python -m programs.a2r`'s runs fail safe: engines that die with their run, a signal that ends it in seconds,
one writer per run folder, resumes that check what they resume, one bad problem that fails alone, every entry
point ending on SIGTERM, and a stop policy with the confidence filter end to end."""

from __future__ import annotations

import http.server
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from engine.ports import listeners
from engine.spec import SERVER_MODULE
from programs import cli
from programs.a2r import main
from programs.core.jsonl import RecordFile, RecordsError
from programs.core.records import ProblemRecord

REPO = Path(__file__).resolve().parent.parent


def write_problems(path: Path, problems: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"p{i}", "problem": text, "answer": gold} for i, (text, gold) in enumerate(problems)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_args(url: str, dataset: Path, output: Path, *extra: str) -> list[str]:
    return ["--n", "2", "--dataset", str(dataset), "--explorer-url", url, "--output", str(output),
            "--explorer-max-tokens", "24", "--synthesizer-max-tokens", "24", *extra]  # fmt: skip


def engine_processes(port: int) -> list[psutil.Process]:
    """The SGLang server started for `port` and every worker under it (scheduler, detokenizer)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if SERVER_MODULE in cmdline and str(port) in cmdline:
            found += [process, *process.children(recursive=True)]
    return found


def start_a2r(tmp_path: Path, port: int, problems: int) -> subprocess.Popen:
    data = write_problems(tmp_path / "p.jsonl", [(f"What is {i} + 1?", str(i + 1)) for i in range(problems)])
    cmd = [sys.executable, "-m", "programs.a2r", "--n", "2", "--dataset", str(data), "--port", str(port),
           "--output", str(tmp_path / "run"), "--max-in-flight", "1"]  # fmt: skip
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # see test_cli's Ctrl-C test
    try:
        return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)


def wait_for_records(process: subprocess.Popen, run: Path) -> None:
    records, deadline = run / "records.jsonl", time.monotonic() + 300
    while not (records.exists() and records.read_text().count("\n") >= 1):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.1)


def wait_until_gone(processes: list[psutil.Process], seconds: float = 30) -> list[psutil.Process]:
    deadline = time.monotonic() + seconds
    while (left := [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    return left


@pytest.mark.engine
@pytest.mark.usefixtures("tiny_model")
def test_kill_9_of_a_run_takes_its_engine_down_and_the_rerun_completes(tmp_path, port):
    process = start_a2r(tmp_path, port, problems=40)
    wait_for_records(process, tmp_path / "run")
    engine = engine_processes(port)
    assert len(engine) >= 2, "the run's server and its workers should be up"
    process.kill()  # SIGKILL: no handler of ours runs
    process.wait()
    assert wait_until_gone(engine) == [] and listeners(port) == set()
    rerun = start_a2r(tmp_path, port, problems=40)
    output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, output
    assert "already in" in output


@pytest.mark.engine
@pytest.mark.usefixtures("tiny_model")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_run_in_seconds_with_130_one_line_and_no_engine(tmp_path, port, signum):
    process = start_a2r(tmp_path, port, problems=60)
    wait_for_records(process, tmp_path / "run")
    engine = engine_processes(port)
    process.send_signal(signum)
    start = time.monotonic()
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert time.monotonic() - start < 30
    assert "Traceback" not in output and "rerun to resume" in output
    assert engine and wait_until_gone(engine) == []


def test_a_second_writer_of_a_run_folder_is_refused_until_the_first_dies(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from programs.core.jsonl import "
            "lock_run_folder; lock_run_folder(Path(sys.argv[1])); print('locked', flush=True); time.sleep(600)",
            str(run),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RecordsError, match=f"another run \\(process {holder.pid}\\)"):
            RecordFile(run, {})
    finally:
        holder.kill()
        holder.wait()
    RecordFile(run, {})  # the kernel dropped the dead holder's lock: nothing stale blocks


@pytest.mark.parametrize(
    ("make", "reason"), [("file", "is a file, not a folder"), ("unwritable", "cannot be created")]
)
def test_an_output_that_cannot_be_a_folder_is_one_line(tmp_path, capsys, make, reason):
    output = tmp_path / "out"
    if make == "file":
        output.write_text("")
    else:
        output = Path("/proc/a2r-cannot-create")
    data = write_problems(tmp_path / "p.jsonl", [("What is 1 + 1?", "2")])
    code = main(run_args("http://127.0.0.1:9", data, output))
    out = capsys.readouterr().out
    assert code == 2 and f"--output {output} {reason}" in out and "Traceback" not in out


def test_a_dataset_with_other_problems_under_the_same_ids_does_not_resume(cpu_engine, tmp_path, capsys):
    url = cpu_engine.explorer.base_url
    first = write_problems(tmp_path / "a" / "test.jsonl", [("What is 1 + 1?", "2"), ("What is 2 + 2?", "4")])
    second = write_problems(
        tmp_path / "b" / "test.jsonl", [("What is 5 + 5?", "10"), ("What is 6 + 6?", "12")]
    )
    assert cli.default_output(str(first), 2) != cli.default_output(str(second), 2)  # same stem, two folders
    run = tmp_path / "run"
    assert main(run_args(url, first, run)) == 0
    before = (run / "records.jsonl").read_text()
    capsys.readouterr()
    assert main(run_args(url, second, run)) == 2
    out = capsys.readouterr().out
    assert "p0 with another problem text or gold answer" in out
    assert (run / "records.jsonl").read_text() == before


def test_a_problem_too_long_for_the_context_fails_alone(cpu_engine, tmp_path, capsys):
    url = cpu_engine.explorer.base_url
    problems = [
        ("What is 1 + 1?", "2"),
        ("What is " + "9 + " * 50_000 + "1?", "450001"),
        ("What is 3 + 3?", "6"),
    ]
    data, run = write_problems(tmp_path / "p.jsonl", problems), tmp_path / "run"
    assert main(run_args(url, data, run)) == 1
    out = capsys.readouterr().out
    assert "1 of 3 problems failed" in out and "p1" in out and "--retry-failed" in out
    records = {r["id"]: r for r in map(json.loads, (run / "records.jsonl").read_text().splitlines())}
    assert set(records) == {"p0", "p1", "p2"}
    assert "exceed the context" in records["p1"]["error"] and records["p1"]["paths"] == []
    assert all("error" not in records[i] and len(records[i]["paths"]) == 2 for i in ("p0", "p2"))
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["failed"], summary["failed_ids"], summary["problems"]) == (1, ["p1"], 2)

    assert main(run_args(url, data, run)) == 1  # a plain rerun keeps the failure and does not retry it
    assert "3 already in" in capsys.readouterr().out
    assert main(run_args(url, data, run, "--retry-failed")) == 1
    assert "2 already in" in capsys.readouterr().out
    lines = (run / "records.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[-1])["id"] == "p1"


BUDGETS = ["--explorer-max-tokens", "48", "--synthesizer-max-tokens", "48"]
ENTRY_POINTS = {  # module, its own flags, and a file that shows it is well under way once it is written
    "programs.a2r": (["--n", "2", "--max-in-flight", "1", *BUDGETS], "run/records.jsonl"),
    "benchmarks.accuracy": (
        ["--ns", "2", "--runs", "2", "--datasets", "DATA", *BUDGETS],
        "run/explorations.jsonl",
    ),
    "rl.curate": (
        ["--samples", "2", "--max-in-flight", "1", "--explorer-max-tokens", "48"],
        "run/curated.jsonl",
    ),
    "benchmarks.throughput": (["--n", "2", *BUDGETS], "run/sc.jsonl"),  # the second of three modes is running
}


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_every_entry_point_ends_on_sigterm_with_130_and_no_traceback(cpu_engine, tmp_path, module):
    extra, marker = ENTRY_POINTS[module]
    data = write_problems(tmp_path / "p.jsonl", [(f"What is {i} + 2?", str(i + 2)) for i in range(80)])
    dataset = [] if "DATA" in extra else ["--dataset", str(data)]
    cmd = [sys.executable, "-m", module, *[str(data) if a == "DATA" else a for a in extra], *dataset,
           "--explorer-url", cpu_engine.explorer.base_url, "--output", str(tmp_path / "run")]  # fmt: skip
    process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not ((tmp_path / marker).exists() and (tmp_path / marker).stat().st_size):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    start = time.monotonic()
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert time.monotonic() - start < 30 and "Traceback" not in output


@pytest.mark.parametrize(
    ("line", "message"),
    [("[1, 2]", "expected a JSON object, got list"), ('{"problem": "x"}', "a record without an id")],
)
def test_a_records_file_that_cannot_resume_is_one_line(tmp_path, capsys, line, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "records.jsonl").write_text(line + "\n")
    data = write_problems(tmp_path / "p.jsonl", [("What is 1 + 1?", "2")])
    assert main(run_args("http://127.0.0.1:9", data, run)) == 2
    out = capsys.readouterr().out
    assert f"{run / 'records.jsonl'}" in out and message in out and "Traceback" not in out


def test_an_empty_question_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--question", "  "])
    assert exit_info.value.code == 2 and "--question is empty" in capsys.readouterr().err


def test_a_server_without_v1_models_is_one_line(tmp_path, capsys):
    """It answers /get_model_info like SGLang but 404s /v1/models (e.g. an older SGLang or another server)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            known = self.path == "/get_model_info"
            self.send_response(200 if known else 404)
            self.end_headers()
            self.wfile.write(json.dumps({"model_path": str(tmp_path)}).encode() if known else b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        data = write_problems(tmp_path / "p.jsonl", [("What is 1 + 1?", "2")])
        assert main(run_args(url, data, tmp_path / "run")) == 1
    finally:
        server.shutdown()
    out = capsys.readouterr().out
    assert f"{url} answers as an SGLang server but its /v1/models gives no context length" in out
    assert "Traceback" not in out


def test_default_run_folders_differ_by_question_and_keep_shipped_names():
    assert cli.default_output(None, 4, question="What is 2 + 2?") == cli.default_output(
        None, 4, question="What is 2 + 2?"
    )
    assert cli.default_output(None, 4, question="What is 2 + 2?") != cli.default_output(
        None, 4, question="What is 3?"
    )
    assert cli.default_output("aime24", 4) == Path("runs/aime24-n4")  # old run folders of shipped sets resume
    assert cli.default_output("aime24", 4, kind="throughput") == Path("runs/throughput-aime24-n4")


def test_a2r_with_a_stop_and_the_confidence_filter_end_to_end(cpu_engine, tmp_path):
    run = tmp_path / "run"
    argv = ["--n", "4", "--dataset", "chain:3:4", "--explorer-url", cpu_engine.explorer.base_url,
            "--output", str(run), "--stop", "first:3", "--keep-confident", "0.5",
            "--explorer-max-tokens", "512", "--synthesizer-max-tokens", "160"]  # fmt: skip
    assert main(argv) == 0
    for line in (run / "records.jsonl").read_text().splitlines():
        record = ProblemRecord.from_json(json.loads(line))
        assert record.config["stop"] == "first:3" and record.config["keep_confident"] == 0.5
        assert [p.stopped_by for p in record.paths].count("first:3") == 1
        assert all(p.confidence is not None for p in record.paths)
        kept = [i for i, p in enumerate(record.paths) if p.kept]
        assert len(kept) == 2  # 3 finished, the more confident half (rounded up) of them kept
        finished = [p for p in record.paths if p.stopped_by is None]
        dropped = [p.confidence for p in finished if not p.kept]
        assert len(dropped) == 1 and dropped[0] <= min(p.confidence for p in finished if p.kept)
        assert sorted(record.synthesizer.reference_order) == kept
        assert record.synthesizer.prompt.count("<reference") == 2
