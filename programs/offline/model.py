"""The project's offline models: a small explorer and a larger synthesizer of the Qwen3 architecture, with
their own tokenizer, trained here on the `chain` arithmetic task in the A2R format, seeded and cached on disk.

No weights can be downloaded on the CPU machines, so the CPU default and the tests serve these instead, as the
asymmetric pair A2R is built for:
- explorer: 2 layers, hidden 128, 4 query / 2 KV heads; it learns both roles;
- synthesizer: the trained explorer grown to 4 layers (`grow`: the new layers start as identities), then
  trained on synthesizer turns alone, to re-derive the answer whatever its references say.
Both share a byte-level BPE tokenizer learned from the project's own math text and the chain task, and a
Qwen3-style ChatML chat template with the `enable_thinking` switch. The first build trains both (about four
minutes on two idle cores, with a progress bar), so their answers mean something: the explorer's paths
disagree and differ in length, and the synthesizer re-derives its answer instead of taking their vote (it
does not yet weigh the references either: see docs/offline-pair.md). Random weights stay one flag away. The
pair is cached, named by everything that shapes it (`build_key`) and built by one process at a time
(`programs.offline.cache`).

    python -m programs.offline.model [--seed N] [--out DIR] [--untrained] [--role synthesizer]
                                                          # prints the role's model directory (explorer)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from programs.core import prompts
from programs.core.jsonl import read_jsonl
from programs.offline import cache, chain, training
from programs.offline.training import (
    EXPLORER_RECIPE,
    NUMERICS,
    SYNTHESIZER_RECIPE,
    TrainRecipe,
    numerics_set,
    train,
)
from programs.shipped_data import DATA_DIR

if TYPE_CHECKING:  # heavy imports are deferred until a model is actually built
    from transformers import PreTrainedModel, PreTrainedTokenizerFast, Qwen3Config

CORPUS_DIR = DATA_DIR  # the tokenizer also learns the words of the shipped problem sets
CORPUS_FIELDS = ("problem", "question", "solution", "answer")  # text fields of the shipped datasets
TOKENIZER_TURNS = 2000  # chain-task turns the tokenizer also learns from
PROGRESS_EVERY_S = 30.0  # piped, a build says where it is this often

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
THINK_TOKENS = (
    prompts.THINK_START,
    prompts.THINK_END,
)  # plain added tokens, like Qwen3's: kept when special tokens are skipped

VOCAB_SIZE = 2048
SYNTHESIZER_LAYERS = 4
ARCHITECTURE = {  # the explorer's; the synthesizer's differs in depth alone
    "num_hidden_layers": 2,
    "hidden_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "intermediate_size": 512,
    "max_position_embeddings": 4096,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}

# Qwen3's ChatML: the generation prompt opens the assistant turn, and the model thinks first unless
# `enable_thinking=False`, which pre-fills an empty think block as Qwen3's own template does.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def corpus_files(corpus_dir: Path = CORPUS_DIR) -> list[Path]:
    """The JSONL files the tokenizer learns from, in a fixed order."""
    files = sorted(corpus_dir.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no *.jsonl files to train the tiny model's tokenizer on in {corpus_dir}")
    return files


def corpus_texts(files: list[Path]) -> Iterator[str]:
    """Every problem/solution/answer string in `files`, in file and line order."""
    for path in files:
        for _, row in read_jsonl(path):
            for key, value in row.items():
                if key.lower() in CORPUS_FIELDS and isinstance(value, str):
                    yield value


def chain_texts() -> Iterator[str]:
    """Both sides of a fixed sample of chain-task turns, so the task's words and numbers get tokens of their own
    (the same sample for every seed and recipe: one tokenizer for all)."""
    for turn in chain.training_turns(0, TOKENIZER_TURNS):
        yield turn.user
        yield turn.assistant


def build_tokenizer(texts: Iterator[str]) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (every string round-trips) with ChatML specials and single think tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[*SPECIAL_TOKENS, *THINK_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        chat_template=CHAT_TEMPLATE,
        model_max_length=ARCHITECTURE["max_position_embeddings"],
    )


@dataclass(frozen=True)
class OfflineModels:
    """The model folders of one cache entry."""

    explorer: Path
    synthesizer: Path

    @classmethod
    def inside(cls, entry: Path) -> OfflineModels:
        return cls(entry / "explorer", entry / "synthesizer")


def build_config(tokenizer: PreTrainedTokenizerFast, layers: int | None = None) -> Qwen3Config:
    """The tiny Qwen3 architecture (`layers` deep: the explorer's 2 by default), with the vocabulary and stop
    tokens of `tokenizer`."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id,
        dtype="bfloat16",
        **{**ARCHITECTURE, "num_hidden_layers": layers or ARCHITECTURE["num_hidden_layers"]},
    )


def init_weights(config: Qwen3Config, seed: int) -> PreTrainedModel:
    """Random weights, the same for the same seed; training starts from them."""
    import torch
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config).to(torch.bfloat16).eval()


def grow(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, layers: int) -> PreTrainedModel:
    """`model` made `layers` deep: each layer is followed by new ones whose output projections are zero, so
    the grown model starts out computing exactly what `model` does and training only adds to it."""
    import torch

    old = model.config.num_hidden_layers
    if layers % old:
        raise ValueError(f"cannot grow {old} layers to {layers}: not a multiple")
    grown = init_weights(build_config(tokenizer, layers), seed=0)
    weights, spread = grown.state_dict(), layers // old
    for name, tensor in model.state_dict().items():
        if not name.startswith("model.layers."):
            weights[name] = tensor
            continue
        index, rest = name.removeprefix("model.layers.").split(".", 1)
        weights[f"model.layers.{int(index) * spread}.{rest}"] = tensor
    for index in range(layers):
        if index % spread:
            for projection in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
                weights[f"model.layers.{index}.{projection}"] = torch.zeros_like(
                    weights[f"model.layers.{index}.{projection}"]
                )
    grown.load_state_dict(weights)
    return grown


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> None:
    """Write weights (safetensors), config, tokenizer and a generation config that stops at either end token."""
    from transformers import GenerationConfig

    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    stop_ids = [tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(ENDOFTEXT)]
    GenerationConfig(
        bos_token_id=model.config.bos_token_id, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id
    ).save_pretrained(out_dir)


class BuildProgress:
    """A build's progress for its user on `stream`: on a terminal a bar with the time left, estimated from
    the recent pace (rich's); piped, that estimate in a line every PROGRESS_EVERY_S. With no steps (random
    weights) it shows nothing."""

    def __init__(self, stream: TextIO, steps: int) -> None:
        self.console = Console(file=stream, soft_wrap=True)
        columns = (
            TextColumn("training the {task.fields[role]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps"),
            TimeElapsedColumn(),
            TextColumn("elapsed, about"),
            TimeRemainingColumn(),
            TextColumn("left"),
        )
        live = self.console.is_terminal and steps > 0
        # rich would route sys.stdout and sys.stderr through the bar's console, to the terminal: they are left
        # to carry other libraries' output to the build's log (`foreign_output_to`).
        self.progress = Progress(
            *columns, console=self.console, disable=not live, redirect_stdout=False, redirect_stderr=False
        )
        self.task = self.progress.add_task("build", total=steps, role="explorer")
        self.next_line = time.monotonic() + PROGRESS_EVERY_S

    def __enter__(self) -> BuildProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def say(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False)

    def step(self, role: str) -> None:
        self.progress.update(self.task, advance=1, role=role)
        if self.console.is_terminal or time.monotonic() < self.next_line:
            return
        self.next_line = time.monotonic() + PROGRESS_EVERY_S
        task = self.progress.tasks[0]
        left = f", about {task.time_remaining / 60:.1f} min left" if task.time_remaining is not None else ""
        self.say(
            f"training the {role}: step {task.completed:.0f} of {task.total:.0f} after {task.elapsed:.0f} s{left}"
        )


def build_offline_models(
    out_dir: Path,
    seed: int = 0,
    corpus_dir: Path = CORPUS_DIR,
    trained: bool = True,
    terminal: TextIO | None = None,
) -> OfflineModels:
    """Build the pair into `out_dir` (`explorer/`, `synthesizer/`), trained or with random weights, atomically
    (`cache.staged`: readers see a complete pair or none). A trained model keeps its account in training.json,
    and the build's progress goes to `terminal` (default: stderr)."""
    out_dir = Path(out_dir)
    with cache.staged(out_dir, complete) as staging:
        _build(
            OfflineModels.inside(staging), seed, corpus_dir, trained, terminal or sys.stderr, out_dir.parent
        )
    return OfflineModels.inside(out_dir)


def _build(
    staged: OfflineModels, seed: int, corpus_dir: Path, trained: bool, terminal: TextIO, cache_dir: Path
) -> None:
    """The tokenizer, then each model trained (or not) and saved into `staged`, its progress on `terminal`."""
    tokenizer = build_tokenizer(itertools.chain(corpus_texts(corpus_files(corpus_dir)), chain_texts()))
    steps = EXPLORER_RECIPE.steps + SYNTHESIZER_RECIPE.steps if trained else 0
    with BuildProgress(terminal, steps) as progress:
        if trained:
            progress.say(f"Training the offline explorer and synthesizer (seed {seed}; about four minutes "
                f"on two idle cores, once: they are cached in {cache_dir})")  # fmt: skip
        explorer = init_weights(build_config(tokenizer), seed)
        if trained:
            explorer = _train(
                explorer, tokenizer, seed, EXPLORER_RECIPE, staged.explorer, progress, "explorer"
            )
        save_model(explorer, tokenizer, staged.explorer)
        synthesizer = grow(explorer, tokenizer, SYNTHESIZER_LAYERS)
        if trained:
            synthesizer = _train(
                synthesizer, tokenizer, seed, SYNTHESIZER_RECIPE, staged.synthesizer, progress, "synthesizer"
            )
        save_model(synthesizer, tokenizer, staged.synthesizer)


def _train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    seed: int,
    recipe: TrainRecipe,
    out: Path,
    progress: BuildProgress,
    role: str,
) -> PreTrainedModel:
    """`model` trained by `recipe`, its account (seed, recipe, seconds, losses) written to out/training.json."""
    start = time.perf_counter()
    model, losses = train(model, tokenizer, seed, recipe, on_step=lambda: progress.step(role))
    seconds = time.perf_counter() - start
    progress.say(
        f"Trained the {role} in {seconds:.0f} s, final loss {sum(losses[-100:]) / len(losses[-100:]):.3f}"
    )
    out.mkdir(parents=True)
    record = {"seed": seed, "recipe": asdict(recipe), "seconds": round(seconds, 1), "losses": losses}
    (out / "training.json").write_text(json.dumps(record) + "\n")
    return model


def complete(entry: Path) -> bool:
    """Whether a cache entry holds both models (its last write is the synthesizer's config)."""
    return all((folder / "config.json").is_file() for folder in asdict(OfflineModels.inside(entry)).values())


def build_key(seed: int, trained: bool = True, corpus_dir: Path = CORPUS_DIR) -> str:
    """Names a build by everything that shapes it: the sources of this builder, of the training recipes, of the
    chain task and of the prompt rendering, the corpus, library versions, trained or not, and the seed."""
    digest = hashlib.sha256()
    for source in (__file__, training.__file__, chain.__file__, prompts.__file__):
        digest.update(Path(source).read_bytes())
    for path in corpus_files(corpus_dir):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(json.dumps(NUMERICS, sort_keys=True).encode())
    for package in ("torch", "transformers", "tokenizers"):
        digest.update(f"{package}=={metadata.version(package)}".encode())
    kind = "pair" if trained else "random"
    return f"qwen3-tiny-{kind}-seed{seed}-{digest.hexdigest()[:12]}"


def offline_models(seed: int = 0, root: Path | None = None, trained: bool = True) -> OfflineModels:
    """The cached pair for `seed`, built on first use and safe to call from parallel processes: one builds it,
    the others wait for it.

    Trained (the default) the first build takes minutes; `trained=False` gives random weights in seconds,
    for tests that need an engine and not answers.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    entry = (root or cache.cache_root()) / build_key(seed, trained)
    if complete(entry):
        return OfflineModels.inside(entry)
    if trained and not numerics_set():  # a child started with the training numerics builds it (or waits)
        cache_env = {cache.CACHE_ENV: str(root)} if root else {}
        command = [sys.executable, "-m", "programs.offline.model", "--seed", str(seed)]
        done = subprocess.run(command, env={**os.environ, **NUMERICS, **cache_env}, stdout=subprocess.DEVNULL)
        if done.returncode != 0 or not complete(entry):
            raise RuntimeError(
                f"building the offline pair failed (exit {done.returncode}): see {cache.build_log(entry)}"
            )
        return OfflineModels.inside(entry)

    def build(entry: Path, terminal: TextIO) -> None:
        build_offline_models(entry, seed, trained=trained, terminal=terminal)

    cache.build_once(entry, complete, build)
    return OfflineModels.inside(entry)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the training data")
    parser.add_argument("--out", type=Path, help="build into this new directory instead of the cache")
    parser.add_argument("--untrained", action="store_true", help="random weights, no training")
    parser.add_argument(
        "--role", choices=("explorer", "synthesizer"), default="explorer", help="whose folder to print"
    )
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.out and args.out.exists():
        parser.error(f"--out {args.out} already exists; give a new directory")
    if args.out and not args.untrained and not numerics_set():  # train with the numerics every build uses
        sys.exit(
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "programs.offline.model",
                    *(argv if argv is not None else sys.argv[1:]),
                ],
                env={**os.environ, **NUMERICS},
            ).returncode
        )
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the path alone: M=$(python -m ...)
        if args.out:
            models = build_offline_models(args.out, args.seed, trained=not args.untrained)
        else:
            models = offline_models(args.seed, trained=not args.untrained)
    print(getattr(models, args.role))


if __name__ == "__main__":
    main()
