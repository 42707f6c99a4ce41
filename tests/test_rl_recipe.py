"""OpenRLHF 0.11.2's own pieces that the GRPO recipe relies on, run on CPU with toy tensors and hand-made numbers.

- `openrlhf.models.loss.PolicyLoss`: the PPO clip, symmetric at 0.2/0.2, aggregated token-mean;
- `RemoteExperienceMaker.compute_advantages_and_returns`: the overlong penalty, then group_norm advantages;
- `SamplesGenerator._generate_vllm`: dynamic filtering drops groups whose mean score is 0 or 1 and refills.

These are the installed modules themselves, imported the normal way. Their packages import GPU-only libraries
at top level that cannot be installed on CPU: `openrlhf.models` imports flash-attn 2 (`flash_attn.bert_padding`,
for ring attention; here `flash_attn` is only SGLang's flash-attn-4 namespace) and `openrlhf.trainer.ray`
imports `vllm`. So the `openrlhf` fixture puts stand-in modules under those names that only provide the names
imported (a `SamplingParams` record, and functions that raise if ever called), and afterwards removes them and
every OpenRLHF module imported over them, so no other test sees them.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch

from rl.recipe import GRPORecipe


class SamplingParams(SimpleNamespace):
    """vLLM's sampling parameters as a plain record: the samples generator only builds and forwards them."""


def _unavailable(name: str):
    def call(*args, **kwargs):
        raise RuntimeError(f"{name} is a CPU test stand-in and must not be called")

    return call


GPU_ONLY_NAMES = {  # module -> the names OpenRLHF 0.11.2 imports from it at top level
    "flash_attn": {},
    "flash_attn.bert_padding": {
        n: _unavailable(n) for n in ("index_first_axis", "pad_input", "rearrange", "unpad_input")
    },
    "flash_attn.utils": {},
    "flash_attn.utils.distributed": {"all_gather": _unavailable("all_gather")},
    "vllm": {"__version__": "0+cpu-test-stand-in", "SamplingParams": SamplingParams},
    "vllm.inputs": {"TokensPrompt": _unavailable("TokensPrompt")},
    "vllm.utils": {"random_uuid": _unavailable("random_uuid")},
}


def _stand_in(name: str, attrs: dict) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
    module.__dict__.update(attrs)
    return module


@pytest.fixture(scope="module")
def openrlhf() -> Iterator[SimpleNamespace]:
    import transformers  # noqa: F401 -- first, so it records flash_attn as absent before the stand-in exists

    before = set(sys.modules)
    with pytest.MonkeyPatch.context() as patch:
        for name, attrs in GPU_ONLY_NAMES.items():
            patch.setitem(sys.modules, name, _stand_in(name, attrs))
        yield SimpleNamespace(
            loss=importlib.import_module("openrlhf.models.loss"),
            experience_maker=importlib.import_module("openrlhf.trainer.ppo_utils.experience_maker"),
            samples_generator=importlib.import_module("openrlhf.trainer.ppo_utils.samples_generator"),
        )
    for name in set(sys.modules) - before:
        if name.startswith("openrlhf."):
            del sys.modules[name]


def test_policy_loss_clips_symmetrically_and_averages_over_tokens(openrlhf):
    r = GRPORecipe()
    ratios = torch.tensor([[1.5, 0.5, 1.1], [0.7, 1.3, 5.0]])
    advantages = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    action_mask = torch.tensor([[True, True, True], [True, True, False]])  # the 5.0 is padding
    old_log_probs = torch.full_like(ratios, -2.0)
    log_probs = old_log_probs + ratios.log()

    def loss(clip_high: float, token_mean: bool) -> tuple[float, float]:
        policy_loss = (
            openrlhf.loss.PolicyLoss(  # built from the recipe the way OpenRLHF's PPO actor builds it
                clip_eps_low=r.clip_low, clip_eps_high=clip_high, token_level_loss=token_mean
            )
        )
        value, clip_ratio, *_ = policy_loss(log_probs, old_log_probs, advantages, action_mask=action_mask)
        return value.item(), clip_ratio.item()

    # Per token, -min(ratio * A, clip(ratio, 0.8, 1.2) * A):
    #   A = +1: 1.5 -> -1.2 (clipped), 0.5 -> -0.5, 1.1 -> -1.1;  A = -1: 0.7 -> +0.8 (clipped), 1.3 -> +1.3
    # token-mean over the 5 real tokens: (-1.2 - 0.5 - 1.1 + 0.8 + 1.3) / 5 = -0.14; 2 of 5 tokens clipped.
    assert loss(r.clip_high, r.loss_agg_mode == "token-mean") == pytest.approx((-0.14, 0.4))
    # What the recipe is not: per-sequence means (-2.8/3 + 2.1/2) / 2, or clip-higher (1.5 -> -1.28).
    assert loss(r.clip_high, token_mean=False)[0] == pytest.approx((-2.8 / 3 + 2.1 / 2) / 2)
    assert loss(0.28, token_mean=True)[0] == pytest.approx(-0.156)


def test_overlong_penalty_then_group_norm_advantages(openrlhf):
    r = GRPORecipe(n_samples_per_prompt=4)
    args = SimpleNamespace(
        rollout=SimpleNamespace(n_samples_per_prompt=r.n_samples_per_prompt, max_new_tokens=r.max_new_tokens),
        data=SimpleNamespace(max_len=r.max_len),
        reward=SimpleNamespace(
            overlong_buffer_len=r.overlong_buffer_len,
            overlong_penalty_factor=r.overlong_penalty_factor,
            stop_properly_penalty_coef=None,
            clip_range=(-10.0, 10.0),
        ),
        algo=SimpleNamespace(
            advantage=SimpleNamespace(estimator=r.advantage_estimator, gamma=1.0, no_std_norm=False)
        ),
    )
    maker_cls = openrlhf.experience_maker.RemoteExperienceMaker
    maker = maker_cls.__new__(maker_cls)  # only the advantage step: no models, no Ray
    maker.strategy = SimpleNamespace(args=args)
    maker.kl_ctl = SimpleNamespace(value=r.kl_coef)
    maker.advantage_estimator = r.advantage_estimator

    # Two prompts x 4 samples. The penalty starts at 4096 - 1024 = 3072 response tokens and reaches 1 at 4096.
    scores = [1, 1, 1, 0, 1, 0, 0, 0]
    lengths = [100, 3584, 4096, 100, 100, 100, 100, 100]
    experiences = [
        openrlhf.experience_maker.Experience(
            rewards=torch.tensor([float(s)]),
            scores=torch.tensor([float(s)]),
            response_length=torch.tensor([n]),
            truncated=torch.tensor([False]),
            action_mask=torch.ones(1, 3, dtype=torch.bool),
            kl=torch.zeros(1, 3),
            index=[i],
        )
        for i, (s, n) in enumerate(zip(scores, lengths, strict=True))
    ]
    maker.compute_advantages_and_returns(experiences)

    assert [e.rewards.item() for e in experiences] == [1.0, 0.5, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    # (reward - group mean) / unbiased group std: group 1 mean 0.375, std sqrt(0.6875 / 3);
    # group 2 mean 0.25, std 0.5. Every response token carries its sample's advantage.
    std1 = (0.6875 / 3) ** 0.5
    expected = [0.625 / std1, 0.125 / std1, -0.375 / std1, -0.375 / std1, 1.5, -0.5, -0.5, -0.5]
    for experience, advantage in zip(experiences, expected, strict=True):
        assert experience.advantages[0].tolist() == pytest.approx([advantage] * 3, abs=1e-6)


def test_dynamic_filtering_drops_all_right_and_all_wrong_groups_and_refills(openrlhf, monkeypatch):
    r = GRPORecipe(n_samples_per_prompt=4, rollout_batch_size=2)
    group_scores = {
        "all right": [1, 1, 1, 1],
        "some right": [1, 0, 0, 1],
        "all wrong": [0, 0, 0, 0],
        "one right": [0, 0, 0, 1],
    }
    calls: list[str] = []

    def generate_responses(prompt, label, num_samples, **kwargs) -> list[dict]:
        """One group, scored as the reward would score it; the rest of each response is filler."""
        calls.append(prompt)
        return [
            {
                "prompt": prompt,
                "label": label,
                "observation_tokens": [1, 2, 3, 4],
                "action_ranges": [(2, 4)],
                "rollout_log_probs": None,
                "truncated": False,
                "reward": float(s),
                "scores": float(s),
                "extra_logs": {},
                "images": None,
                "mm_train_inputs": None,
            }
            for s in group_scores[prompt][:num_samples]
        ]

    # The rollout engine's Ray handle (`engine.method.remote(...)`), answering at once.
    engine = SimpleNamespace(
        generate_responses=SimpleNamespace(remote=generate_responses),
        get_num_unfinished_requests=SimpleNamespace(remote=lambda: 0),
    )
    # Results are ready at once, so Ray's wait/get reduce to handing them over in order.
    monkeypatch.setattr(
        openrlhf.samples_generator,
        "ray",
        SimpleNamespace(get=lambda refs: refs, wait=lambda refs, **kw: (refs[:1], refs[1:])),
    )
    args = SimpleNamespace(
        rollout=SimpleNamespace(batch_size=r.rollout_batch_size, n_samples_per_prompt=r.n_samples_per_prompt),
        algo=SimpleNamespace(
            dynamic_filtering_enable=r.dynamic_filtering,
            dynamic_filtering_range=r.dynamic_filtering_range,
            advantage=SimpleNamespace(is_correction_level="off"),
        ),
        vllm=SimpleNamespace(enable_sleep=False),
    )
    generator = openrlhf.samples_generator.SamplesGenerator(
        SimpleNamespace(args=args), None, None, None, [engine]
    )
    prompts = iter([("default", [p], [f"gold for {p}"], [None]) for p in [*group_scores, "never needed"]])

    experiences, consumed, exhausted = generator._generate_vllm(
        prompts, num_prompts=r.rollout_batch_size, dynamic_filtering=r.dynamic_filtering, max_len=64
    )
    assert calls == ["all right", "some right", "all wrong", "one right"]  # each filtered group was replaced
    assert [e.prompts[0] for e in experiences] == ["some right"] * 4 + ["one right"] * 4
    assert [e.scores.item() for e in experiences] == [1, 0, 0, 1, 0, 0, 0, 1]
    assert (consumed, exhausted) == (4, False)
