"""The project's offline tiny model: a Qwen3-architecture model with its own tokenizer, trained here on a
synthetic arithmetic task in the A2R format, seeded and cached on disk.

No weights can be downloaded on the CPU machines, so the CPU default and the tests serve this model instead:
2 layers, hidden 128, 4 query / 2 KV heads, a byte-level BPE tokenizer learned from the project's own math
text and the synthetic task, and a Qwen3-style ChatML chat template with the `enable_thinking` switch.
The first build trains it for `TrainRecipe.steps` steps on `programs.offline.task` explorer and synthesizer
turns (about two minutes on two idle cores), so its answers mean something: it often gets small sums right,
its samples disagree, and its synthesizer follows its references. Random weights stay one flag away.

    python -m programs.offline.model [--seed N] [--out DIR] [--untrained]    # prints the model directory
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from programs.core import prompts
from programs.datasets import DATA_DIR
from programs.offline import task as synthetic

if TYPE_CHECKING:  # heavy imports are deferred until a model is actually built
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerFast, Qwen3Config

CORPUS_DIR = DATA_DIR  # the tokenizer also learns the words of the shipped problem sets
CORPUS_FIELDS = ("problem", "question", "solution", "answer")  # text fields of the shipped datasets
CACHE_ENV = "A2R_CACHE"
TOKENIZER_TURNS = 2000  # synthetic turns the tokenizer also learns from

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
THINK, END_THINK = "<think>", "</think>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
THINK_TOKENS = (THINK, END_THINK)  # plain added tokens, like Qwen3's: kept when special tokens are skipped

VOCAB_SIZE = 2048
ARCHITECTURE = {
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


@dataclass(frozen=True)
class TrainRecipe:
    """How the tiny model learns the synthetic task; all of it is part of the model's cache key."""

    steps: int = 2000
    batch_tokens: int = 1024  # per step, padding included: turns of similar length are batched together
    learning_rate: float = 5e-3  # AdamW peak, after a linear warm-up, then cosine down to a tenth
    warmup_steps: int = 20
    weight_decay: float = 0.1  # on matrices only; strong decay makes the sums generalise within budget
    length_pool: int = 512  # turns sorted by length at a time, so batches waste little on padding
    task: synthetic.Task = field(default_factory=synthetic.Task)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_tokens < 1 or self.length_pool < 1 or self.warmup_steps < 0:
            raise ValueError(f"steps, batch_tokens and length_pool must be positive: {self}")


RECIPE = TrainRecipe()


def corpus_files(corpus_dir: Path = CORPUS_DIR) -> list[Path]:
    """The JSONL files the tokenizer learns from, in a fixed order."""
    files = sorted(corpus_dir.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no *.jsonl files to train the tiny model's tokenizer on in {corpus_dir}")
    return files


def corpus_texts(files: list[Path]) -> Iterator[str]:
    """Every problem/solution/answer string in `files`, in file and line order."""
    for path in files:
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
            for key, value in row.items():
                if key.lower() in CORPUS_FIELDS and isinstance(value, str):
                    yield value


def synthetic_texts() -> Iterator[str]:
    """Both sides of a fixed sample of synthetic turns, so the task's words and numbers get tokens of their own
    (the same sample for every seed and recipe: one tokenizer for all)."""
    for turn in synthetic.training_turns(0, TOKENIZER_TURNS):
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


def build_config(tokenizer: PreTrainedTokenizerFast) -> Qwen3Config:
    """The tiny Qwen3 architecture, with the vocabulary and stop tokens of `tokenizer`."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id,
        dtype="bfloat16",
        **ARCHITECTURE,
    )


def init_weights(config: Qwen3Config, seed: int) -> PreTrainedModel:
    """Random weights, the same for the same seed; training starts from them."""
    import torch
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config).to(torch.bfloat16).eval()


def encode_turn(tokenizer: PreTrainedTokenizerFast, turn: synthetic.Turn) -> tuple[list[int], int]:
    """Token ids of prompt + reply, as the engine sees them (the prompt encoded alone, the reply after it),
    and where the reply starts."""
    prompt, reply = synthetic.render(tokenizer, turn)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    return prompt_ids + tokenizer.encode(reply, add_special_tokens=False), len(prompt_ids)


def batches(
    tokenizer: PreTrainedTokenizerFast, seed: int, recipe: TrainRecipe
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Endless (input ids, labels, attention mask) batches of about `batch_tokens` tokens each.

    Labels are -100 on the prompt and the padding: the loss is on the assistant's reply alone.
    """
    import torch

    turns = synthetic.training_turns(seed, sys.maxsize, recipe.task)
    order = random.Random(f"tiny-model/batches/{seed}")
    while True:
        pool = sorted(
            (encode_turn(tokenizer, turn) for turn in itertools.islice(turns, recipe.length_pool)),
            key=lambda encoded: len(encoded[0]),
        )
        groups: list[list[tuple[list[int], int]]] = [[]]
        for encoded in pool:  # sorted by length, so the newest member is the longest
            if groups[-1] and (len(groups[-1]) + 1) * len(encoded[0]) > recipe.batch_tokens:
                groups.append([])
            groups[-1].append(encoded)
        order.shuffle(groups)
        for group in groups:
            width = len(group[-1][0])
            ids = torch.full((len(group), width), tokenizer.pad_token_id)
            labels = torch.full((len(group), width), -100)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for row, (tokens, reply_start) in enumerate(group):
                ids[row, : len(tokens)] = torch.tensor(tokens)
                labels[row, reply_start : len(tokens)] = ids[row, reply_start : len(tokens)]
                mask[row, : len(tokens)] = 1
            yield ids, labels, mask


def learning_rate(step: int, recipe: TrainRecipe) -> float:
    warmup = min(1.0, (step + 1) / recipe.warmup_steps) if recipe.warmup_steps else 1.0
    return recipe.learning_rate * warmup * (0.1 + 0.45 * (1 + math.cos(math.pi * step / recipe.steps)))


def train(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, seed: int, recipe: TrainRecipe = RECIPE
) -> tuple[PreTrainedModel, list[float]]:
    """Train on synthetic turns: causal-LM loss on the replies, AdamW, fixed steps, in float32 on every core.

    The same seed, recipe and thread count give the same weights. Returns the bfloat16 model and the loss
    of every step.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    try:
        torch.manual_seed(seed)
        model = model.float().train()
        matrices = [p for p in model.parameters() if p.dim() >= 2]
        vectors = [p for p in model.parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [
                {"params": matrices, "weight_decay": recipe.weight_decay},
                {"params": vectors, "weight_decay": 0.0},
            ],
            lr=recipe.learning_rate,
            betas=(0.9, 0.98),
        )
        losses = []
        for step, (ids, labels, mask) in enumerate(
            itertools.islice(batches(tokenizer, seed, recipe), recipe.steps)
        ):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, recipe)
            hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
            targets = labels[:, 1:]
            scored = targets != -100  # the vocabulary projection only where a reply token is predicted
            logits = model.lm_head(hidden[:, :-1][scored])
            loss = torch.nn.functional.cross_entropy(logits, targets[scored])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    return model.to(torch.bfloat16).eval(), losses


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> None:
    """Write weights (safetensors), config, tokenizer and a generation config that stops at either end token."""
    from transformers import GenerationConfig

    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    stop_ids = [tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(ENDOFTEXT)]
    GenerationConfig(
        bos_token_id=model.config.bos_token_id, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id
    ).save_pretrained(out_dir)


def build_tiny_model(
    out_dir: Path, seed: int = 0, corpus_dir: Path = CORPUS_DIR, recipe: TrainRecipe | None = RECIPE
) -> Path:
    """Build the tiny model into `out_dir`, trained by `recipe` (None: random weights), atomically: it is
    staged next to it and renamed into place, so readers see a complete model or none. If another process
    finishes the same build first, its copy stays. A trained model keeps its account in training.json."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the model is meant to be shared like any cache entry
    try:
        tokenizer = build_tokenizer(
            itertools.chain(corpus_texts(corpus_files(corpus_dir)), synthetic_texts())
        )
        model = init_weights(build_config(tokenizer), seed)
        if recipe is not None:
            say(f"Training the offline tiny model (seed {seed}, {recipe.steps} steps; about two minutes on two "
                f"idle cores, once: it is cached in {out_dir.parent})")  # fmt: skip
            start = time.perf_counter()
            model, losses = train(model, tokenizer, seed, recipe)
            seconds = time.perf_counter() - start
            say(f"Trained in {seconds:.0f} s, final loss {sum(losses[-100:]) / len(losses[-100:]):.3f}")
            record = {"seed": seed, "recipe": asdict(recipe), "seconds": round(seconds, 1), "losses": losses}
            (staging / "training.json").write_text(json.dumps(record) + "\n")
        save_model(model, tokenizer, staging)
        try:
            os.rename(staging, out_dir)
        except OSError:
            if not (out_dir / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when the rename succeeded
    return out_dir


def say(message: str) -> None:
    """Progress on stderr: stdout may carry a result (the CLI prints the model path there)."""
    print(message, file=sys.stderr, flush=True)


def build_key(seed: int, recipe: TrainRecipe | None = RECIPE, corpus_dir: Path = CORPUS_DIR) -> str:
    """Names a build by everything that shapes it: the sources of this builder, of the synthetic task and of
    the prompt rendering, the corpus, library versions, the recipe (or none: random weights) and the seed."""
    digest = hashlib.sha256()
    for source in (__file__, synthetic.__file__, prompts.__file__):
        digest.update(Path(source).read_bytes())
    for path in corpus_files(corpus_dir):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for package in ("torch", "transformers", "tokenizers"):
        digest.update(f"{package}=={metadata.version(package)}".encode())
    digest.update(repr(recipe).encode())
    kind = "random" if recipe is None else "arith"
    return f"qwen3-tiny-{kind}-seed{seed}-{digest.hexdigest()[:12]}"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "a2r").expanduser()


def tiny_model_path(seed: int = 0, root: Path | None = None, trained: bool = True) -> Path:
    """The cached tiny model for `seed`, built on first use and safe to call from parallel processes.

    Trained (the default) the first build takes minutes; `trained=False` gives random weights in seconds,
    for tests that need an engine and not answers.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    recipe = RECIPE if trained else None
    path = (root or cache_root()) / build_key(seed, recipe)
    if (path / "config.json").is_file():
        return path
    return build_tiny_model(path, seed, recipe=recipe)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the training data")
    parser.add_argument("--out", type=Path, help="build into this new directory instead of the cache")
    parser.add_argument("--untrained", action="store_true", help="random weights, no training")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.out and args.out.exists():
        parser.error(f"--out {args.out} already exists; give a new directory")
    recipe = None if args.untrained else RECIPE
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the path alone: M=$(python -m ...)
        if args.out:
            path = build_tiny_model(args.out, args.seed, recipe=recipe)
        else:
            path = tiny_model_path(args.seed, trained=not args.untrained)
    print(path)


if __name__ == "__main__":
    main()
