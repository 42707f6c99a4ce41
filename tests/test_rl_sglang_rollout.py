"""`rl.sglang_rollout` against a real SGLang server on the CPU (tiny model), through the calls OpenRLHF makes.

One engine for the module, launched by `SGLangRollout` itself. Generation goes through OpenRLHF's own agent
executor and reward file; the weight sync uses OpenRLHF's trainer-side `stateless_init_process_group` with
the vllm stand-in, on gloo. What a CPU cannot run (CUDA IPC, SGLang's memory saver) is checked as far as it
can be without a GPU, and said so.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import importlib.util
import inspect
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from engine.ports import free_port
from engine.spec import launch_command
from programs.core.grading import extract_answer, is_equivalent
from programs.core.prompts import chat_prompt
from rl import sglang_rollout, vllm_standin
from rl.sglang_rollout import (
    SampleSeeds,
    SGLangRollout,
    ipc_payload,
    sglang_sampling,
    tags_to_wake,
    with_seed,
)
from rl.sglang_server import rollout_spec
from rl.train import REWARD_FILE
from rl.vllm_standin import SamplingParams

ROOT = Path(__file__).resolve().parents[1]
ENGINE_FIXTURES = ("rollout",)  # an SGLang server behind the rollout actor (tests/conftest.py marks)
GRACE_S = 1.0  # how long a finished request's reply may take to arrive after the engine went idle


@pytest.fixture(scope="module")
def loop():
    """One event loop for the module, as a Ray async actor has."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def rollout(tiny_model, tmp_path_factory, loop):
    logs = tmp_path_factory.mktemp("rollout-logs")
    engine = SGLangRollout(
        str(tiny_model), device="cpu", seed=0, remote_rm_url=str(REWARD_FILE), log_dir=str(logs)
    )
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def prompt_ids(tokenizer, question: str) -> list[int]:
    return tokenizer(chat_prompt(tokenizer, question), add_special_tokens=False)["input_ids"]


GREEDY = SamplingParams(temperature=0.0, max_tokens=8, skip_special_tokens=False)


def test_generate_returns_what_the_trainer_reads(rollout, tokenizer, loop):
    ids = prompt_ids(tokenizer, "What is 2 + 2?")
    params = SamplingParams(temperature=1.0, max_tokens=12, skip_special_tokens=False, logprobs=1)

    async def generate_and_count():
        task = asyncio.ensure_future(rollout.generate(ids, params))
        while rollout.get_num_unfinished_requests() == 0 and not task.done():
            await asyncio.sleep(0.001)
        in_flight = rollout.get_num_unfinished_requests()
        return await task, in_flight

    out, in_flight = loop.run_until_complete(generate_and_count())
    assert in_flight == 1 and rollout.get_num_unfinished_requests() == 0
    assert out.prompt_token_ids == ids
    completion = out.outputs[0]
    assert 1 <= len(completion.token_ids) <= 12
    assert completion.finish_reason in ("length", "stop")
    assert (completion.finish_reason == "length") == (len(completion.token_ids) == 12)
    assert tokenizer.decode(completion.token_ids, skip_special_tokens=False) == completion.text
    assert len(completion.logprobs) == len(completion.token_ids)
    for token, logprob in zip(completion.token_ids, completion.logprobs, strict=True):
        assert logprob[token].logprob <= 0


def test_generate_responses_runs_openrlhfs_executor_and_reward(rollout, tokenizer, loop):
    prompt = chat_prompt(tokenizer, "What is 2 + 2?")
    params = SamplingParams(temperature=1.0, max_tokens=None, skip_special_tokens=False)
    results = loop.run_until_complete(
        rollout.generate_responses(prompt, "4", params, max_length=40, hf_tokenizer=tokenizer, num_samples=3)
    )
    ids = prompt_ids(tokenizer, "What is 2 + 2?")
    assert len(results) == 3
    for result in results:
        assert result["observation_tokens"][: len(ids)] == ids
        (start, end), *_ = result["action_ranges"]
        assert (start, len(result["observation_tokens"])) == (len(ids), end) and end <= 40
        # rl/reward.py, loaded by OpenRLHF's executor, scored the generated text alone.
        answer = extract_answer(tokenizer.decode(result["observation_tokens"][len(ids) :]))
        assert (
            result["reward"] == result["scores"] == float(answer is not None and is_equivalent("4", answer))
        )
        assert result["extra_logs"]["answered"].item() == float(answer is not None)


def test_sample_seeds_are_distinct_per_sample_and_reproducible():
    group = SampleSeeds(42, engine=0).take("What is 2 + 2?", 8)
    assert len(set(group)) == 8  # the collapse under deterministic inference was one seed (42) for all
    assert group == SampleSeeds(42, engine=0).take("What is 2 + 2?", 8)
    other_process = subprocess.run(  # not Python's hash(), which is salted per process
        [
            sys.executable,
            "-c",
            "from rl.sglang_rollout import sample_seed; print(sample_seed(42, 0, 0, 'What is 2 + 2?', 0))",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONHASHSEED": "123"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert other_process.stdout.strip() == str(group[0]), other_process.stderr[-2000:]
    assert SampleSeeds(43, engine=0).take("What is 2 + 2?", 1)[0] != group[0]
    assert SampleSeeds(42, engine=0).take("What is 2 + 3?", 1)[0] != group[0]
    assert all(0 <= seed < 2**63 for seed in group)  # SGLang refuses seeds outside int64


def test_copies_of_a_prompt_in_one_batch_get_seeds_of_their_own_and_a_rerun_the_same_ones():
    def batch(seeds: SampleSeeds) -> list[list[int]]:
        return [seeds.take(prompt, 4) for prompt in ("What is 2 + 2?", "What is 3 + 4?", "What is 2 + 2?")]

    first = batch(SampleSeeds(42, engine=0))
    assert len({seed for group in first for seed in group}) == 12  # the repeated prompt's copies differ
    on_another_engine = SampleSeeds(42, engine=1).take("What is 2 + 2?", 4)
    assert not set(on_another_engine) & set(first[0])  # a copy sent to a second engine differs too
    seeds = SampleSeeds(42, engine=0)
    assert batch(seeds) == first  # a rerun gets the same seeds
    seeds.new_batch()  # a weight sync ends the batch
    assert batch(seeds) == first


def test_a_seed_reaches_sglangs_sampling_params_and_only_a_copy_carries_it():
    params = SamplingParams(temperature=0.7, max_tokens=5)
    seeded = with_seed(params, 7)
    assert sglang_sampling(seeded)["sampling_seed"] == 7
    assert params.seed is None and "sampling_seed" not in sglang_sampling(params)


def test_each_sample_of_a_prompt_is_sent_with_its_own_seed(rollout, tokenizer, loop, monkeypatch):
    sent = []
    post = rollout._post

    async def recording_post(route, body):
        if route == "/generate":
            sent.append(body["sampling_params"]["sampling_seed"])
        return await post(route, body)

    monkeypatch.setattr(rollout, "_post", recording_post)
    prompt = chat_prompt(tokenizer, "What is 3 + 4?")
    params = SamplingParams(temperature=1.0, max_tokens=4, skip_special_tokens=False)

    def seeds_sent() -> list[int]:
        sent.clear()
        results = loop.run_until_complete(
            rollout.generate_responses(
                prompt, "7", params, max_length=60, hf_tokenizer=tokenizer, num_samples=4
            )
        )
        assert (
            len(results) == 4
        )  # the CPU engine took the seeds (it ignores them: deterministic mode is GPU-only)
        return sorted(sent)

    first = seeds_sent()
    assert first == sorted(SampleSeeds(rollout.seeds.trainer_seed, engine=0).take(prompt, 4))
    assert len(set(first)) == 4 and seeds_sent() != first  # a second copy of the prompt in the batch
    rollout.seeds.new_batch()
    assert seeds_sent() == first
    assert params.seed is None  # the trainer's object is left as it was


def test_pause_holds_requests_until_resumed(rollout, tokenizer, loop):
    ids = prompt_ids(tokenizer, "Paused?")

    async def paused_generate():
        await rollout.pause_generation()
        task = asyncio.ensure_future(rollout.generate(ids, GREEDY))
        await asyncio.sleep(1.0)
        held = not task.done()
        await rollout.resume_generation()
        return held, await asyncio.wait_for(task, 60)

    held, out = loop.run_until_complete(paused_generate())
    assert held and out.outputs[0].token_ids  # waited while paused, finished once resumed


def test_reset_prefix_cache_flushes_the_radix_cache(rollout, tokenizer, loop):
    ids = prompt_ids(tokenizer, "Is the cache flushed?")
    first, second = (loop.run_until_complete(rollout.generate(ids, GREEDY)) for _ in range(2))
    assert second.num_cached_tokens >= len(ids) - 1 > first.num_cached_tokens  # (the chat header is shared)
    loop.run_until_complete(rollout.reset_prefix_cache())
    assert (
        loop.run_until_complete(rollout.generate(ids, GREEDY)).num_cached_tokens == 0
    )  # not even the header


def test_weight_sync_through_the_trainers_calls_changes_generation(
    rollout, tokenizer, tiny_model, loop, monkeypatch
):
    for name, module in vllm_standin.standin_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    from openrlhf.utils.distributed_util import stateless_init_process_group  # the trainer's own call

    ids = prompt_ids(tokenizer, "Will the weights change?")
    before = [loop.run_until_complete(rollout.generate(ids, GREEDY)).outputs[0].token_ids for _ in range(2)]
    assert before[0] == before[1]  # greedy: only new weights can change it

    config = AutoConfig.from_pretrained(tiny_model)
    new = torch.Generator().manual_seed(1)
    params = {  # as OpenRLHF streams them: one at a time, the last one flagged empty_cache
        "model.norm.weight": torch.rand(config.hidden_size, generator=new).to(torch.bfloat16),
        "model.embed_tokens.weight": torch.randn(config.vocab_size, config.hidden_size, generator=new).to(
            torch.bfloat16
        ),
    }
    port = free_port()

    async def sync():
        group, _ = await asyncio.gather(
            asyncio.to_thread(stateless_init_process_group, "127.0.0.1", port, 0, 2, torch.device("cpu")),
            rollout.init_process_group("127.0.0.1", port, 1, 2, "openrlhf", backend="gloo", use_ray=False),
        )
        for count, (name, weight) in enumerate(params.items(), start=1):
            last = count == len(params)
            update = asyncio.ensure_future(
                rollout.update_weight(name, weight.dtype, weight.shape, empty_cache=last)
            )
            await asyncio.to_thread(group.broadcast, weight, 0, None)
            await update
            assert rollout.in_update is not last  # SGLang's weight-update session closes after the last one

    loop.run_until_complete(sync())
    after = loop.run_until_complete(rollout.generate(ids, GREEDY))
    assert after.outputs[0].token_ids != before[0]
    assert after.num_cached_tokens == 0  # the prompt's old-weight KV was flushed with the last tensor


def test_sleep_needs_a_gpu_and_a_cpu_engine_says_so(rollout, tokenizer, loop):
    # SGLang 0.5.23's release_memory_occupation synchronizes CUDA, which kills a CPU scheduler: sleep can only
    # run on a GPU engine started with the memory saver, so a CPU engine refuses it and keeps serving.
    with pytest.raises(RuntimeError, match="without sleep support"):
        loop.run_until_complete(rollout.sleep())
    loop.run_until_complete(rollout.wake_up())  # nothing asleep: nothing to resume
    assert (
        loop.run_until_complete(rollout.generate(prompt_ids(tokenizer, "Still up?"), GREEDY))
        .outputs[0]
        .token_ids
    )
    with pytest.raises(ValueError, match="needs CUDA"):
        rollout_spec("m", port=30000, device="cpu", enable_sleep=True)
    gpu = launch_command(rollout_spec("m", port=30000, enable_sleep=True, gpu_memory_utilization=0.5, seed=3))
    for flag in ("--enable-memory-saver", "--enable-weights-cpu-backup"):
        assert flag in gpu
    assert gpu[gpu.index("--mem-fraction-static") + 1] == "0.5" and gpu[gpu.index("--random-seed") + 1] == "3"


def test_wake_up_resumes_only_what_sleeps():
    asleep = {"weights", "kv_cache", "cuda_graph"}
    assert tags_to_wake(asleep, ["weights"]) == ["weights"]  # OpenRLHF's weight sync wakes the weights first
    assert tags_to_wake({"kv_cache", "cuda_graph"}, None) == ["kv_cache", "cuda_graph"]
    assert tags_to_wake(asleep, ["kv_cache"]) == ["kv_cache", "cuda_graph"]
    assert tags_to_wake(set(), None) == []
    with pytest.raises(ValueError, match="unknown memory tags"):
        tags_to_wake(asleep, ["optimizer"])


def test_ipc_payload_is_what_sglang_will_unpickle():
    """The CUDA IPC path cannot run on a CPU; its payload is checked against SGLang's unpickling whitelist."""
    from sglang.srt.utils.common import SafeUnpickler

    rebuild = torch.multiprocessing.reductions.rebuild_cuda_tensor
    args = (
        torch.Tensor,
        torch.Size([4, 2]),
        (2, 1),
        0,
        torch.storage.UntypedStorage,
        torch.bfloat16,
        3,
        b"handle",
        16,
        0,
        False,
        b"ref",
        0,
        b"event",
        True,
    )
    found = []

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            found.append((module, name))
            if (module, name) == ("torch.multiprocessing.reductions", "rebuild_cuda_tensor"):
                return lambda *a: ("rebuilt", a)
            return super().find_class(module, name)

    payload = ipc_payload("model.norm.weight", (rebuild, args), device_index=0)
    ((name, (_, rebuilt_args)),) = Recorder(io.BytesIO(base64.b64decode(payload))).load()
    assert name == "model.norm.weight"
    assert rebuilt_args == (*args[:6], 0, *args[7:])  # the trainer's device 3 becomes the server's device 0
    assert set(found) <= SafeUnpickler.ALLOWED_GLOBALS


def test_factory_matches_openrlhfs_and_the_standin_serves_its_imports():
    source = Path(importlib.util.find_spec("openrlhf").origin).parent / "trainer" / "ray" / "vllm_engine.py"
    (upstream,) = [
        node
        for node in ast.parse(source.read_text()).body
        if isinstance(node, ast.FunctionDef) and node.name == "create_vllm_engines"
    ]
    names = [a.arg for a in upstream.args.args]
    assert list(inspect.signature(sglang_rollout.create_sglang_engines).parameters) == names

    script = (
        "from rl.vllm_standin import install_vllm_standin, SamplingParams\n"
        "install_vllm_standin()\n"
        "import openrlhf.trainer.ray as tr, openrlhf.trainer.ppo_utils.samples_generator as sg\n"
        "import openrlhf.utils.distributed_util\n"
        "from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator\n"
        "assert sg.SamplingParams is SamplingParams and callable(tr.create_vllm_engines)\n"
        "print('imports ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "imports ok" in done.stdout


def test_ray_init_gets_the_standin_hook_and_keeps_its_own_env():
    calls = []
    init = vllm_standin.with_standin_hook(lambda *a, **kw: calls.append(kw))
    init(runtime_env={"env_vars": {"NCCL_DEBUG": "WARN"}})
    init()
    hook = {"worker_process_setup_hook": "rl.vllm_standin.install_vllm_standin"}
    assert calls == [{"runtime_env": {**hook, "env_vars": {"NCCL_DEBUG": "WARN"}}}, {"runtime_env": hook}]


def test_wait_idle_returns_only_once_the_last_request_has_drained(rollout, tokenizer, loop):
    ids = prompt_ids(tokenizer, "Busy?")
    long = SamplingParams(temperature=1.0, max_tokens=1500, min_tokens=1500, skip_special_tokens=False)

    async def busy_then_idle():
        task = asyncio.ensure_future(rollout.generate(ids, long))
        while rollout.get_num_unfinished_requests() == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # the request is in the engine
        await rollout.wait_idle()
        # The engine is idle only once it has sent its last reply, which may still be on its way here: a grace
        # far shorter than decoding what was left of 1,500 tokens.
        done, _ = await asyncio.wait([task], timeout=GRACE_S)
        return done

    assert loop.run_until_complete(busy_then_idle())


def test_sleep_waits_for_idle_before_releasing_memory(rollout, loop, monkeypatch):
    # The release itself needs a GPU (it kills a CPU scheduler), so only it is recorded; the wait goes to the
    # real engine.
    routes, post = [], rollout._post

    async def recorded(route, body):
        routes.append(route)
        return {"success": True} if route == "/release_memory_occupation" else await post(route, body)

    monkeypatch.setattr(rollout, "_post", recorded)
    monkeypatch.setattr(rollout, "enable_sleep", True)
    loop.run_until_complete(rollout.sleep())
    assert routes == [f"/flush_cache?timeout={sglang_rollout.IDLE_WAIT_S:g}", "/release_memory_occupation"]
    rollout.asleep = set()
