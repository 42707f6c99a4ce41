"""`rl/train.py` against the INSTALLED OpenRLHF's own command line: flags, parsing, checks and defaults.

The parser is read from the installed `openrlhf/cli/train_ppo_ray.py` itself. Importing that module would
pull in vLLM and the GPU trainer, so its `if __name__ == "__main__":` block (where the parser is built, the
flags parsed and cross-checked, then `train(args)` called) is run on its own with `train` replaced by a
recorder. An OpenRLHF release that renames, drops or re-checks a flag therefore fails these tests.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import patch

import pytest

from programs.profile import PAPER
from rl import preflight, train
from rl.recipe import GRPORecipe

ROOT = Path(__file__).resolve().parents[1]
CLI_FILE = Path(importlib.util.find_spec(train.OPENRLHF_CLI).origin)  # fails, not skips, without OpenRLHF


def _main_block() -> list[ast.stmt]:
    tree = ast.parse(CLI_FILE.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'":
            return node.body
    raise AssertionError(f"{CLI_FILE} has no __main__ block")


def _run(statements: list[ast.stmt], namespace: dict) -> None:
    exec(compile(ast.Module(body=statements, type_ignores=[]), str(CLI_FILE), "exec"), namespace)


def installed_parser() -> argparse.ArgumentParser:
    """OpenRLHF's parser, built by its own code up to the `parse_args()` call."""
    body = _main_block()
    end = next(i for i, stmt in enumerate(body) if "parse_args" in ast.unparse(stmt))
    namespace = {"argparse": argparse, "datetime": datetime.datetime}
    _run(body[:end], namespace)
    return namespace["parser"]


def openrlhf_reads(argv: list[str]) -> SimpleNamespace:
    """The args OpenRLHF's CLI would hand to `train()` for `argv`, after all of its own checks."""
    received: list[SimpleNamespace] = []
    namespace = {"argparse": argparse, "datetime": datetime.datetime, "train": received.append}
    with patch.object(sys, "argv", ["train_ppo_ray", *argv]):
        _run(_main_block(), namespace)
    (args,) = received
    return args


def dry_run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[list[str], dict]:
    """Run `rl/train.py --dry-run ARGV`; return the printed command (as argv) and the printed JSON."""
    assert train.main(["--dry-run", *argv]) == 0
    shell, _, printed_json = capsys.readouterr().out.partition("\n\n")
    return shlex.split(shell.replace("\\\n", " ")), json.loads(printed_json)


RECIPES = {
    "paper defaults": GRPORecipe(),
    "vllm, 2 nodes x 8, tp 2, KL, clip-higher": GRPORecipe(
        rollout_backend="vllm",
        num_nodes=2,
        gpus_per_node=8,
        rollout_tp=2,
        adam_offload=False,
        kl_coef=1e-3,
        clip_high=0.28,
        train_micro_batch_size=2,
        forward_micro_batch_size=4,
    ),
    "separate engines, no filtering, no penalty, logs": GRPORecipe(
        colocate=False,
        rollout_engines=2,
        dynamic_filtering=False,
        overlong_buffer_len=0,
        apply_chat_template=False,
        gradient_checkpointing=False,
        save_hf=False,
        resume=False,
        tensorboard_dir="/tmp/tb",
    ),
    "async with partial rollouts, engine on its own GPU": GRPORecipe(colocate=False, async_rollout=True),
}


@pytest.mark.parametrize("recipe", RECIPES.values(), ids=RECIPES.keys())
def test_every_emitted_flag_exists_in_the_installed_parser(recipe):
    known = installed_parser()._option_string_actions  # exact names: argparse would accept abbreviations
    flags = [arg for arg in train.openrlhf_args(recipe) if arg.startswith("--")]
    assert flags and [flag for flag in flags if flag not in known] == []
    assert len(flags) == len(set(flags)), "a flag is emitted twice"


@pytest.mark.parametrize("recipe", RECIPES.values(), ids=RECIPES.keys())
def test_openrlhf_parses_and_accepts_the_command(recipe):
    args = openrlhf_reads(train.openrlhf_args(recipe))
    assert args.actor.eps_clip_low_high == [recipe.clip_low, recipe.clip_high]
    assert args.train.batch_size == recipe.train_batch_size
    assert args.vllm.num_engines * args.vllm.tensor_parallel_size == (
        recipe.actor_gpus if recipe.colocate else recipe.num_rollout_engines * recipe.rollout_tp
    )


def test_recipe_defaults_are_the_papers():
    r = GRPORecipe()
    assert (r.advantage_estimator, r.n_samples_per_prompt > 1, r.loss_agg_mode) == (
        "group_norm",
        True,
        "token-mean",
    )
    assert (r.clip_low, r.clip_high, r.kl_coef, r.temperature) == (0.2, 0.2, 0.0, 0.7)
    assert r.dynamic_filtering and r.dynamic_filtering_range == (0.0, 1.0)
    assert r.overlong_buffer_len > 0 and r.overlong_penalty_factor > 0
    assert (r.max_len, r.rollout_batch_size, r.updates_per_rollout, r.max_epochs) == (8192, 32, 1, 1)
    assert (
        r.train_batch_size == r.rollout_batch_size * r.n_samples_per_prompt
    )  # on-policy: one step per rollout
    assert r.prompt_max_len + r.max_new_tokens == r.max_len
    assert r.model == PAPER.synthesizer_model
    assert (r.rollout_backend, r.colocate, r.actor_gpus) == ("sglang", True, 1)


def test_openrlhf_reads_the_recipe_defaults():
    r = GRPORecipe()
    args = openrlhf_reads(train.openrlhf_args(r))
    assert args.algo.advantage.estimator == "group_norm"
    assert args.rollout.n_samples_per_prompt == 8
    assert args.actor.eps_clip_low_high == [0.2, 0.2]
    assert args.actor.loss_agg_mode == "token-mean"
    assert args.algo.kl.init_coef == 0  # and so no reference model is created
    assert args.rollout.temperature == 0.7
    assert args.algo.dynamic_filtering_enable and args.algo.dynamic_filtering_range == [0.0, 1.0]
    assert (args.reward.overlong_buffer_len, args.reward.overlong_penalty_factor) == (1024, 1.0)
    assert args.rollout.max_new_tokens == 4096  # the overlong penalty's threshold, set explicitly
    assert args.data.max_len == 8192
    assert (args.rollout.batch_size, args.train.batch_size, args.train.max_epochs) == (32, 256, 1)
    assert args.reward.remote_url == [str(train.REWARD_FILE)] and train.REWARD_FILE.is_absolute()
    assert "def reward_func(" in train.REWARD_FILE.read_text()
    assert args.train.colocate_all and args.vllm.enable_sleep and args.ds.enable_sleep
    assert args.vllm.gpu_memory_utilization == 0.5
    assert (args.actor.num_gpus_per_node, args.vllm.num_engines) == (1, 1)
    assert (args.data.input_key, args.data.label_key, args.data.apply_chat_template) == (
        "prompt",
        "answer",
        True,
    )
    assert args.critic.model_name_or_path is None  # group_norm: no critic


def test_backends_run_their_own_trainer_module():
    assert train.command(GRPORecipe())[1:3] == ["-m", "rl.sglang_rollout"]
    assert train.command(GRPORecipe(rollout_backend="vllm"))[1:3] == ["-m", "openrlhf.cli.train_ppo_ray"]


def test_dry_run_prints_the_complete_command_and_the_recipe(capsys):
    printed, printed_json = dry_run(capsys)
    recipe = train.with_absolute_paths(GRPORecipe())
    assert printed == train.command(recipe)
    assert printed[:3] == [sys.executable, "-m", train.SGLANG_LAUNCHER]
    assert printed_json["recipe"] == json.loads(json.dumps(dataclasses.asdict(recipe)))
    assert printed_json["derived"] == {
        "prompt_max_len": 4096,
        "train_batch_size": 256,
        "num_rollout_engines": 1,
        "rollout_memory_share": 0.5,
        "gpus_needed": 1,
    }
    assert printed_json["command"] == printed
    assert Path(printed[printed.index("--ckpt.output_dir") + 1]).is_absolute()
    openrlhf_reads(printed[3:])


@pytest.mark.parametrize("how", [["rl/train.py"], ["-m", "rl.train"]])
def test_runs_as_script_and_as_module(how, tmp_path):
    cwd = ROOT if how[0] == "-m" else tmp_path  # the script makes the project importable from anywhere
    script = [str(ROOT / how[0])] if how[0] != "-m" else how
    done = subprocess.run([sys.executable, *script, "--dry-run"], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{sys.executable} -m rl.sglang_rollout \\\n  --data.prompt_dataset ")


def test_a_run_records_the_recipe_and_launches_the_printed_command(tmp_path, monkeypatch, capsys):
    dataset = tmp_path / "train.jsonl"
    dataset.write_text('{"prompt": "What is 1 + 1?", "answer": "2"}\n')
    argv = ["--dataset", str(dataset), "--save-path", str(tmp_path / "out"), "--", "--ds.packing_samples"]
    printed, _ = dry_run(capsys, *argv)
    launched = []

    def launch(cmd, env):
        launched.append((cmd, env))
        return SimpleNamespace(returncode=3)

    monkeypatch.setattr(train.subprocess, "run", launch)
    monkeypatch.setattr(train, "flash_attn_problem", lambda: None)  # a GPU machine's flash-attn 2
    monkeypatch.setattr(train, "visible_gpus", lambda: 1)  # ... and its GPU

    assert train.main(argv) == 3  # the trainer's exit code
    [(cmd, env)] = launched
    assert cmd == printed
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(
        ROOT
    )  # Ray workers import rl.* and the reward's imports
    assert json.loads((tmp_path / "out" / train.RUN_RECORD).read_text())["command"] == printed

    with pytest.raises(SystemExit):
        train.main(["--dataset", str(tmp_path / "missing.jsonl")])
    assert "missing.jsonl does not exist" in capsys.readouterr().err
    assert len(launched) == 1


def test_missing_flash_attn_stops_a_run_before_ray_and_warns_a_dry_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "flash_attn_problem", lambda: "OpenRLHF needs flash-attn 2 (fix: X)")
    monkeypatch.setattr(train.subprocess, "run", lambda *a, **kw: pytest.fail("the trainer was started"))
    with pytest.raises(SystemExit) as exited:
        train.main(["--save-path", str(tmp_path / "out")])
    assert exited.value.code == 2 and "OpenRLHF needs flash-attn 2 (fix: X)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert train.main(["--dry-run"]) == 0  # the command may be meant for another machine
    assert (
        "warning: this machine cannot start the trainer: OpenRLHF needs flash-attn 2"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("installed", "says"),
    [
        ({"flash-attn-4": "4.0.0b36"}, "the flash_attn here is SGLang's flash-attn-4, only flash_attn.cute"),
        (
            {"flash-attn": "2.8.3"},
            "flash-attn 2.8.3 is installed but flash_attn.bert_padding fails to import",
        ),
        ({}, "flash-attn 2 is not installed."),
    ],
)
def test_flash_attn_problem_names_what_is_there_and_the_fix(monkeypatch, installed, says):
    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(preflight.importlib, "import_module", missing)
    monkeypatch.setattr(preflight, "_installed", installed.get)
    problem = preflight.flash_attn_problem()
    assert says in problem
    assert "python -m rl.flash_attn_build" in problem
    assert "docker build --target rl" in problem


def test_flash_attn_that_imports_is_no_problem(monkeypatch):
    monkeypatch.setattr(preflight.importlib, "import_module", lambda name: None)
    assert preflight.flash_attn_problem() is None


def test_the_rl_image_stage_installs_what_training_needs():
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = [line.split()[-1] for line in dockerfile.splitlines() if line.startswith("FROM ")]
    assert stages[-1] == "inference" and "rl" in stages  # a plain build is the inference image
    rl_stage = dockerfile.split(" AS rl\n")[1].split("\nFROM ")[0]
    for needed in ("-r rl/requirements.txt", "--no-deps openrlhf==0.11.2", preflight.FLASH_ATTN_BUILD):
        assert needed in rl_stage
    # Architectures and jobs are build arguments with no forced value: the build sizes itself to the host.
    assert "ARG FLASH_ATTN_CUDA_ARCHS\n" in rl_stage and "ARG MAX_JOBS\n" in rl_stage
    assert "MAX_JOBS=8" not in rl_stage and "pip install flash-attn" not in rl_stage


def test_overrides_take_effect(capsys):
    printed, printed_json = dry_run(
        capsys,
        *["--temperature", "1.0", "--n-samples-per-prompt", "16", "--no-dynamic-filtering"],
        *[
            "--clip-high",
            "0.28",
            "--rollout-backend",
            "vllm",
            "--learning-rate",
            "5e-7",
            "--max-new-tokens",
            "6144",
        ],
        *["--model", "my/model", "--dynamic-filtering-range", "0.1", "0.9", "--", "--ds.packing_samples"],
    )
    assert printed[1:3] == ["-m", "openrlhf.cli.train_ppo_ray"]
    assert printed[-1] == "--ds.packing_samples"  # passed through after `--`
    assert printed_json["recipe"]["dynamic_filtering_range"] == [0.1, 0.9]
    args = openrlhf_reads(printed[3:])
    assert args.rollout.temperature == 1.0 and args.rollout.n_samples_per_prompt == 16
    assert args.train.batch_size == 32 * 16
    assert not args.algo.dynamic_filtering_enable
    assert args.actor.eps_clip_low_high == [0.2, 0.28]
    assert args.actor.adam.lr == 5e-7 and args.actor.model_name_or_path == "my/model"
    assert args.rollout.max_new_tokens == 6144 and args.data.max_len == 8192
    assert args.ds.packing_samples


def test_every_recipe_field_has_a_flag_with_help():
    parser = train.build_parser()
    flags = {a.dest: a for a in parser._actions}
    for field in dataclasses.fields(GRPORecipe):
        assert field.name in flags, field.name
        assert field.metadata["help"] and "\n" not in field.metadata["help"]
    assert all(action.help for action in parser._actions)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n-samples-per-prompt", "1"], "n_samples_per_prompt must be > 1"),
        (["--max-new-tokens", "8192"], "max_new_tokens (8192) must be < max_len (8192)"),
        (["--overlong-buffer-len", "5000"], "overlong_buffer_len must be in [0, max_new_tokens]"),
        (["--rollout-backend", "tgi"], "rollout_backend must be one of ('sglang', 'vllm'), got 'tgi'"),
        (["--dynamic-filtering-range", "1", "0"], "dynamic_filtering_range needs low < high"),
        (["--clip-low", "1.5"], "need 0 < clip_low < 1"),
        (["--kl-coef", "-0.1"], "kl_coef must be >= 0"),
        (["--temperature", "hot"], "argument --temperature: invalid float value: 'hot'"),
        (
            ["--gpus-per-node", "8", "--rollout-tp", "3", "--rollout-backend", "vllm"],
            "rollout engines x rollout_tp must equal the actor's 8",
        ),
        (
            ["--gpus-per-node", "8", "--rollout-tp", "2"],
            "rollout_tp 2 is not supported with the sglang rollout backend",
        ),
        (["--updates-per-rollout", "3"], "256 samples per rollout do not split into 3 updates"),
        (["--loss-agg-mode", "seq-sum"], "loss_agg_mode must be one of"),
        (["--dataset", ""], "dataset must not be empty"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--async-rollout"], "async_rollout needs --no-colocate"),
        (["--", "--train.async_enable"], "use --async-rollout --no-colocate, not -- --train.async_enable"),
    ],
)
def test_bad_values_give_clear_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exited:
        train.main(["--dry-run", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_async_training_runs_its_engines_on_gpus_of_their_own():
    recipe = GRPORecipe(colocate=False, async_rollout=True)
    args = openrlhf_reads(train.openrlhf_args(recipe))  # OpenRLHF's own asserts pass: no sleeping engine
    assert args.train.async_enable and args.train.partial_rollout_enable
    assert not (args.train.colocate_all or args.vllm.enable_sleep or args.ds.enable_sleep)
    assert args.vllm.gpu_memory_utilization == 0.9  # its own GPU, not half of one
    assert recipe.gpus_needed == 2 and GRPORecipe().gpus_needed == 1
    assert GRPORecipe(colocate=False, kl_coef=0.01).gpus_needed == 3  # the reference model gets one too


def test_a_run_needing_more_gpus_than_visible_is_refused_before_ray(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "visible_gpus", lambda: 1)
    monkeypatch.setattr(train, "flash_attn_problem", lambda: None)
    monkeypatch.setattr(train.importlib.util, "find_spec", lambda name: True)  # installed, as on a GPU host
    monkeypatch.setattr(train.subprocess, "run", lambda *a, **kw: pytest.fail("the trainer was started"))
    with pytest.raises(SystemExit) as exited:
        argv = [
            "--async-rollout",
            "--no-colocate",
            "--dataset",
            "org/hub-set",
            "--save-path",
            str(tmp_path / "out"),
        ]
        train.main(argv)
    message = (
        "this run needs 2 GPUs (not colocated: 1 for the actor + 1 engine(s) x 1), but 1 are visible here"
    )
    assert exited.value.code == 2 and message in capsys.readouterr().err
    assert train.gpu_shortage(GRPORecipe(colocate=False, async_rollout=True), 2) is None
    assert train.gpu_shortage(GRPORecipe(num_nodes=2, colocate=False), 0) is None  # Ray places a cluster's


def test_the_image_installs_the_project_without_re_resolving_sglangs_pins():
    import tomllib

    base = (ROOT / "Dockerfile").read_text().split(" AS base\n")[1].split("\nFROM ")[0]
    run = base[base.index("RUN pip install --no-cache-dir --no-deps -e .") :].replace("\\\n", " ")
    own = shlex.split(run.split("&&")[1])[3:]  # after `pip install --no-cache-dir`
    wanted = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(own) == sorted(d for d in wanted if not d.startswith("sglang"))
