"""Launch OpenRLHF 0.11.2 GRPO on the synthesizer with the paper's recipe (`rl.recipe.GRPORecipe`) as defaults.

    python rl/train.py [--recipe-flags ...] [--dry-run] [-- EXTRA_OPENRLHF_FLAGS ...]
    python -m rl.train ...                       # the same

`--dry-run` prints the exact command and the recipe as JSON, and needs neither a GPU nor OpenRLHF (it warns
when this machine could not start the trainer). A real run needs CUDA GPUs, OpenRLHF installed
(`rl/requirements.txt`) and flash-attn 2 on that machine (`docker build --target rl` has all three), which is
checked before Ray starts; it records the same JSON as `<save_path>/a2r_recipe.json`. Flags after `--` are passed to OpenRLHF verbatim (e.g.
`-- --ds.packing_samples`).

The rollout backend decides what runs the trainer: `vllm` runs OpenRLHF's own CLI module; `sglang` runs the
`rl.sglang_rollout` launcher, which swaps OpenRLHF's rollout engine factory for an SGLang one and then runs
that same CLI module as `__main__`, so every upstream flag keeps its meaning. The reward is `rl/reward.py`,
passed by absolute path as `--reward.remote_url` (OpenRLHF loads a `.py` URL as a reward function file).

Single GPU (default): actor and rollout engine colocated and taking turns on the GPU (`--train.colocate_all
--vllm.enable_sleep --ds.enable_sleep`, the engine limited to half the GPU memory), Adam state offloaded to
CPU:

    python rl/train.py --dataset data/rl/train.jsonl

One node, 8 GPUs: `python rl/train.py --gpus-per-node 8 --no-adam-offload` (8 colocated engines, one GPU
each: SGLang rollout engines are not tensor-parallel, see `rl.recipe`). The OpenRLHF CLI starts a local Ray
instance itself.

Asynchronous (the next batch generated while the last one trains, with partial rollouts), one node, 2 GPUs:
`python rl/train.py --async-rollout --no-colocate`. OpenRLHF refuses async with sleeping engines, so the engines
run on GPUs of their own beside the actor; a run that asks for more GPUs than this machine shows is refused
before Ray starts (Ray would wait for them forever).

Several nodes, through Ray: start Ray on every node (`ray start --head --num-gpus 8` on the head,
`ray start --address HEAD_IP:6379 --num-gpus 8` on the others), keep this repository, the model and the
dataset at the same paths on every node (a shared filesystem), print the command with e.g.
`python rl/train.py --num-nodes 2 --gpus-per-node 8 --no-adam-offload --dry-run`, and submit it from the
repository root:

    ray job submit --address http://HEAD_IP:8265 \\
        --runtime-env-json '{"env_vars": {"PYTHONPATH": "'"$PWD"'"}}' -- <the printed command>
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python rl/train.py`: make the project root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from programs.core.flags import add_dataclass_args, dataclass_from_args  # noqa: E402
from rl.preflight import flash_attn_problem  # noqa: E402
from rl.recipe import OPENRLHF_CLI, GRPORecipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REWARD_FILE = Path(__file__).resolve().with_name("reward.py")
SGLANG_LAUNCHER = "rl.sglang_rollout"  # runs OPENRLHF_CLI as __main__ with SGLang rollout engines
TRAINER_MODULES = {"vllm": OPENRLHF_CLI, "sglang": SGLANG_LAUNCHER}
BACKEND_NEEDS = {  # module a backend cannot run without -> what to do about it
    "vllm": ("vllm", "install vllm (it pins its own torch: use a separate venv from SGLang's)"),
    "sglang": (SGLANG_LAUNCHER, "the SGLang rollout engine module is missing"),
}
RUN_RECORD = "a2r_recipe.json"  # written into save_path when a run starts


Flags = dict[str, Any]  # flag -> value; True: a bare switch; False or None: left out; tuple: several values


def _argv(flags: Flags) -> list[str]:
    argv: list[str] = []
    for flag, value in flags.items():
        if value is True:
            argv.append(flag)
        elif value is not None and value is not False:
            argv += [flag, *map(str, value if isinstance(value, tuple) else (value,))]
    return argv


def openrlhf_groups(r: GRPORecipe) -> list[tuple[str, list[str]]]:
    """The OpenRLHF flags for `r`, grouped as OpenRLHF's example scripts group them."""
    groups: dict[str, Flags] = {
        "data": {
            "--data.prompt_dataset": r.dataset,
            "--data.input_key": r.input_key,
            "--data.label_key": r.label_key,
            "--data.apply_chat_template": r.apply_chat_template,
            "--data.max_len": r.max_len,  # prompt + response
        },
        "rollout": {
            "--rollout.batch_size": r.rollout_batch_size,  # prompts
            "--rollout.n_samples_per_prompt": r.n_samples_per_prompt,
            "--rollout.micro_batch_size": r.forward_micro_batch_size,
            "--rollout.max_new_tokens": r.max_new_tokens,  # also the overlong penalty's threshold
            "--rollout.temperature": r.temperature,
            "--rollout.top_p": r.top_p,
        },
        "reward": {
            "--reward.remote_url": str(REWARD_FILE),
            "--reward.overlong_buffer_len": r.overlong_buffer_len or None,
            "--reward.overlong_penalty_factor": r.overlong_penalty_factor if r.overlong_buffer_len else None,
        },
        "algorithm": {
            "--algo.advantage.estimator": r.advantage_estimator,
            "--algo.kl.init_coef": r.kl_coef,  # 0: no reference model
            "--algo.dynamic_filtering_enable": r.dynamic_filtering,
            "--algo.dynamic_filtering_range": r.dynamic_filtering_range if r.dynamic_filtering else None,
        },
        "actor": {
            "--actor.model_name_or_path": r.model,
            "--actor.num_nodes": r.num_nodes,
            "--actor.num_gpus_per_node": r.gpus_per_node,
            "--ref.num_nodes": r.num_nodes
            if r.kl_coef > 0
            else None,  # the reference shares the actor's GPUs
            "--ref.num_gpus_per_node": r.gpus_per_node if r.kl_coef > 0 else None,
            "--actor.eps_clip_low_high": (r.clip_low, r.clip_high),
            "--actor.loss_agg_mode": r.loss_agg_mode,
            "--actor.adam.lr": r.learning_rate,
            "--actor.gradient_checkpointing_enable": r.gradient_checkpointing,
            "--train.batch_size": r.train_batch_size,  # samples per optimizer step
            "--train.micro_batch_size": r.train_micro_batch_size,
            "--train.max_epochs": r.max_epochs,
            "--train.num_episodes": r.episodes,
            "--train.seed": r.seed,
        },
        "engine": {
            "--vllm.num_engines": r.num_rollout_engines,  # OpenRLHF's names; the SGLang engine reads them too
            "--vllm.tensor_parallel_size": r.rollout_tp,
            "--vllm.gpu_memory_utilization": r.rollout_memory_share,
            "--vllm.enable_prefix_caching": r.prefix_caching,
            "--train.colocate_all": r.colocate,
            "--vllm.enable_sleep": r.colocate,
            "--ds.enable_sleep": r.colocate,
            "--train.async_enable": r.async_rollout,
            "--train.partial_rollout_enable": r.async_rollout,
            "--ds.zero_stage": r.zero_stage,
            "--ds.adam_offload": r.adam_offload,
        },
        "checkpoint": {
            "--ckpt.output_dir": r.save_path,
            "--ckpt.path": str(Path(r.save_path) / "ckpt"),
            "--ckpt.save_steps": r.save_steps,
            "--ckpt.save_hf": r.save_hf,
            "--ckpt.load_enable": r.resume,
        },
        "logging": {
            "--logger.logging_steps": r.logging_steps,
            "--logger.tensorboard_dir": r.tensorboard_dir,
        },
    }
    return [(name, _argv(flags)) for name, flags in groups.items()]


def openrlhf_args(recipe: GRPORecipe) -> list[str]:
    """All OpenRLHF `train_ppo_ray` flags for `recipe`, in group order."""
    return [arg for _, args in openrlhf_groups(recipe) for arg in args]


def command(recipe: GRPORecipe, extra: Sequence[str] = ()) -> list[str]:
    """The full trainer command: this Python, the backend's trainer module, the recipe's flags, `extra`."""
    return [sys.executable, "-m", TRAINER_MODULES[recipe.rollout_backend], *openrlhf_args(recipe), *extra]


def format_command(recipe: GRPORecipe, extra: Sequence[str] = ()) -> str:
    """`command` as a shell command, one flag group per line."""
    lines = [shlex.join(command(recipe)[:3])]
    lines += ["  " + shlex.join(args) for _, args in openrlhf_groups(recipe) if args]
    if extra:
        lines.append("  " + shlex.join(extra))
    return " \\\n".join(lines)


def recipe_json(recipe: GRPORecipe, extra: Sequence[str] = ()) -> dict:
    """The recipe, the values derived from it and the exact command: printed by --dry-run, saved with a run."""
    derived = (
        "prompt_max_len",
        "train_batch_size",
        "num_rollout_engines",
        "rollout_memory_share",
        "gpus_needed",
    )
    return {
        "recipe": dataclasses.asdict(recipe),
        "derived": {k: getattr(recipe, k) for k in derived},
        "command": command(recipe, extra),
    }


def build_parser() -> argparse.ArgumentParser:
    """One flag per `GRPORecipe` field, named after it; unset flags keep the dataclass default."""
    parser = argparse.ArgumentParser(
        prog="python rl/train.py",
        usage="%(prog)s [RECIPE FLAGS] [--dry-run] [-- OPENRLHF FLAGS]",
        description="GRPO of the A2R synthesizer with OpenRLHF 0.11.2. Flags after `--` go to OpenRLHF verbatim.",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the command and recipe; run nothing")
    group = parser.add_argument_group("recipe", "defaults are the paper's recipe (rl/recipe.py)")
    add_dataclass_args(group, GRPORecipe, suppress_defaults=True)
    return parser


def with_absolute_paths(recipe: GRPORecipe) -> GRPORecipe:
    """Local paths made absolute, so Ray workers (whatever their working directory) read and write where meant.

    The model and dataset may also be hub names: those are left alone unless a local path of that name exists.
    """
    local = {
        k: str(Path(getattr(recipe, k)).resolve())
        for k in ("model", "dataset")
        if Path(getattr(recipe, k)).exists()
    }
    outputs = {
        k: str(Path(v).resolve()) for k in ("save_path", "tensorboard_dir") if (v := getattr(recipe, k))
    }
    return dataclasses.replace(recipe, **local, **outputs)


def visible_gpus() -> int:
    """The CUDA devices this process (and so the Ray instance OpenRLHF starts) can use."""
    import torch

    return torch.cuda.device_count()


def gpu_shortage(recipe: GRPORecipe, visible: int) -> str | None:
    """Why a one-node run cannot place its actor and engines on `visible` GPUs; Ray would wait forever."""
    if recipe.num_nodes > 1 or recipe.gpus_needed <= visible:
        return None  # a Ray cluster's GPUs are not visible from here; Ray places those
    layout = (
        "colocated"
        if recipe.colocate
        else (
            f"not colocated: {recipe.actor_gpus} for the actor"
            + (f" + {recipe.actor_gpus} for the reference model" if recipe.kl_coef > 0 else "")
            + f" + {recipe.num_rollout_engines} engine(s) x {recipe.rollout_tp}"
        )
    )
    return f"this run needs {recipe.gpus_needed} GPUs ({layout}), but {visible} are visible here"


def _check_runnable(recipe: GRPORecipe) -> str | None:
    """What stops a real launch on this machine, if anything (a dry run needs none of it)."""
    if importlib.util.find_spec("openrlhf") is None:
        return "OpenRLHF is not installed: pip install -r rl/requirements.txt && pip install --no-deps openrlhf==0.11.2"
    flash_attn = flash_attn_problem()
    if flash_attn:
        return flash_attn
    module, remedy = BACKEND_NEEDS[recipe.rollout_backend]
    if importlib.util.find_spec(module) is None:
        return f"rollout backend {recipe.rollout_backend!r} needs the module {module}: {remedy}"
    dataset = Path(recipe.dataset)
    if dataset.suffix in (".json", ".jsonl", ".parquet") and not dataset.exists():
        return f"dataset {dataset} does not exist (build it first, or pass --dataset)"
    return gpu_shortage(recipe, visible_gpus())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = build_parser()
    args = parser.parse_args(own)
    if "--train.async_enable" in extra:
        parser.error(
            "use --async-rollout --no-colocate, not -- --train.async_enable: it checks the GPU layout"
        )
    try:
        recipe = with_absolute_paths(dataclass_from_args(GRPORecipe, args))
    except ValueError as e:
        parser.error(str(e))
    if args.dry_run:
        # A warning, not a refusal: the command may be printed here to be submitted to a Ray cluster elsewhere.
        problem = flash_attn_problem()
        if problem:
            print(f"warning: this machine cannot start the trainer: {problem}", file=sys.stderr)
        print(format_command(recipe, extra))
        print()
        print(json.dumps(recipe_json(recipe, extra), indent=2))
        return 0
    problem = _check_runnable(recipe)
    if problem:
        parser.error(problem)
    Path(recipe.save_path).mkdir(parents=True, exist_ok=True)
    (Path(recipe.save_path) / RUN_RECORD).write_text(json.dumps(recipe_json(recipe, extra), indent=2) + "\n")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(command(recipe, extra), env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
