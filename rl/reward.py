"""The synthesizer's GRPO reward: 1 if its own final answer is math-equivalent to the gold answer, else 0.

OpenRLHF 0.11.2 takes this file as `--reward.remote_url /abs/path/rl/reward.py`: each rollout engine loads it
by path (`importlib.util.spec_from_file_location`, not as `rl.reward`) and, after each generation, calls
`reward_func([query], [prompt], [label])` through `asyncio.to_thread`, i.e. off the main thread, one sample
at a time. `query` is the prompt's tokens and the response's tokens decoded together, `prompt` the rendered
prompt text, `label` the dataset's gold answer. The returned `rewards` drive the advantages and `scores`
(0 or 1, before any length penalty) drive dynamic filtering.

The synthesizer's prompt holds reference solutions with boxed answers, so only the generated text is read:
the prompt is cut off first, then the answer is taken the way the evaluation metric takes it
(`programs.core.grading.extract_answer`: the last `\\boxed{}` after the last `</think>`) and compared with
`programs.core.grading.is_equivalent`, which is thread-safe and has its own time limit. OpenRLHF logs a
reward_func exception at INFO level and carries on with no reward, so failures are logged here as errors.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import torch

_ROOT = str(Path(__file__).resolve().parents[1])
if __package__ in (None, "") and _ROOT not in sys.path:  # loaded by file path in a rollout worker
    sys.path.insert(0, _ROOT)

from programs.core.grading import extract_answer, is_equivalent  # noqa: E402
from programs.core.prompts import answer_part  # noqa: E402

logger = logging.getLogger(__name__)

# How much of the prompt's end locates it in a query whose prompt OpenRLHF cut from the left (too long for
# its budget): enough to span the end of the query and the chat template's assistant header.
PROMPT_TAIL_CHARS = 256


def response_text(query: str, prompt: str) -> str:
    """The generated text in `query`: what follows `prompt`.

    Normally `query` starts with `prompt` (decoding the prompt's tokens gives its text back). If OpenRLHF cut
    an over-long prompt from the left, `query` starts mid-prompt, and the prompt's end is found instead.
    """
    if query.startswith(prompt):
        return query[len(prompt) :]
    tail = prompt[-PROMPT_TAIL_CHARS:]
    at = query.find(tail)
    if not tail or at < 0:
        raise ValueError(
            f"cannot find where the prompt ends in the query: query starts {query[:120]!r}, "
            f"prompt ends {prompt[-120:]!r}"
        )
    return query[at + len(tail) :]


def _gold(label: Any) -> str:
    """The gold answer as text: JSON datasets may hold integer answers (AIME)."""
    if isinstance(label, bool) or not isinstance(label, str | int | float):
        raise ValueError(f"gold answer must be a string or a number, got {label!r}")
    return str(label)


def reward_func(queries: list[str], prompts: list[str], labels: list[Any], **kwargs: Any) -> dict[str, Any]:
    """OpenRLHF's reward contract: `rewards` and `scores` as float tensors of shape [len(queries)], and
    `extra_logs` of per-sample tensors that OpenRLHF averages into its training logs."""
    if not len(queries) == len(prompts) == len(labels):
        raise ValueError(f"got {len(queries)} queries, {len(prompts)} prompts and {len(labels)} labels")
    try:
        responses = [response_text(q, p) for q, p in zip(queries, prompts, strict=True)]
        answers = [extract_answer(r) for r in responses]  # None: no boxed answer, which scores 0
        scores = [float(is_equivalent(_gold(label), a)) for a, label in zip(answers, labels, strict=True)]
    except Exception:
        logger.exception("reward_func failed; OpenRLHF will drop this sample's reward")
        raise
    rewards = torch.tensor(scores, dtype=torch.float32)
    return {
        "rewards": rewards,
        "scores": rewards.clone(),
        "extra_logs": {
            "answered": torch.tensor([float(a is not None) for a in answers]),
            "think_closed": torch.tensor([float(not answer_part(r).fallback) for r in responses]),
        },
    }
