"""Extra SGLang server arguments per engine (`--explorer-server-args`, `--synthesizer-server-args`) and
priority for synthesis on one engine serving both roles: checked by SGLang's own parser at planning time,
recorded in the run's configuration, and on a real CPU engine, taken by the server."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine.launch import serve, server_info
from engine.layout import EngineConfig, plan
from engine.spec import PRIORITY_FLAGS, ServerArgsError, check_server_args, launch_command
from programs import planning
from programs.a2r import main, parse_args
from programs.datasets import load_problems
from programs.engine_handle import EngineHandle
from programs.offline.model import OfflineModels
from programs.pipeline import Pipeline
from programs.profile import OFFLINE

FP8_KV = "--kv-cache-dtype fp8_e4m3 --enable-priority-scheduling"


def test_sglangs_parser_takes_real_flags_and_refuses_others_naming_them():
    assert check_server_args(FP8_KV, "--explorer-server-args") == tuple(FP8_KV.split())
    assert check_server_args(None, "--explorer-server-args") == ()
    for text, says in [
        ("--kv-cache-dtyp fp8_e4m3", "--explorer-server-args: SGLang's server does not know --kv-cache-dtyp"),
        ("--kv-cache-dtype int3", "argument --kv-cache-dtype: invalid choice: 'int3'"),
        ("--port 9", "--explorer-server-args: --port is set by the plan, not here"),
        ('--chat-template "unclosed', "No closing quotation"),
    ]:
        with pytest.raises(ServerArgsError) as refused:
            check_server_args(text, "--explorer-server-args")
        assert says in str(refused.value)
    assert issubclass(ServerArgsError, ValueError)  # the entry points' one-line error for bad input


def test_each_roles_flags_reach_its_own_engine():
    config = EngineConfig(
        explorer_model="e",
        synthesizer_model="s",
        explorer_server_args=FP8_KV,
        synthesizer_server_args="--log-level-http warning",
    )
    engines = plan(config, device="cpu", cpu_count=2)
    explorer, synthesizer = (launch_command(spec) for spec in (engines.explorer, engines.synthesizer))
    assert explorer[-3:] == ["--kv-cache-dtype", "fp8_e4m3", "--enable-priority-scheduling"]
    assert synthesizer[-2:] == ["--log-level-http", "warning"] and "--kv-cache-dtype" not in synthesizer
    assert "--disable-priority-preemption" not in explorer + synthesizer  # two engines: no priority added


def test_one_engine_for_both_roles_schedules_synthesis_first_unless_told_not_to():
    one = plan(EngineConfig(explorer_model="m"), device="cpu")
    assert one.layout == "same-model" and set(PRIORITY_FLAGS) <= set(launch_command(one.explorer))
    fcfs = plan(EngineConfig(explorer_model="m", synthesis_priority=False), device="cpu")
    assert not set(PRIORITY_FLAGS) & set(launch_command(fcfs.explorer))
    with pytest.raises(ValueError, match="one engine serves both roles"):
        plan(
            EngineConfig(explorer_model="m", synthesizer_server_args="--log-level-http warning"), device="cpu"
        )
    with pytest.raises(ValueError, match="is not started here"):
        plan(EngineConfig(explorer_url="http://127.0.0.1:9", explorer_server_args=FP8_KV), device="cpu")


def test_the_runs_configuration_records_what_each_engine_was_given(tmp_path, monkeypatch):
    monkeypatch.setattr(
        planning, "build_offline_models", lambda profile, args: OfflineModels(tmp_path / "e", tmp_path / "s")
    )
    args = parse_args(["--explorer-server-args", FP8_KV, "--question", "1 + 1?"])
    engines, config = planning.plan_run(args, OFFLINE, "cpu")
    assert config.extra["server_args"] == {"explorer": FP8_KV.split()}
    assert config.to_dict()["extra"]["server_args"]["explorer"] == FP8_KV.split()


def test_a_wrong_flag_stops_the_command_before_any_engine_starts(tmp_path, capsys):
    # The = form: a lone flag as a value.
    argv = [
        "--question",
        "1 + 1?",
        "--output",
        str(tmp_path / "run"),
        "--explorer-server-args=--no-such-sglang-flag",
    ]
    assert main(argv) != 0
    out = capsys.readouterr()
    assert "--explorer-server-args: SGLang's server does not know --no-such-sglang-flag" in out.out + out.err
    assert not (tmp_path / "run" / "logs").exists()  # no engine was started


@pytest.mark.engine
def test_the_flags_and_synthesis_priority_reach_a_real_engine(tmp_path):
    args = parse_args(["--one-model", "--explorer-server-args", "--log-level-http warning", "--n", "2"])
    engines, config = planning.plan_run(args, OFFLINE, "cpu")
    with serve(engines, tmp_path / "logs", pin_frontend=False):
        info = server_info(engines.explorer)
        assert info["log_level_http"] == "warning" and info["enable_priority_scheduling"]
        assert info["disable_priority_preemption"]
        handle = EngineHandle.attach(engines.explorer)
        records = []
        problems = load_problems("chain:2:2")
        Pipeline(config, handle, handle).run(problems, records.append)
        assert [r.error for r in records] == [None, None]  # the prioritised syntheses were served
        assert all(r.synthesizer is not None and r.synthesizer.completion_tokens > 0 for r in records)


def test_every_knob_docs_gpu_md_shows_parses_with_sglangs_parser():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "gpu.md").read_text()
    shown = re.findall(r'--explorer-server-args(?:="?| ")([^"`]+)"?', text)
    assert len(shown) >= 4  # speculative decoding, fp8 KV (table and A/B), strip thinking
    for args in (a for a in shown if a != "..."):
        assert check_server_args(args, "--explorer-server-args")


def test_the_async_command_rl_md_shows_prints_its_flags():
    done = subprocess.run(
        [sys.executable, "rl/train.py", "--async-rollout", "--no-colocate", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "--train.async_enable" in done.stdout and "--vllm.enable_sleep" not in done.stdout
