"""Co-located GPU shares from the models' configs, and what deterministic mode does on each GPU: arithmetic
and planning with GPU facts given, since this machine has no GPU."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from doctor.smoke import load_config
from engine.gpu import GpuInfo, deterministic_backend, deterministic_refusal, probe_gpu, radix_cache_lost
from engine.layout import EngineConfig, plan
from engine.sizing import (
    DEFAULT_SHARES,
    GIB,
    MIN_KV_TOKENS,
    ModelShape,
    UnsizableModel,
    activation_reserve,
    colocated_shares,
    read_shape,
)
from engine.spec import EngineError

# The real config.json values (Qwen/Qwen3-*), as the hub serves them.
QWEN3 = {"num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936}
QWEN3_4B = {
    **QWEN3,
    "num_hidden_layers": 36,
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
}
QWEN3_8B = {
    **QWEN3,
    "num_hidden_layers": 36,
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
QWEN3_06B = {
    **QWEN3,
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
}
Q4 = ModelShape.from_config("Qwen/Qwen3-4B", QWEN3_4B)
Q8 = ModelShape.from_config("Qwen/Qwen3-8B", QWEN3_8B)
Q06 = ModelShape.from_config("Qwen/Qwen3-0.6B", QWEN3_06B)


def gib(n: float) -> int:
    return int(n * GIB)


def test_parameter_counts_match_the_model_cards():
    # The cards say 4.0B, 8.2B and 0.6B; the 8B model's output projection is its own, the others' are tied.
    assert Q4.params / 1e9 == pytest.approx(4.02, abs=0.01)
    assert Q8.params / 1e9 == pytest.approx(8.19, abs=0.01)
    assert Q06.params / 1e9 == pytest.approx(0.60, abs=0.01)
    assert Q4.weight_bytes == 2 * Q4.params  # bfloat16
    # keys and values, 36 layers x 8 heads x 128 dims, 2 bytes each: 144 KiB per token
    assert Q4.kv_bytes_per_token == Q8.kv_bytes_per_token == 2 * 36 * 8 * 128 * 2 == 147456


@pytest.mark.parametrize("name", ["qwen3-0.6b", "qwen3-4b", "qwen3-8b"])
def test_the_parameter_count_is_what_transformers_builds(tmp_path, name):
    config = load_config(name)  # the doctor's shipped config.json, a real Qwen3 architecture
    (tmp_path / "config.json").write_text(json.dumps(config))
    with torch.device("meta"):  # the real modules, no memory
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp_path))
    shape = ModelShape.from_config(name, config)
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert config["torch_dtype"] == "bfloat16" and shape.weight_bytes == 2 * shape.params


def test_the_context_is_max_position_embeddings_where_the_config_gives_it():
    assert ModelShape.from_config("m", {**QWEN3_4B, "max_position_embeddings": 40960}).context == 40960
    assert Q4.context is None  # QWEN3_4B does not say


def test_an_h200_keeps_the_040_045_split():
    assert colocated_shares(Q4, Q8, gib(141)) == DEFAULT_SHARES == (0.40, 0.45)


def test_an_80_gb_gpu_leaves_sglangs_activation_reserve_not_the_splits_15_percent():
    # 0.15 x 80 = 12 GiB, below the 12.6 GiB SGLang keeps free after CUDA-graph capture (8192-token chunks),
    # which it would take from the synthesizer's KV. KV left 80 - 12.625 - 22.748 = 44.627 GiB, the explorer's
    # 0.55 of it 24.545: (7.492 + 24.545) / 80 = 0.4005 and (15.256 + 20.082) / 80 = 0.4417, rounded down.
    assert colocated_shares(Q4, Q8, gib(80)) == (0.4, 0.441)


@pytest.mark.parametrize(
    ("total_gib", "reserve_gib"),
    [(16, 3.625), (24, 6.625), (40, 6.625), (80, 12.625), (141, 12.625), (192, 24.625)],
)
def test_the_activation_reserve_is_sglangs_for_the_gpus_memory(total_gib, reserve_gib):
    # 512 MB + 1.5 MB x the prefill chunk SGLang picks for the GPU (2k / 4k / 8k / 16k) + 1/8 GB (tp 1);
    # above 60 GB at least 10 GB.
    assert activation_reserve(gib(total_gib)) == gib(reserve_gib)


def test_a_40_gb_gpu_leaves_the_co_located_synthesizer_sglangs_reserve():
    # The split's headroom there was max(0.15 x 40, 2 x 3) = 6 GiB, 0.6 GiB under SGLang's reserve: that much
    # of the synthesizer's planned KV would be gone.
    shares = colocated_shares(Q4, Q8, gib(40), total_bytes=gib(40))
    assert (1 - sum(shares)) * gib(40) >= activation_reserve(gib(40)) > 6 * GIB


def test_48_gb_still_fits_the_default_split():
    # 0.40 x 48 = 19.2 GiB >= 7.5 (4B) + 4.5 (32k tokens of KV); 0.45 x 48 = 21.6 >= 15.3 + 4.5; 0.15 x 48 >= 6.
    assert colocated_shares(Q4, Q8, gib(48)) == (0.40, 0.45)


def test_24_gb_cannot_hold_qwen3_4b_and_8b_and_says_why():
    with pytest.raises(ValueError) as refused:
        colocated_shares(Q4, Q8, gib(24))
    message = str(refused.value)
    assert "cannot share a GPU with 24.0 GiB free" in message
    assert "7.5 GiB + 15.3 GiB of weights" in message  # 4.02B and 8.19B parameters in bfloat16
    assert "6.6 GiB for activations" in message and f"({MIN_KV_TOKENS} tokens each)" in message
    assert "38.4 GiB in all" in message  # 22.7 + 6.6 (SGLang's reserve) + 2 x 4.5


def test_a_40_gb_gpu_gets_shares_sized_from_the_weights():
    # Headroom max(0.15 x 40, 2 x 3, SGLang's 6.625) = 6.625 GiB; KV left 40 - 6.625 - 7.492 - 15.256 = 10.627
    # GiB, the explorer's 0.55 of it 5.845: (7.492 + 5.845) / 40 = 0.3334 and (15.256 + 4.782) / 40 = 0.50095,
    # rounded down: 0.333, 0.500.
    explorer, synthesizer = colocated_shares(Q4, Q8, gib(40))
    assert (explorer, synthesizer) == (0.333, 0.5)
    assert_each_fits(Q4, Q8, gib(40), (explorer, synthesizer))


def test_a_small_pair_on_24_gb_gives_the_synthesizer_at_least_its_minimum_kv():
    # Qwen3-0.6B explores, Qwen3-4B synthesizes: 8.78 GiB of KV left (SGLang's 6.625 GiB reserve kept); the
    # explorer's 0.55 would leave the synthesizer 3.95 GiB, under 32k tokens (4.5 GiB), so it gets 4.5 and the
    # explorer the other 4.28.
    shares = colocated_shares(Q06, Q4, gib(24))
    assert shares == (0.224, 0.499)
    assert_each_fits(Q06, Q4, gib(24), shares)


def test_tensor_parallel_splits_the_weights_across_gpus():
    # Two GPUs of 24 GB each hold half of each model: 3.7 + 7.6 GiB of weights per GPU.
    shares = colocated_shares(Q4, Q8, gib(24), tp=2)
    assert shares[0] * gib(24) >= Q4.weight_bytes / 2 + MIN_KV_TOKENS * Q4.kv_bytes_per_token / 2
    assert sum(shares) <= 1 - 6 / 24


def test_given_shares_win_unless_they_cannot_hold_the_weights():
    assert colocated_shares(Q4, Q8, gib(80), given=(0.3, 0.5)) == (0.3, 0.5)
    with pytest.raises(
        ValueError, match=r"gives Qwen/Qwen3-4B 0.1 of 48.0 GiB free, 4.8 GiB, less than its weights \(7.5"
    ):
        colocated_shares(Q4, Q8, gib(48), given=(0.1, 0.5))


def assert_each_fits(explorer: ModelShape, synthesizer: ModelShape, free: int, shares: tuple[float, float]):
    for model, share in zip((explorer, synthesizer), shares, strict=True):
        assert share * free >= model.weight_bytes + MIN_KV_TOKENS * model.kv_bytes_per_token - 0.001 * free
    assert (1 - sum(shares)) * free >= activation_reserve(free)  # what SGLang keeps free after capture


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_experts": 128}, "mixture of experts"),
        ({"quantization_config": {"quant_method": "fp8"}}, "quantized"),
        ({"torch_dtype": "float8_e4m3fn"}, "dtype 'float8_e4m3fn'"),
        ({"hidden_size": None}, "hidden_size"),
    ],
)
def test_a_config_that_cannot_be_sized_says_why(change, message):
    config = {k: v for k, v in {**QWEN3_4B, **change}.items() if v is not None}
    with pytest.raises(UnsizableModel, match=message):
        ModelShape.from_config("m", config)


def model_dir(tmp_path, name: str, config: dict | None):
    folder = tmp_path / name
    folder.mkdir(parents=True)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def test_a_local_models_shape_is_read_from_its_config_json(tmp_path):
    assert read_shape(model_dir(tmp_path, "q4", QWEN3_4B)).params == Q4.params
    with pytest.raises(UnsizableModel, match="config.json"):
        read_shape(model_dir(tmp_path, "empty", None))


def gpu(free_gib: float, capability: tuple[int, int] = (9, 0)) -> GpuInfo:
    return GpuInfo(gib(free_gib), gib(free_gib) + GIB, capability)


def colocated(tmp_path, free_gib: float, **config):
    models = model_dir(tmp_path, "explorer", QWEN3_4B), model_dir(tmp_path, "synthesizer", QWEN3_8B)
    engine_config = EngineConfig(explorer_model=models[0], synthesizer_model=models[1], **config)
    return plan(engine_config, device="cuda", gpus=1, gpu=gpu(free_gib))


def test_planning_sizes_the_co_located_engines_for_the_gpu(tmp_path):
    h200 = colocated(tmp_path, 141)
    assert (h200.explorer.mem_fraction_static, h200.synthesizer.mem_fraction_static) == (0.4, 0.75)
    h100 = colocated(tmp_path / "h100", 80)
    a100 = plan(
        EngineConfig(explorer_model=h100.explorer.model, synthesizer_model=h100.synthesizer.model),
        device="cuda",
        gpus=1,
        gpu=gpu(40),
    )
    # The synthesizer's fraction is of what the explorer left free: 0.5 / (1 - 0.333).
    assert (a100.explorer.mem_fraction_static, a100.synthesizer.mem_fraction_static) == (0.333, 0.7496)


def test_planning_refuses_a_pair_the_gpu_cannot_hold_and_keeps_given_shares(tmp_path):
    with pytest.raises(ValueError, match="cannot share a GPU with 24.0 GiB free"):
        colocated(tmp_path / "a", 24)
    given = colocated(tmp_path / "b", 80, gpu_shares=(0.3, 0.5))
    assert given.explorer.mem_fraction_static == 0.3


def test_a_model_that_cannot_be_sized_keeps_the_default_split_with_a_warning(tmp_path, caplog):
    config = EngineConfig(
        explorer_model=model_dir(tmp_path, "moe", {**QWEN3_4B, "num_experts": 128}),
        synthesizer_model=model_dir(tmp_path, "q8", QWEN3_8B),
    )
    with caplog.at_level(logging.WARNING, logger="engine.layout"):
        engines = plan(config, device="cuda", gpus=1, gpu=gpu(80))
    assert engines.explorer.mem_fraction_static == 0.4
    assert "unchecked" in caplog.text and "mixture of experts" in caplog.text


@pytest.mark.parametrize(
    ("backend", "capability", "chosen"),
    [
        (None, (9, 0), "fa3"),  # Hopper
        (None, (8, 0), "fa3"),
        (None, (10, 0), "flashinfer"),  # B200
        (None, (12, 0), "flashinfer"),  # RTX 50xx
        ("triton", (10, 0), "triton"),
    ],
)
def test_the_deterministic_backend_sglang_picks(backend, capability, chosen):
    assert deterministic_backend(backend, capability) == chosen


def test_only_backends_outside_sglangs_radix_list_lose_the_prefix_cache():
    assert radix_cache_lost(None, (10, 0)) == "flashinfer"
    assert radix_cache_lost(None, (9, 0)) is None
    assert radix_cache_lost("triton", (10, 0)) is None and radix_cache_lost("fa4", (10, 0)) is None


@pytest.mark.parametrize(
    ("capability", "backend", "warned"),
    [((10, 0), None, True), ((9, 0), None, False), ((10, 0), "triton", False)],
)
def test_deterministic_planning_warns_once_when_fork_loses_its_prefix(capability, backend, warned, caplog):
    config = EngineConfig(
        explorer_model="a/b", synthesizer_model="c/d", deterministic=True, attention_backend=backend
    )
    with caplog.at_level(logging.WARNING, logger="engine.layout"):
        plan(config, device="cuda", gpus=2, gpu=gpu(80, capability))
    lost = [r.getMessage() for r in caplog.records if "radix cache" in r.getMessage()]
    assert len(lost) == (1 if warned else 0)
    if warned:
        assert "flashinfer attention" in lost[0] and "compute capability 10.0" in lost[0]
        assert "prefills the prompt again" in lost[0]


@pytest.mark.parametrize(
    ("capability", "backend", "refused"),
    [
        ((7, 5), None, True),  # T4: SGLang would pick fa3, which asserts SM 8.x or 9.x
        ((7, 5), "triton", False),
        ((10, 0), "fa3", True),
        ((8, 6), None, False),
        ((9, 0), None, False),
        ((10, 0), None, False),  # flashinfer
    ],
)
def test_deterministic_mode_is_refused_where_its_attention_backend_cannot_run(capability, backend, refused):
    assert (deterministic_refusal(backend, capability) is not None) == refused


def test_deterministic_planning_on_a_t4_is_refused_in_one_line_before_anything_starts():
    config = EngineConfig(explorer_model="a/b", synthesizer_model="c/d", deterministic=True)
    with pytest.raises(ValueError) as refused:
        plan(config, device="cuda", gpus=2, gpu=gpu(15, (7, 5)))
    message = str(refused.value)
    assert "\n" not in message and "compute capability 7.5" in message and "fa3" in message
    assert "--attention-backend triton" in message and "without --deterministic" in message
    assert plan(replace(config, attention_backend="triton"), device="cuda", gpus=2, gpu=gpu(15, (7, 5)))


def test_the_gpu_probe_reads_a_child_processs_answer(tmp_path):
    child = tmp_path / "python"  # stands in for the interpreter: prints what torch.cuda would say on an H100
    child.write_text(
        '#!/bin/sh\necho \'{"free_bytes": 84000000000, "total_bytes": 85000000000, "capability": [9, 0]}\'\n'
    )
    child.chmod(0o755)
    assert probe_gpu(str(child)) == GpuInfo(84_000_000_000, 85_000_000_000, (9, 0))


def test_the_gpu_probe_says_why_it_failed():
    # This machine has no CUDA device: torch.cuda.mem_get_info raises in the child.
    with pytest.raises(
        EngineError, match="cannot read GPU 0's free memory: RuntimeError: Found no NVIDIA driver"
    ):
        probe_gpu()
