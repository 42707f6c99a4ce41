"""The project's offline tiny model: a seeded Qwen3-architecture model with its own tokenizer, cached on disk.

No weights can be downloaded on the CPU machines, so the CPU default and the tests serve this model instead:
2 layers, hidden 128, 4 query / 2 KV heads, a byte-level BPE tokenizer trained here on the project's own
math text, and a Qwen3-style ChatML chat template with the `enable_thinking` switch. The tokenizer and
config are built apart from the weights, so a later step can save trained weights with the same pieces.

    python -m engine.tiny_model [--seed N] [--out DIR]    # prints the model directory
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # heavy imports are deferred until a model is actually built
    from transformers import PreTrainedModel, PreTrainedTokenizerFast, Qwen3Config

CORPUS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "data"
CORPUS_FIELDS = ("problem", "question", "solution", "answer")  # text fields of the shipped datasets
CACHE_ENV = "A2R_CACHE"

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
    """Random weights, the same for the same seed; a trained model replaces this step only."""
    import torch
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config).to(torch.bfloat16).eval()


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> None:
    """Write weights (safetensors), config, tokenizer and a generation config that stops at either end token."""
    from transformers import GenerationConfig

    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    stop_ids = [tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(ENDOFTEXT)]
    GenerationConfig(
        bos_token_id=model.config.bos_token_id, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id
    ).save_pretrained(out_dir)


def build_tiny_model(out_dir: Path, seed: int = 0, corpus_dir: Path = CORPUS_DIR) -> Path:
    """Build the tiny model into `out_dir` atomically: it is staged next to it and renamed into place, so
    readers see a complete model or none. If another process finishes the same build first, its copy stays."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the model is meant to be shared like any cache entry
    try:
        tokenizer = build_tokenizer(corpus_texts(corpus_files(corpus_dir)))
        save_model(init_weights(build_config(tokenizer), seed), tokenizer, staging)
        try:
            os.rename(staging, out_dir)
        except OSError:
            if not (out_dir / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when the rename succeeded
    return out_dir


def build_key(seed: int, corpus_dir: Path = CORPUS_DIR) -> str:
    """Names a build by everything that shapes it: this builder's source, the corpus, library versions, seed."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for path in corpus_files(corpus_dir):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for package in ("torch", "transformers", "tokenizers"):
        digest.update(f"{package}=={metadata.version(package)}".encode())
    return f"qwen3-tiny-seed{seed}-{digest.hexdigest()[:12]}"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "a2r").expanduser()


def tiny_model_path(seed: int = 0, root: Path | None = None) -> Path:
    """The cached tiny model for `seed`, built on first use (seconds); safe to call from parallel processes."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    path = (root or cache_root()) / build_key(seed)
    if (path / "config.json").is_file():
        return path
    return build_tiny_model(path, seed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="weight-initialisation seed")
    parser.add_argument("--out", type=Path, help="build into this new directory instead of the cache")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.out and args.out.exists():
        parser.error(f"--out {args.out} already exists; give a new directory")
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the path alone: M=$(python -m ...)
        path = build_tiny_model(args.out, args.seed) if args.out else tiny_model_path(args.seed)
    print(path)


if __name__ == "__main__":
    main()
