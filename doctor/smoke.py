"""The doctor's smoke test: the project's own commands on random-weight Qwen3 engines, judged by their JSON.

The commands are the ones a user types (`python -m programs.a2r`, `python -m benchmarks.throughput`,
`python -m rl.train`), run as subprocesses on Qwen3-4B and Qwen3-8B architectures loaded with
`--load-format dummy`: their config.json files ship in `doctor/gpu_configs/` (the values of
huggingface.co/Qwen/Qwen3-{0.6B,4B,8B}), next to the offline kit's tiny tokenizer, so nothing is downloaded.
Random weights sample ids across Qwen's 151,936-token vocabulary; SGLang's detokenizer turns those the tiny
tokenizer lacks into empty text (tried on the CPU engine), and every figure here is the engines' own token
count, so the text does not matter.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from programs.cli import console
from programs.profile import PAPER

CONFIG_DIR = Path(__file__).resolve().parent / "gpu_configs"


def config_name(model: str) -> str:
    """The shipped config.json of a hub model, by file stem: 'Qwen/Qwen3-4B' -> 'qwen3-4b'."""
    return model.rsplit("/", 1)[-1].lower()


# Role -> (the paper profile's default model, its shipped config).
GPU_MODELS = {
    role: (model, config_name(model))
    for role, model in (("explorer", PAPER.explorer_model), ("synthesizer", PAPER.synthesizer_model))
}
RL_CONFIG = "qwen3-0.6b"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
TOKENIZER_COMMAND = ("-m", "programs.offline.model", "--role", "explorer", "--untrained")

# Smoke sizes. A2R: 2 problems, N=4, short budgets (random weights never stop on their own). Throughput: one
# round of its four modes at fixed lengths, each with problems for at least 5 s of decoding (timed on the
# fastest mode, raw): the 20-second run. The table prints the seconds they took.
A2R_ARGS = ("--n", "4", "--dataset", "aime24", "--limit", "2")
A2R_ARGS += ("--explorer-max-tokens", "256", "--synthesizer-max-tokens", "256")
THROUGHPUT_ARGS = ("--n", "4", "--dataset", "aime24", "--fixed-length", "--rounds", "1", "--seconds", "5")
THROUGHPUT_ARGS += ("--explorer-tokens", "512", "--synthesizer-tokens", "128")
# One GRPO step: 2 prompts x 2 samples, one rollout batch, no dynamic filtering (random weights score 0 on
# every sample, and filtering would refill forever), no resume from an earlier doctor run.
GRPO_ARGS = ("--rollout-batch-size", "2", "--n-samples-per-prompt", "2", "--episodes", "1")
GRPO_ARGS += ("--max-len", "512", "--max-new-tokens", "64", "--overlong-buffer-len", "0")
GRPO_ARGS += ("--no-dynamic-filtering", "--save-steps", "-1", "--no-save-hf", "--no-resume")
GRPO_ARGS += ("--no-adam-offload",)
GRPO_PROMPTS = ({"prompt": "What is 2 + 3?", "answer": "5"}, {"prompt": "What is 4 * 6?", "answer": "24"})
# With N=4 forks sharing each prompt, a working prefix cache serves most of the explorer's prompt tokens.
MIN_CACHE_HIT = 0.5
STEP_TIMEOUT_S = 1800.0  # engine start (CUDA graphs) twice over, plus the runs

PASS, WARN, FAIL, SKIP = "pass", "warn", "FAIL", "skip"
A2R, THROUGHPUT, GRPO = "A2R, 2 problems", "throughput, fixed length", "GRPO step, 0.6B"  # the smoke rows


@dataclass(frozen=True)
class Check:
    """One row of the doctor's table: what was checked, how it came out, the figures, and what to do."""

    name: str
    status: str
    figures: str
    advice: str = ""


@dataclass(frozen=True)
class Step:
    """How one smoke command ended: its exit status, its wall time and where its output went."""

    returncode: int
    seconds: float
    log: Path


def load_config(name: str) -> dict[str, Any]:
    """A shipped config.json, by its file name in `doctor/gpu_configs/` (e.g. 'qwen3-4b')."""
    return json.loads((CONFIG_DIR / f"{name}.json").read_text())


def tokenizer_ids(tokenizer_dir: Path) -> int:
    """How many token ids the tokenizer can produce (its vocabulary and added tokens)."""
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    ids = list(data["model"]["vocab"].values()) + [t["id"] for t in data.get("added_tokens", [])]
    return max(ids) + 1


def model_folder(config_name: str, tokenizer_dir: Path, dest: Path) -> Path:
    """`dest/config_name`: the shipped config.json beside the tiny tokenizer, servable with --load-format dummy.

    A tokenizer with ids past the model's vocabulary would feed the embedding ids it does not have; the
    other way round (the case here) only leaves sampled ids without text."""
    config = load_config(config_name)
    if tokenizer_ids(tokenizer_dir) > config["vocab_size"]:
        raise ValueError(
            f"tokenizer in {tokenizer_dir} has {tokenizer_ids(tokenizer_dir)} ids, more than {config_name}'s "
            f"vocabulary of {config['vocab_size']}"
        )
    folder = dest / config_name
    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, folder / name)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def write_random_weights(folder: Path) -> None:
    """Random bf16 weights for the config in `folder`: the RL trainer loads real files, unlike SGLang's dummy."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.bfloat16)
    model.save_pretrained(folder)


def dummy_run_command(
    module: str, args: tuple[str, ...], models: dict[str, Path], output: Path, python: str = sys.executable
) -> list[str]:
    """A project command as a user types it, on the model folders with random weights."""
    engines = ["--explorer-model", str(models["explorer"]), "--synthesizer-model", str(models["synthesizer"])]
    return [python, "-m", module, *engines, "--load-format", "dummy", *args, "--output", str(output)]


def grpo_command(model: Path, dataset: Path, output: Path, python: str = sys.executable) -> list[str]:
    recipe = ["--model", str(model), "--dataset", str(dataset), "--save-path", str(output)]
    return [python, "-m", "rl.train", *recipe, *GRPO_ARGS]


def smoke_commands(folder: Path, rl: bool, python: str = sys.executable) -> dict[str, list[str]]:
    """Every command the smoke test runs, by name, with its files under `folder`."""
    models = {role: folder / "models" / name for role, (_, name) in GPU_MODELS.items()}
    commands = {
        A2R: dummy_run_command("programs.a2r", A2R_ARGS, models, folder / "a2r", python),
        THROUGHPUT: dummy_run_command(
            "benchmarks.throughput", THROUGHPUT_ARGS, models, folder / "throughput", python
        ),
    }
    if rl:
        commands[GRPO] = grpo_command(
            folder / "models" / RL_CONFIG, folder / "grpo.jsonl", folder / "grpo", python
        )
    return commands


def failed_step(name: str, step: Step) -> Check:
    return Check(name, FAIL, f"exit {step.returncode} after {step.seconds:.0f} s", f"see {step.log}")


def a2r_check(step: Step, summary: dict[str, Any] | None) -> Check:
    """The A2R run's summary.json: every problem solved, and forked paths sharing their prompt's KV."""
    if step.returncode != 0 or summary is None:
        return failed_step(A2R, step)
    hit = summary["explorer"]["prefix_cache_hit_ratio"]
    figures = (
        f"{summary['problems']} solved, {summary['failed']} failed; explorer prefix cache hit {hit:.1%}; "
        f"{step.seconds:.0f} s with engine start"
    )
    if summary["failed"]:
        return Check(A2R, FAIL, figures, f"their records say why: see {step.log}")
    if hit < MIN_CACHE_HIT:
        advice = f"below {MIN_CACHE_HIT:.0%}: the forked paths did not reuse their prompt's KV"
        return Check(A2R, FAIL, figures, advice)
    return Check(A2R, PASS, figures)


def throughput_check(step: Step, result: dict[str, Any] | None) -> Check:
    """The throughput run's throughput.json: output tokens/s of every mode it ran (its `modes`, so the mode
    names stay the benchmark's) and the seconds they were timed."""
    if step.returncode != 0 or result is None:
        return failed_step(THROUGHPUT, step)
    modes = result["modes"]
    rates = {mode: figures["tokens_per_s"] for mode, figures in modes.items()}
    timed = sum(figures["wall_s"] for figures in modes.values())
    figures = (
        "tokens/s "
        + ", ".join(f"{mode} {rate:,.0f}" for mode, rate in rates.items())
        + f"; a2r/raw {result['ratios']['a2r_over_raw']['median']:.2f}; "
        f"cache hit {result['explorer_cache_hit_ratio']:.1%}; {timed:.0f} s timed"
    )
    if not rates or min(rates.values()) <= 0:
        return Check(THROUGHPUT, FAIL, figures, f"a mode produced no tokens: see {step.log}")
    return Check(THROUGHPUT, PASS, figures)


def grpo_check(step: Step, saved: bool) -> Check:
    """One GRPO step ends with OpenRLHF saving the trained model (its config.json) into the save path."""
    if step.returncode != 0:
        return failed_step(GRPO, step)
    if not saved:
        return Check(GRPO, FAIL, f"exit 0 after {step.seconds:.0f} s", f"no model saved: see {step.log}")
    return Check(GRPO, PASS, f"trained and saved in {step.seconds:.0f} s")


def single_gpu_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with only the first visible GPU, so the smoke test plans the co-located layout on any machine."""
    visible = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
    return {**env, "CUDA_VISIBLE_DEVICES": visible}


def run_step(argv: list[str], log: Path, env: dict[str, str]) -> Step:
    log.parent.mkdir(parents=True, exist_ok=True)
    console.print(f"running: {shlex.join(argv)}")
    start = time.perf_counter()
    with log.open("w") as sink:
        try:
            code = subprocess.run(
                argv, env=env, stdout=sink, stderr=subprocess.STDOUT, timeout=STEP_TIMEOUT_S
            ).returncode
        except subprocess.TimeoutExpired:
            code = -1
    return Step(code, time.perf_counter() - start, log)


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def tiny_tokenizer(python: str = sys.executable) -> Path:
    """The offline kit's tokenizer folder, from the command the doctor's plan shows a user."""
    done = subprocess.run([python, *TOKENIZER_COMMAND], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join([python, *TOKENIZER_COMMAND])} failed:\n{done.stderr[-2000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def build_model_folders(folder: Path) -> dict[str, Path]:
    """Role -> a servable folder of its default model's architecture, under `folder/models`."""
    tokenizer = tiny_tokenizer()
    return {role: model_folder(name, tokenizer, folder / "models") for role, (_, name) in GPU_MODELS.items()}


def smoke_a2r_and_throughput(folder: Path) -> list[Check]:
    """Both roles co-located on one GPU with dummy Qwen3-4B/8B: an A2R run, then a fixed-length throughput run,
    on the model folders `build_model_folders(folder)` made (the environment checks read them first)."""
    commands, env = smoke_commands(folder, rl=False), single_gpu_env(dict(os.environ))
    step = run_step(commands[A2R], folder / "logs" / "a2r.log", env)
    checks = [a2r_check(step, read_json(folder / "a2r" / "summary.json"))]
    step = run_step(commands[THROUGHPUT], folder / "logs" / "throughput.log", env)
    return [*checks, throughput_check(step, read_json(folder / "throughput" / "throughput.json"))]


def smoke_grpo(folder: Path) -> Check:
    """One GRPO step of OpenRLHF with SGLang rollouts on a random 0.6B-sized Qwen3, on one GPU."""
    model = model_folder(RL_CONFIG, tiny_tokenizer(), folder / "models")
    write_random_weights(model)
    dataset = folder / "grpo.jsonl"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in GRPO_PROMPTS))
    step = run_step(
        smoke_commands(folder, rl=True)[GRPO],
        folder / "logs" / "grpo.log",
        single_gpu_env(dict(os.environ)),
    )
    return grpo_check(step, (folder / "grpo" / "config.json").exists())
