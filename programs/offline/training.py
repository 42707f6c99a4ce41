"""How the offline tiny model learns the synthetic task: the recipe, length-bucketed batches of its turns with
the loss on replies alone, and a seeded AdamW loop on the CPU."""

from __future__ import annotations

import itertools
import math
import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from programs.offline import task as synthetic

if TYPE_CHECKING:  # heavy imports are deferred until a model is actually trained
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerFast


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
