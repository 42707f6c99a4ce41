"""The synthesizer's GRPO recipe (A2R section 3.3 / 4.1) as one dataclass of defaults, checked on creation.

`rl.train` turns a `GRPORecipe` into OpenRLHF 0.11.2 flags and its CLI flags are generated from these fields,
so every value here is overridable from the command line and is declared nowhere else. The dataset builder
reads `prompt_max_len` from here, so prompts are filtered to the budget the trainer will give them.
The model trained by default is the paper profile's synthesizer (`programs.profile.PAPER`).
"""

from __future__ import annotations

from dataclasses import dataclass

from programs.core.flags import option
from programs.profile import PAPER

# OpenRLHF 0.11.2's trainer module: `rl.train` runs it for the vllm backend, `rl.sglang_rollout` for sglang.
OPENRLHF_CLI = "openrlhf.cli.train_ppo_ray"
ROLLOUT_BACKENDS = ("sglang", "vllm")
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean")  # OpenRLHF 0.11.2's --actor.loss_agg_mode choices


@dataclass(frozen=True)
class GRPORecipe:
    """One GRPO run: what to train, on what, and with which algorithm, resources and outputs."""

    # -- model and data
    model: str = option(
        PAPER.synthesizer_model, "synthesizer to train: hub id or local path (actor and rollouts)"
    )
    dataset: str = option("data/rl/train.jsonl", "prompt/answer JSONL written by the training set builder")
    input_key: str = option("prompt", "dataset field holding the synthesizer's user turn")
    label_key: str = option("answer", "dataset field holding the gold answer the reward compares with")
    apply_chat_template: bool = option(True, "render the user turn with the model's chat template")

    # -- rollout
    rollout_backend: str = option("sglang", "rollout engine: sglang (rl.sglang_rollout) or vllm (OpenRLHF's)")
    rollout_batch_size: int = option(32, "prompts per rollout batch (the paper's training batch size)")
    n_samples_per_prompt: int = option(8, "responses sampled per prompt: the GRPO group (must be > 1)")
    temperature: float = option(0.7, "rollout sampling temperature (the paper saw collapse at 1.0)")
    top_p: float = option(1.0, "rollout nucleus sampling threshold")
    max_len: int = option(8192, "max tokens per sequence, prompt + response")
    max_new_tokens: int = option(4096, "max response tokens; the prompt budget is max_len minus this")

    # -- reward shaping and sample filtering
    overlong_buffer_len: int = option(
        1024, "overlong penalty ramps over the last N of max_new_tokens (0: off)"
    )
    overlong_penalty_factor: float = option(1.0, "penalty at max_new_tokens, subtracted from the 0/1 reward")
    dynamic_filtering: bool = option(True, "drop groups whose mean score is outside the open range (all-0/1)")
    dynamic_filtering_range: tuple[float, float] = option(
        (0.0, 1.0), "keep groups with low < mean score < high", metavar=("LOW", "HIGH")
    )

    # -- algorithm
    advantage_estimator: str = option("group_norm", "OpenRLHF advantage estimator (group_norm is GRPO)")
    kl_coef: float = option(0.0, "KL penalty coefficient; 0 means no reference model at all")
    clip_low: float = option(0.2, "PPO ratio clip below 1 (1 - clip_low)")
    clip_high: float = option(
        0.2, "PPO ratio clip above 1 (1 + clip_high); equal to clip_low: no clip-higher"
    )
    loss_agg_mode: str = option("token-mean", "policy loss aggregation: token-mean is the token-level loss")
    updates_per_rollout: int = option(1, "optimizer steps per rollout batch; 1 is on-policy (the paper)")
    max_epochs: int = option(1, "passes over each rollout batch; more than 1 goes off-policy")
    episodes: int = option(1, "passes over the prompt dataset")
    seed: int = option(42, "random seed for data order and sampling")

    # -- actor optimisation
    learning_rate: float = option(1e-6, "actor AdamW learning rate")
    train_micro_batch_size: int = option(1, "sequences per GPU per training forward/backward")
    forward_micro_batch_size: int = option(1, "sequences per GPU per log-prob forward when making experience")
    gradient_checkpointing: bool = option(True, "recompute activations in backward to save memory")
    zero_stage: int = option(3, "DeepSpeed ZeRO stage (0-3)")
    adam_offload: bool = option(True, "keep Adam state in CPU memory (needed for an 8B model on one GPU)")

    # -- resources and engines
    num_nodes: int = option(1, "nodes for the actor (and, colocated, the rollout engines)")
    gpus_per_node: int = option(1, "GPUs per node for the actor")
    colocate: bool = option(
        True, "actor and rollout engines share the GPUs, each sleeping while the other works"
    )
    async_rollout: bool = option(
        False,
        "generate the next batch while training on this one, with partial rollouts (needs --no-colocate)",
    )
    rollout_tp: int = option(1, "tensor-parallel GPUs per rollout engine (vllm backend only; sglang: 1)")
    rollout_engines: int | None = option(None, "rollout engines (default: the actor's GPUs / rollout_tp)")
    rollout_gpu_memory_utilization: float | None = option(
        None, "share of GPU memory a rollout engine may take (default: 0.5 colocated, 0.9 on its own GPU)"
    )
    prefix_caching: bool = option(True, "reuse the shared prompt's KV cache across the group's samples")

    # -- checkpoints and logging
    save_path: str = option(
        "checkpoints/synthesizer-grpo", "final model dir; resumable state under <it>/ckpt"
    )
    save_steps: int = option(20, "save a checkpoint every N steps (-1: only at the end)")
    save_hf: bool = option(True, "also save Hugging Face weights with each checkpoint (servable by SGLang)")
    resume: bool = option(True, "resume from <save_path>/ckpt when it exists")
    logging_steps: int = option(1, "log training metrics every N steps")
    tensorboard_dir: str | None = option(None, "TensorBoard log dir (needs the tensorboard package)")

    def __post_init__(self) -> None:
        for name in ("model", "dataset", "input_key", "label_key", "save_path"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        positive = ("rollout_batch_size", "max_len", "max_new_tokens", "updates_per_rollout", "max_epochs")
        positive += ("episodes", "train_micro_batch_size", "forward_micro_batch_size", "num_nodes")
        positive += ("gpus_per_node", "rollout_tp", "logging_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.rollout_backend not in ROLLOUT_BACKENDS:
            raise ValueError(
                f"rollout_backend must be one of {ROLLOUT_BACKENDS}, got {self.rollout_backend!r}"
            )
        if self.rollout_backend == "sglang" and self.rollout_tp > 1:
            # Refused here so a run fails at parse time, not inside the Ray job: a TP engine spans several of
            # the actor's one-GPU placement bundles, and every TP rank would need its own weight payload.
            raise ValueError(
                f"rollout_tp {self.rollout_tp} is not supported with the sglang rollout backend (its engines "
                "use one GPU each): use rollout_tp 1, or --rollout-backend vllm"
            )
        if self.n_samples_per_prompt < 2:
            raise ValueError(
                f"n_samples_per_prompt must be > 1 for group advantages, got {self.n_samples_per_prompt}"
            )
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature > 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")
        if self.max_new_tokens >= self.max_len:
            raise ValueError(f"max_new_tokens ({self.max_new_tokens}) must be < max_len ({self.max_len})")
        if not 0 <= self.overlong_buffer_len <= self.max_new_tokens:
            raise ValueError(
                f"overlong_buffer_len must be in [0, max_new_tokens], got {self.overlong_buffer_len}"
            )
        if self.overlong_penalty_factor < 0:
            raise ValueError(f"overlong_penalty_factor must be >= 0, got {self.overlong_penalty_factor}")
        low, high = self.dynamic_filtering_range
        if not low < high:
            raise ValueError(f"dynamic_filtering_range needs low < high, got {self.dynamic_filtering_range}")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")
        if not (0 < self.clip_low < 1 and self.clip_high > 0):
            raise ValueError(
                f"need 0 < clip_low < 1 and clip_high > 0, got {self.clip_low}, {self.clip_high}"
            )
        if self.loss_agg_mode not in LOSS_AGG_MODES:
            raise ValueError(f"loss_agg_mode must be one of {LOSS_AGG_MODES}, got {self.loss_agg_mode!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 < self.rollout_memory_share < 1:
            raise ValueError(
                f"rollout_gpu_memory_utilization must be in (0, 1), got {self.rollout_gpu_memory_utilization}"
            )
        if self.async_rollout and self.colocate:
            # OpenRLHF asserts against sleeping engines under async, and then colocates only the DeepSpeed
            # models: the engines need GPUs of their own, which `colocate` would not count.
            raise ValueError(
                "async_rollout needs --no-colocate: OpenRLHF's async training runs the rollout engines beside "
                f"the trainer, on GPUs of their own ({self.actor_gpus} for the actor + "
                f"{self.num_rollout_engines * self.rollout_tp} for the engines)"
            )
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.rollout_engines is not None and self.rollout_engines < 1:
            raise ValueError(f"rollout_engines must be >= 1, got {self.rollout_engines}")
        if self.colocate and self.num_rollout_engines * self.rollout_tp != self.actor_gpus:
            raise ValueError(
                f"colocated, rollout engines x rollout_tp must equal the actor's {self.actor_gpus} GPUs, "
                f"got {self.num_rollout_engines} x {self.rollout_tp}"
            )
        samples = self.rollout_batch_size * self.n_samples_per_prompt
        if samples % self.updates_per_rollout:
            raise ValueError(
                f"{samples} samples per rollout do not split into {self.updates_per_rollout} updates"
            )
        step = self.train_micro_batch_size * self.actor_gpus
        if self.train_batch_size % step:
            raise ValueError(
                f"train batch {self.train_batch_size} is not a multiple of train_micro_batch_size x GPUs = {step}"
            )
        if samples // self.forward_micro_batch_size < self.actor_gpus:
            raise ValueError(
                f"{samples} samples in forward micro-batches of {self.forward_micro_batch_size} "
                f"leave some of the {self.actor_gpus} actor GPUs idle"
            )

    @property
    def actor_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node

    @property
    def rollout_memory_share(self) -> float:
        """The engine's memory share: half the GPU when it takes turns with the actor, most of its own GPU."""
        if self.rollout_gpu_memory_utilization is not None:
            return self.rollout_gpu_memory_utilization
        return 0.5 if self.colocate else 0.9

    @property
    def gpus_needed(self) -> int:
        """GPUs the run occupies: the actor's, plus, unless colocated, the engines' and a reference model's."""
        if self.colocate:
            return self.actor_gpus
        reference = self.actor_gpus if self.kl_coef > 0 else 0
        return self.actor_gpus + reference + self.num_rollout_engines * self.rollout_tp

    @property
    def prompt_max_len(self) -> int:
        """Token budget for a rendered prompt: longer ones would be cut from the left by OpenRLHF."""
        return self.max_len - self.max_new_tokens

    @property
    def train_batch_size(self) -> int:
        """Samples per optimizer step: the whole rollout batch when on-policy (updates_per_rollout 1)."""
        return self.rollout_batch_size * self.n_samples_per_prompt // self.updates_per_rollout

    @property
    def num_rollout_engines(self) -> int:
        """`rollout_engines`, or one engine per rollout_tp of the actor's GPUs (what colocation needs)."""
        return self.rollout_engines or max(1, self.actor_gpus // self.rollout_tp)
