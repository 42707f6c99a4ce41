"""`python -m programs.a2r` end to end on a real CPU engine: records, resume, Ctrl-C, and bad input."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.layout import ENGINE_KEY_ENV
from programs import planning
from programs.a2r import main, parse_args
from programs.core.records import PathRecord, ProblemRecord, SynthesisRecord
from programs.datasets import load_problems, question_problem

REPO = Path(__file__).resolve().parent.parent


def write_problems(path: Path, count: int) -> Path:
    rows = [
        {"id": f"p{i}", "problem": f"Compute {i} + {i}. Put it in \\boxed{{}}.", "answer": str(2 * i)}
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]


def args_for(url: str, dataset: Path, output: Path, *extra: str) -> list[str]:
    return ["--n", "4", "--dataset", str(dataset), "--explorer-url", url, "--output", str(output),
            "--explorer-max-tokens", "24", "--synthesizer-max-tokens", "24", *extra]  # fmt: skip


def test_run_writes_complete_records_then_resumes(cpu_engine, tmp_path):
    url, run = cpu_engine.explorer.base_url, tmp_path / "run"
    assert main(args_for(url, write_problems(tmp_path / "p.jsonl", 3), run)) == 0
    first = read_records(run)
    assert [r["id"] for r in first] != [] and len(first) == 3
    for record in first:
        assert record["gold"] and record["config"]["n"] == 4
        assert len(record["paths"]) == 4
        # Every path reuses the forked prompt: the engine recomputes only its last token.
        assert all(p["cached_tokens"] >= p["prompt_tokens"] - 1 for p in record["paths"]), record["paths"]
        for path in record["paths"]:
            assert {
                "text",
                "answer_part",
                "answer",
                "correct",
                "prompt_tokens",
                "completion_tokens",
                "cached_tokens",
                "finish_reason",
            } <= set(path)
        assert set(record["self_consistency"]) == {"answer", "correct"}
        assert {"prompt", "text", "answer", "correct", "prompt_tokens", "completion_tokens"} <= set(
            record["synthesizer"]
        )
        assert record["synthesizer"]["prompt"].count("<reference") == 4
        assert {"explore_s", "synthesize_s", "total_s"} <= set(record["timings"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["problems"] == 3 and summary["config"]["n"] == 4
    assert summary["accuracy"]["problems"] == 3 and "a2r@4" in summary["accuracy"]

    # A larger run into the same folder only does the new problems and keeps the old lines as they were.
    assert main(args_for(url, write_problems(tmp_path / "p.jsonl", 5), run)) == 0
    after = read_records(run)
    assert after[:3] == first
    assert sorted(r["id"] for r in after) == ["p0", "p1", "p2", "p3", "p4"]


def test_another_configuration_in_the_same_folder_is_refused(cpu_engine, tmp_path, capsys):
    url, run, data = cpu_engine.explorer.base_url, tmp_path / "run", write_problems(tmp_path / "p.jsonl", 1)
    assert main(args_for(url, data, run)) == 0
    before = (run / "records.jsonl").read_text()
    assert main(args_for(url, data, run, "--seed", "5")) == 2
    assert "another configuration" in capsys.readouterr().out
    assert (run / "records.jsonl").read_text() == before


def test_ctrl_c_keeps_finished_records_and_the_rerun_completes(cpu_engine, tmp_path):
    url, run, count = cpu_engine.explorer.base_url, tmp_path / "run", 60
    data = write_problems(tmp_path / "p.jsonl", count)
    # One problem at a time, so records arrive one by one, and enough of them (the trained tiny model answers
    # in a few dozen tokens) that the interrupt lands mid-run.
    budget = ("--explorer-max-tokens", "64")
    cmd = [sys.executable, "-m", "programs.a2r", *args_for(url, data, run, *budget, "--max-in-flight", "1")]
    # A shell's background job (`pytest &`) ignores SIGINT, and a child inherits that; a terminal's Ctrl-C
    # reaches a child that handles it, so the child starts with SIGINT not ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    records = run / "records.jsonl"
    deadline = time.monotonic() + 300
    while not (records.exists() and records.read_text().count("\n") >= 1):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    kept = read_records(run)
    assert process.returncode == 130, output
    assert "rerun to resume" in output and 1 <= len(kept) < count
    assert main(args_for(url, data, run, *budget)) == 0  # the in-flight cap is not part of the configuration
    ids = [r["id"] for r in read_records(run)]
    assert sorted(ids) == sorted(f"p{i}" for i in range(count)) and len(ids) == len(set(ids))


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_unknown_dataset(capsys, tmp_path):
    code, out = run_cli(["--dataset", "aime2099", "--output", str(tmp_path)], capsys)
    assert code == 2 and "aime2099" in out and "aime24" in out


def test_malformed_jsonl_names_file_and_line(capsys, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": oops}\n')
    code, out = run_cli(["--dataset", str(bad), "--output", str(tmp_path / "r")], capsys)
    assert code == 2 and f"{bad}:2: malformed JSON" in out


def test_messages_stay_whole_when_piped(capsys, tmp_path):
    """Piped output is not a terminal: rich would wrap at 80 columns, cutting paths and phrases in two."""
    missing = tmp_path / ("a-long-folder-name-" * 8) / "problems.jsonl"
    code, out = run_cli(["--dataset", str(missing), "--output", str(tmp_path / "r")], capsys)
    assert len(str(missing)) > 120 and code == 2
    assert f"error: {missing}: no such file\n" in out


def test_row_without_answer(capsys, tmp_path):
    bad = tmp_path / "noanswer.jsonl"
    bad.write_text('{"problem": "1+1"}\n')
    code, out = run_cli(["--dataset", str(bad), "--output", str(tmp_path / "r")], capsys)
    assert code == 2 and "answer" in out


def test_n_below_one():
    with pytest.raises(SystemExit) as exit_info:
        main(["--n", "0"])
    assert exit_info.value.code == 2


def test_model_path_that_does_not_exist(capsys, tmp_path):
    code, out = run_cli(
        ["--device", "cpu", "--explorer-model", str(tmp_path / "nope"), "--dataset", "aime24", "--limit", "1",
         "--output", str(tmp_path / "r")], capsys)  # fmt: skip
    assert code == 1 and "model path does not exist" in out


def test_port_in_use(capsys, tmp_path, tiny_model):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        code, out = run_cli(
            ["--device", "cpu", "--explorer-model", str(tiny_model), "--port", str(port), "--limit", "1",
             "--output", str(tmp_path / "r")], capsys)  # fmt: skip
    assert code == 1 and f"port {port}" in out and "in use" in out


def test_remote_url_that_does_not_answer(capsys, tmp_path, port):
    code, out = run_cli(
        ["--explorer-url", f"http://127.0.0.1:{port}", "--limit", "1", "--output", str(tmp_path / "r")],
        capsys,
    )
    assert code == 1 and "no SGLang server answers" in out


@pytest.mark.engine  # SGLang's server starts, then fails on the model
def test_engine_that_fails_to_start_shows_its_log(capsys, tmp_path, port):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    code, out = run_cli(
        ["--device", "cpu", "--explorer-model", str(broken), "--port", str(port), "--limit", "1",
         "--output", str(tmp_path / "r")], capsys)  # fmt: skip
    assert code == 1 and "exited with code" in out and "last lines of" in out
    assert not list((tmp_path / "r").glob("records.jsonl"))


@pytest.mark.parametrize("dataset", ["a[/b].jsonl", "x[/]y", "chain:x:99999999999"])
def test_a_dataset_name_is_printed_as_typed_never_as_markup(dataset, capsys, tmp_path):
    code, out = run_cli(["--dataset", dataset, "--output", str(tmp_path / "r")], capsys)
    assert code == 2 and dataset in out, out


def test_a_run_folder_with_markup_in_its_path_is_named_as_it_is(capsys, tmp_path):
    folder = tmp_path / "out[red]x"
    folder.write_text("a file, not a folder")
    code, out = run_cli(
        ["--dataset", "chain:3:2", "--explorer-url", "http://127.0.0.1:9", "--output", str(folder)], capsys
    )
    assert code == 2 and str(folder) in out, out


def test_a_question_and_its_replies_are_printed_as_text_on_every_rerun(capsys, tmp_path):
    """The records are saved before anything is printed, so a reply read as markup broke every rerun."""
    question, reply = "Is [b]x[/b] in [a, b]?", "<think>the interval [a, b] and [x]</think> so \\boxed{[/i]}"
    argv = ["--n", "2", "--question", question, "--explorer-url", "http://127.0.0.1:9", "--output",
            str(tmp_path / "run"), "--explorer-max-tokens", "16", "--synthesizer-max-tokens", "16"]  # fmt: skip
    args = parse_args(argv)
    _, config = planning.plan_run(args, *planning.profile_for(args))
    meta = {"prompt_tokens": 9, "completion_tokens": 5, "cached_tokens": 8}
    paths = [PathRecord.from_engine(reply, meta, seed=i) for i in range(2)]
    synthesis = SynthesisRecord.from_engine("prompt", reply, meta, [0, 1], [])
    record = ProblemRecord.build(question_problem(question), config.to_dict(), paths, synthesis, {})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "records.jsonl").write_text(json.dumps(record.to_json()) + "\n")
    for _ in range(2):
        code, out = run_cli(argv, capsys)  # nothing left to do: no engine is asked
        assert code == 0 and "the interval [a, b] and [x]</think> so \\boxed{[/i]}" in out
        assert out.count("[/i]") == 5  # the reply, and the table: both paths, the vote, the synthesizer


def test_a_full_disk_is_one_error_line_and_the_records_stay(capsys, tmp_path):
    url = "http://127.0.0.1:9"  # every problem is already done: no engine is asked
    argv = ["--n", "2", "--dataset", "chain:3:1", "--explorer-url", url, "--output", str(tmp_path / "run"),
            "--explorer-max-tokens", "16", "--synthesizer-max-tokens", "16"]  # fmt: skip
    args = parse_args(argv)
    _, config = planning.plan_run(args, *planning.profile_for(args))
    meta = {"prompt_tokens": 9, "completion_tokens": 5, "cached_tokens": 8}
    paths = [PathRecord.from_engine("\\boxed{1}", meta, seed=i) for i in range(2)]
    problem = load_problems("chain:3:1", None)[0]
    record = ProblemRecord.build(problem, config.to_dict(), paths, None, {})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "records.jsonl").write_text(json.dumps(record.to_json()) + "\n")
    (tmp_path / "run" / "summary.json").symlink_to("/dev/full")  # every write there: ENOSPC
    code, out = run_cli(argv, capsys)
    assert code == 1 and "No space left on device" in out and "Traceback" not in out
    assert [line for line in out.splitlines() if line.startswith("error:")] == [out.splitlines()[-2]]
    assert len(read_records(tmp_path / "run")) == 1


def test_a_keyed_server_named_without_its_key_is_one_line_naming_the_flag(
    cpu_engine, capsys, tmp_path, monkeypatch
):
    monkeypatch.delenv(ENGINE_KEY_ENV)
    code, out = run_cli(["--explorer-url", cpu_engine.explorer.base_url, "--limit", "1",
                         "--output", str(tmp_path / "r")], capsys)  # fmt: skip
    assert code == 1 and "wants an API key" in out and "--engine-key" in out and "Traceback" not in out
