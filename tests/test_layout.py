"""Engine planning (engine.layout) and the launch commands it gives: the GPU layouts cannot run here, so their
arguments are checked."""

import os

import pytest

from engine.launch import context_length
from engine.layout import EngineConfig, plan
from engine.ports import check_port_free
from engine.spec import (
    CPU_KERNEL_DIR,
    CPU_READY_TIMEOUT_S,
    READY_TIMEOUT_S,
    EngineSpec,
    launch_command,
    launch_env,
)
from programs import planning
from programs.a2r import parse_args
from programs.offline.model import OfflineModels
from programs.profile import OFFLINE, PAPER, choose_profile, default_models


def flags(cmd: list[str]) -> dict[str, str | None]:
    """`--flag value` pairs of a command line (a bare flag maps to None)."""
    out: dict[str, str | None] = {}
    for i, arg in enumerate(cmd):
        if arg.startswith("--"):
            nxt = cmd[i + 1] if i + 1 < len(cmd) else None
            out[arg] = None if nxt is None or nxt.startswith("--") else nxt
    return out


def test_same_model_is_one_engine():
    engines = plan(
        EngineConfig(explorer_model="Qwen/Qwen3-8B", synthesizer_model="Qwen/Qwen3-8B"), device="cuda", gpus=1
    )
    assert engines.explorer is engines.synthesizer
    assert engines.layout == "same-model"
    assert len(engines.to_launch) == 1


def test_default_gpu_layout_is_a2r_efficient_colocated():
    engines = planning.plan_engines(parse_args([]), PAPER, "cuda", offline=None)  # no GPU here: gpus=0
    assert (engines.explorer.model, engines.synthesizer.model) == ("Qwen/Qwen3-4B", "Qwen/Qwen3-8B")
    assert engines.layout == "co-located" and engines.sequential
    explorer, synthesizer = (flags(launch_command(s)) for s in engines.to_launch)
    assert explorer["--mem-fraction-static"] == "0.4"
    # 0.45 of the whole GPU, taken from the 0.60 left free once the explorer holds its share
    assert float(synthesizer["--mem-fraction-static"]) == pytest.approx(0.75)
    assert explorer["--port"] != synthesizer["--port"]
    assert "--base-gpu-id" not in synthesizer


def test_default_cpu_layout_is_the_offline_pair_on_two_pinned_engines(tmp_path):
    pair = OfflineModels(tmp_path / "explorer", tmp_path / "synthesizer")
    engines = planning.plan_engines(parse_args([]), OFFLINE, "cpu", offline=pair)
    assert engines.layout == "cpu" and len(engines.to_launch) == 2
    assert (engines.explorer.model, engines.synthesizer.model) == (str(pair.explorer), str(pair.synthesizer))
    assert not set(engines.explorer.cpu_cores) & set(engines.synthesizer.cpu_cores)


def test_one_model_serves_both_roles_from_the_explorers_engine(tmp_path):
    pair = OfflineModels(tmp_path / "explorer", tmp_path / "synthesizer")
    engines = planning.plan_engines(parse_args(["--one-model"]), OFFLINE, "cpu", offline=pair)
    assert engines.layout == "same-model" and engines.synthesizer.model == str(pair.explorer)
    on_gpu = planning.plan_engines(parse_args(["--one-model"]), PAPER, "cuda", offline=None)
    assert on_gpu.layout == "same-model" and on_gpu.explorer.model == "Qwen/Qwen3-4B"
    with pytest.raises(ValueError, match="--one-model serves the synthesizer"):
        planning.plan_engines(
            parse_args(["--one-model", "--synthesizer-model", "x/y"]), PAPER, "cuda", offline=None
        )


def test_split_layout_gives_each_engine_its_own_gpus():
    engines = plan(EngineConfig(explorer_model="a/b", synthesizer_model="c/d", tp=2), device="cuda", gpus=4)
    assert engines.layout == "split" and not engines.sequential
    explorer, synthesizer = (flags(launch_command(s)) for s in engines.to_launch)
    assert explorer["--tp-size"] == synthesizer["--tp-size"] == "2"
    assert "--base-gpu-id" not in explorer and synthesizer["--base-gpu-id"] == "2"
    assert "--mem-fraction-static" not in explorer


def test_remote_engines_launch_nothing():
    config = EngineConfig(explorer_url="http://10.0.0.5:30000", synthesizer_url="http://10.0.0.6:30000/")
    engines = plan(config, device="cuda", gpus=0)
    assert engines.to_launch == []
    assert engines.synthesizer.base_url == "http://10.0.0.6:30000"
    with pytest.raises(ValueError, match="remote"):
        launch_command(engines.explorer)


def test_one_remote_url_for_both_roles_is_one_engine():
    url = "http://127.0.0.1:31000"
    engines = plan(EngineConfig(explorer_url=url, synthesizer_url=url), device="cuda")
    assert engines.explorer is engines.synthesizer


def test_cpu_engines_are_pinned_to_disjoint_cores():
    engines = plan(EngineConfig(explorer_model="/m/a", synthesizer_model="/m/b"), device="cpu", cpu_count=2)
    explorer, synthesizer = engines.to_launch
    assert (explorer.cpu_cores, synthesizer.cpu_cores) == ((0,), (1,))
    assert engines.frontend_cores == (1,)
    cmd = launch_command(explorer)
    assert cmd[:3] == ["taskset", "-c", "0"]
    f = flags(cmd)
    assert f["--device"] == "cpu" and f["--attention-backend"] == "torch_native"
    assert f["--max-total-tokens"] is not None and "--sleep-on-idle" in f
    env = launch_env(explorer, base={"PYTHONPATH": "/x"})
    assert env["SGLANG_USE_CPU_ENGINE"] == "1" and env["OMP_NUM_THREADS"] == "1"
    assert env["PYTHONPATH"].split(":") == [str(CPU_KERNEL_DIR), "/x"]


def test_gpu_env_never_gets_the_cpu_kernel_stand_in():
    env = launch_env(EngineSpec(model="Qwen/Qwen3-4B"), base={})
    assert "PYTHONPATH" not in env and "SGLANG_USE_CPU_ENGINE" not in env


def test_pass_through_flags_and_dummy_weights():
    spec = EngineSpec(
        model="Qwen/Qwen3-8B",
        load_format="dummy",
        deterministic=True,
        extra_args=("--kv-cache-dtype", "fp8_e4m3"),
    )
    f = flags(launch_command(spec))
    assert f["--load-format"] == "dummy" and f["--kv-cache-dtype"] == "fp8_e4m3"
    assert "--enable-deterministic-inference" in f


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tp": 0}, "tp and dp"),
        ({"device": "tpu"}, "device must be"),
        ({"mem_fraction_static": 1.5}, "mem_fraction_static"),
        ({"port": 70000}, "port"),
        ({"device": "cpu", "tp": 2}, "tensor/data parallel"),
        ({"device": "cpu", "deterministic": True}, "deterministic"),
        ({"ready_timeout": 0}, "ready_timeout must be positive"),
    ],
)
def test_bad_specs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EngineSpec(model="m", **kwargs)


def test_bad_gpu_shares_are_refused():
    with pytest.raises(ValueError, match="gpu_shares"):
        EngineConfig(gpu_shares=(0.6, 0.5))


@pytest.mark.parametrize(
    ("device", "named", "profile"),
    [("cpu", False, OFFLINE), ("cpu", True, PAPER), ("cuda", False, PAPER), ("cuda", True, PAPER)],
)
def test_the_profile_is_offline_only_without_a_gpu_and_without_a_model(device, named, profile):
    assert choose_profile(None, device, named) is profile
    assert choose_profile("offline", device, named) is OFFLINE  # asked for by name, whatever the machine


def test_a_named_model_on_the_cpu_gets_the_papers_budgets():
    """`--device cpu --explorer-model Qwen/Qwen3-4B` once got the tiny model's 160-token budgets."""
    args = parse_args(["--device", "cpu", "--explorer-model", "Qwen/Qwen3-4B"])
    profile, device = planning.profile_for(args)
    assert device == "cpu" and planning.budgets(profile) == (32768, 16384)


def test_default_models():
    assert default_models(PAPER, "cuda", None) == ("Qwen/Qwen3-4B", "Qwen/Qwen3-8B")
    assert default_models(PAPER, "cuda", "my/explorer") == ("my/explorer", "Qwen/Qwen3-8B")
    assert default_models(PAPER, "cpu", "my/explorer") == ("my/explorer", "my/explorer")


def test_a_long_temporary_directory_is_not_handed_to_the_server():
    """SGLang binds its ZMQ sockets in TMPDIR; a unix socket path longer than 107 bytes cannot be bound."""
    spec = EngineSpec(model="/m/a", device="cpu")
    deep = "/tmp/" + "a-long-folder-name/" * 8
    assert launch_env(spec, base={"TMPDIR": deep})["TMPDIR"] == "/tmp"
    assert launch_env(spec, base={"TMPDIR": "/var/tmp"})["TMPDIR"] == "/var/tmp"


def test_a_given_context_length_is_used_without_asking_the_server():
    # A gateway in front of SGLang servers (smg) lists models without their context length.
    behind_gateway = EngineSpec(model="", device="cpu", url="http://127.0.0.1:9", context_length=4096)
    assert context_length(behind_gateway) == 4096  # port 9 answers nothing: the server was not asked


def test_the_online_confidence_stop_launches_the_explorer_streaming_every_8_tokens(tmp_path):
    pair = OfflineModels(tmp_path / "explorer", tmp_path / "synthesizer")
    online = planning.plan_engines(parse_args(["--online-confidence", "0.9"]), OFFLINE, "cpu", offline=pair)
    assert flags(launch_command(online.explorer))["--stream-interval"] == "8"
    # deltas, not all so far per chunk
    assert planning.INCREMENTAL_STREAMING in launch_command(online.explorer)
    assert "--stream-interval" not in flags(launch_command(online.synthesizer))
    one = planning.plan_engines(
        parse_args(["--one-model", "--online-confidence", "0.9"]), OFFLINE, "cpu", offline=pair
    )
    assert one.synthesizer is one.explorer and "--stream-interval" in flags(launch_command(one.explorer))
    plain = planning.plan_engines(parse_args([]), OFFLINE, "cpu", offline=pair)
    assert "--stream-interval" not in flags(launch_command(plain.explorer))


def test_engines_wait_30_minutes_on_a_gpu_10_on_the_cpu_unless_told():
    assert EngineSpec(model="m").ready_timeout == READY_TIMEOUT_S == 1800
    assert EngineSpec(model="m", device="cpu").ready_timeout == CPU_READY_TIMEOUT_S == 600
    told = planning.plan_engines(parse_args(["--ready-timeout", "3600"]), PAPER, "cuda", offline=None)
    assert told.explorer.ready_timeout == told.synthesizer.ready_timeout == 3600


def test_an_attention_backend_can_be_chosen():
    engines = planning.plan_engines(
        parse_args(["--attention-backend", "triton"]), PAPER, "cuda", offline=None
    )
    assert {flags(launch_command(s))["--attention-backend"] for s in engines.to_launch} == {"triton"}


def test_cpu_layout_splits_the_cores_this_process_may_use():
    engines = plan(EngineConfig(explorer_model="/m/a", synthesizer_model="/m/b"), device="cpu")
    allowed = os.sched_getaffinity(0)
    assert set(engines.explorer.cpu_cores) | set(engines.synthesizer.cpu_cores) == allowed
    assert engines.frontend_cores == engines.synthesizer.cpu_cores


def test_only_the_cpu_layout_places_the_frontend():
    one = plan(EngineConfig(explorer_model="/m/a"), device="cpu")
    split = plan(EngineConfig(explorer_model="a/b", synthesizer_model="c/d"), device="cuda", gpus=2)
    assert one.frontend_cores == split.frontend_cores == ()


def test_without_a_port_engines_get_free_ones():
    first = plan(EngineConfig(explorer_model="/m/a", synthesizer_model="/m/b"), device="cpu")
    second = plan(EngineConfig(explorer_model="/m/a", synthesizer_model="/m/b"), device="cpu")
    ports = {first.explorer.port, first.synthesizer.port}
    assert len(ports) == 2 and 30000 not in ports and ports != {second.explorer.port, second.synthesizer.port}
    for port in ports:
        check_port_free("127.0.0.1", port)
    given = plan(EngineConfig(explorer_model="/m/a", synthesizer_model="/m/b", port=31000), device="cpu")
    assert (given.explorer.port, given.synthesizer.port) == (31000, 31001)
