"""`rl/reward.py`: only the synthesizer's own generated answer scores, from worker threads, through OpenRLHF.

The synthesizer's prompt carries reference solutions with boxed answers, the right one last, so a reward
that read the prompt part of a query would pay a response that never answered (`test_the_trap_is_live`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from programs.core.grading import extract_answer
from programs.core.prompts import synthesizer_query
from rl.reward import response_text, reward_func

REWARD_FILE = Path(__file__).resolve().parents[1] / "rl" / "reward.py"
QUERY = "What is 6 x 7?"
REFERENCES = [
    "Multiplying, 6 x 7 = 41. " * 8 + "So \\boxed{41}.",
    "Six sevens: 7 + 7 + 7 + 7 + 7 + 7 = 42. " * 8 + "The answer is \\boxed{42}.",
]
# A Qwen3-style ChatML prompt, as OpenRLHF renders it with --data.apply_chat_template.
PROMPT = f"<|im_start|>user\n{synthesizer_query(QUERY, REFERENCES)}<|im_end|>\n<|im_start|>assistant\n"

CUT_OFF = "<think>Let me check both references one by one"  # hit max_new_tokens mid-thought
NO_ANSWER = "<think>The references disagree.</think>\nI cannot tell which is right.<|im_end|>"
THINKING_ONLY_ANSWER = "<think>It is \\boxed{42}.</think>\nI stand by my reasoning.<|im_end|>"
RIGHT = "<think>6 x 7 is 42.</think>\nSo the answer is $\\boxed{42}$.<|im_end|>"
WRONG = "<think>6 x 7 is 41.</think>\nSo the answer is $\\boxed{41}$.<|im_end|>"


def rewards(*responses: str, gold: object = "42", prompt: str = PROMPT) -> list[float]:
    out = reward_func([prompt + r for r in responses], [prompt] * len(responses), [gold] * len(responses))
    assert torch.equal(out["rewards"], out["scores"])
    return out["rewards"].tolist()


def test_the_trap_is_live():
    assert extract_answer(PROMPT + CUT_OFF) == "42"  # no </think>: the whole query is read, references too


def test_a_response_without_an_answer_scores_zero_although_the_references_hold_it():
    assert rewards(CUT_OFF, NO_ANSWER) == [0.0, 0.0]
    assert rewards(THINKING_ONLY_ANSWER) == [0.0]  # a box inside the thinking is not the final answer


def test_right_and_wrong_answers():
    assert rewards(RIGHT, WRONG) == [1.0, 0.0]
    assert rewards(RIGHT, gold=42) == [1.0]  # JSON datasets may store integer answers
    assert rewards("<think>half</think> \\boxed{0.5}", gold="\\frac{1}{2}") == [1.0]  # math-verify


def test_contract_shapes_and_logs():
    responses = (RIGHT, NO_ANSWER, "no thinking, \\boxed{42}")
    out = reward_func([PROMPT + r for r in responses], [PROMPT] * 3, ["42"] * 3)
    assert out["rewards"].dtype == torch.float32 and out["rewards"].shape == (3,)
    assert out["rewards"].tolist() == [1.0, 0.0, 1.0]
    assert out["extra_logs"]["answered"].tolist() == [1.0, 0.0, 1.0]
    assert out["extra_logs"]["think_closed"].tolist() == [1.0, 1.0, 0.0]


def test_prompt_cut_from_the_left_is_still_stripped():
    cut = PROMPT[len(PROMPT) // 2 :]  # OpenRLHF keeps the end of an over-long prompt
    assert response_text(cut + CUT_OFF, PROMPT) == CUT_OFF
    out = reward_func(
        [cut + CUT_OFF, cut + RIGHT], [PROMPT] * 2, ["42"] * 2
    )  # OpenRLHF passes the whole prompt
    assert out["rewards"].tolist() == [0.0, 1.0]


def test_unlocatable_prompt_and_bad_labels_are_errors(caplog):
    with caplog.at_level(logging.ERROR), pytest.raises(ValueError, match="cannot find where the prompt ends"):
        reward_func(["some other text " + RIGHT], [PROMPT], ["42"])
    assert "reward_func failed" in caplog.text  # visible, although OpenRLHF logs the exception at INFO only
    with pytest.raises(ValueError, match="gold answer must be a string or a number, got None"):
        reward_func([PROMPT + RIGHT], [PROMPT], [None])
    with pytest.raises(ValueError, match="got 2 queries, 1 prompts and 1 labels"):
        reward_func([PROMPT + RIGHT] * 2, [PROMPT], ["42"])


def test_works_from_a_worker_thread():
    results: list = []
    worker = threading.Thread(target=lambda: results.append(rewards(RIGHT, WRONG, gold="\\frac{84}{2}")))
    worker.start()
    worker.join(timeout=120)
    assert results == [[1.0, 0.0]]


def test_works_under_asyncio_to_thread_as_openrlhf_calls_it():
    cases = [(RIGHT, "42", 1.0), (WRONG, "42", 0.0), (CUT_OFF, "42", 0.0), (RIGHT, "6 \\cdot 7", 1.0)]

    async def score_all() -> list:
        calls = [asyncio.to_thread(reward_func, [PROMPT + r], [PROMPT], [g]) for r, g, _ in cases]
        return await asyncio.gather(*calls)

    outs = asyncio.run(score_all())
    assert [out["rewards"].item() for out in outs] == [expected for *_, expected in cases]


class FixedResponseEngine:
    """Stands in for the rollout engine only: "generates" a fixed text, so the reward path is what runs."""

    def __init__(self, tokenizer, text: str) -> None:
        self.token_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        self.prompts: list[list[int]] = []

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        self.prompts.append(prompt_token_ids)
        output = SimpleNamespace(token_ids=self.token_ids, text="", finish_reason="stop", logprobs=None)
        return SimpleNamespace(outputs=[output])


@pytest.mark.parametrize(
    ("response", "expected"), [(RIGHT, 1.0), (WRONG, 0.0), (CUT_OFF, 0.0), (NO_ANSWER, 0.0)]
)
@pytest.mark.parametrize("cut_prompt", [False, True], ids=["whole prompt", "prompt cut by OpenRLHF"])
def test_openrlhf_loads_the_file_and_scores_through_its_own_executor(
    tiny_model, response, expected, cut_prompt
):
    """OpenRLHF's own path for `--reward.remote_url rl/reward.py`: its dataset rendering, then its executor
    loading the file by path, tokenizing, decoding prompt + response together and calling us in a thread."""
    from openrlhf.datasets.prompts_dataset import preprocess_data
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    row = {"prompt": synthesizer_query(QUERY, REFERENCES), "answer": 42}
    prompt, label = preprocess_data(row, None, "prompt", "answer", tokenizer.apply_chat_template)
    executor = SingleTurnAgentExecutor(str(REWARD_FILE))
    engine = FixedResponseEngine(tokenizer, response)
    prompt_tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    params = SimpleNamespace(max_tokens=64, logprobs=None)
    max_length = prompt_tokens * 2 // 3 + params.max_tokens if cut_prompt else 4096
    out = asyncio.run(executor.execute(prompt, label, params, max_length, tokenizer, engine))
    assert (len(engine.prompts[0]) < prompt_tokens) == cut_prompt
    assert out["reward"] is not None, "OpenRLHF swallowed a reward_func error (it logs those at INFO)"
    assert out["reward"].tolist() == [expected] and out["scores"].tolist() == [expected]
