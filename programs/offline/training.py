"""How the offline models learn the chain task: the recipes, length-bucketed batches of turns with the loss
on replies alone, and a seeded AdamW loop on the CPU."""

from __future__ import annotations

import itertools
import math
import os
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from programs.offline import chain

if TYPE_CHECKING:  # heavy imports are deferred until a model is actually trained
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerFast


# This training is chaotic: the last bits of its float32 arithmetic decide which of quite different models a
# seed ends as. From the same seed and data, AVX-512 kernels on 2 threads gave an explorer of final loss 0.333
# that got 8 of 60 copier-test problems right, AVX2 kernels one of loss 0.236 that got 37 (2026-12-07); one
# thread against two diverges too, AMX does not matter. So every build trains with these kernels and threads,
# fixed in its environment before torch loads (`programs.offline.model` re-runs itself with them).
NUMERICS_THREADS = 2
NUMERICS = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "MKL_CBWR": "AVX2",
    "OMP_NUM_THREADS": str(NUMERICS_THREADS),
}


def numerics_set() -> bool:
    """Whether this process was started with the training numerics (they cannot be changed once torch runs)."""
    return all(os.environ.get(name) == value for name, value in NUMERICS.items())


@dataclass(frozen=True)
class TrainRecipe:
    """How a model learns the chain task; all of it is part of the models' cache key."""

    steps: int = 2500
    short_steps: int = 1000  # the first steps see only short chains (`chain.SHORT`); 0: none
    batch_tokens: int = 1024  # per step, padding included: turns of similar length are batched together
    learning_rate: float = 5e-3  # AdamW peak, after a linear warm-up, then cosine down to a tenth
    warmup_steps: int = 20
    weight_decay: float = 0.1  # on matrices only; strong decay makes the sums generalise within budget
    length_pool: int = 512  # turns sorted by length at a time, so batches waste little on padding
    task: chain.Task = field(default_factory=chain.Task)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_tokens < 1 or self.length_pool < 1 or self.warmup_steps < 0:
            raise ValueError(f"steps, batch_tokens and length_pool must be positive: {self}")
        if not 0 <= self.short_steps <= self.steps:
            raise ValueError(f"short_steps must be in 0..steps: {self}")


# The explorer learns both roles (it serves both in one-model runs); copying operands out of the question takes
# hold in a 2-layer model only when it first sees short chains: trained on all lengths from the start, it
# copies almost nothing within the budget (Pass@1 2% against 14% on `chain`, measured here).
EXPLORER_RECIPE = TrainRecipe()
# The synthesizer starts from the explorer, grown deeper (`programs.offline.model.grow`), and learns
# synthesizer turns alone: re-derive the chain, whatever the references say. A third of its turns have every
# reference right, as unanimous paths of a real explorer mostly are, to make them worth reading (measured: it
# still re-derives and leaves them unread, as it did with none of these turns; see docs/offline-pair.md).
SYNTHESIZER_RECIPE = TrainRecipe(
    steps=800,
    short_steps=0,
    learning_rate=2e-3,
    task=chain.Task(synthesizer_share=1.0, mixes=("all right", *chain.MIXES)),
)


def encode_turn(tokenizer: PreTrainedTokenizerFast, turn: chain.Turn) -> tuple[list[int], int]:
    """Token ids of prompt + reply, as the engine sees them (the prompt encoded alone, the reply after it),
    and where the reply starts."""
    prompt, reply = chain.render(tokenizer, turn)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    return prompt_ids + tokenizer.encode(reply, add_special_tokens=False), len(prompt_ids)


def batches(
    tokenizer: PreTrainedTokenizerFast,
    seed: int,
    recipe: TrainRecipe,
    shape: chain.Shape = chain.TRAINING,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Endless (input ids, labels, attention mask) batches of turns of `shape`, about `batch_tokens` tokens each.

    Labels are -100 on the prompt and the padding: the loss is on the assistant's reply alone.
    """
    import torch

    turns = chain.training_turns(seed, sys.maxsize, recipe.task, shape)
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
    """A linear warm-up, then cosine down to a tenth: over the short chains, and again over the rest (a warm
    restart, which measured better here than one long decay: loss 0.22 against 0.29)."""
    into, length = (
        (step, recipe.short_steps)
        if step < recipe.short_steps
        else (step - recipe.short_steps, recipe.steps - recipe.short_steps)
    )
    warmup = min(1.0, (step + 1) / recipe.warmup_steps) if recipe.warmup_steps else 1.0
    return recipe.learning_rate * warmup * (0.1 + 0.45 * (1 + math.cos(math.pi * into / length)))


def curriculum(
    tokenizer: PreTrainedTokenizerFast, seed: int, recipe: TrainRecipe
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`recipe.steps` batches: `short_steps` of short chains, then the rest of every length."""
    return itertools.chain(
        itertools.islice(batches(tokenizer, seed, recipe, chain.SHORT), recipe.short_steps),
        itertools.islice(batches(tokenizer, seed, recipe), recipe.steps - recipe.short_steps),
    )


def train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    seed: int,
    recipe: TrainRecipe = EXPLORER_RECIPE,
    on_step: Callable[[], None] = lambda: None,
) -> tuple[PreTrainedModel, list[float]]:
    """Train on chain-task turns: causal-LM loss on the replies, AdamW, fixed steps, in float32 on
    `NUMERICS_THREADS` threads, calling `on_step` after each step.

    The same seed, recipe and numerics (`NUMERICS`, set before torch loads) give the same weights. Returns the
    bfloat16 model and the loss of every step.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(NUMERICS_THREADS)
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
        for step, (ids, labels, mask) in enumerate(curriculum(tokenizer, seed, recipe)):
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
            on_step()
    finally:
        torch.set_num_threads(threads)
    return model.to(torch.bfloat16).eval(), losses
