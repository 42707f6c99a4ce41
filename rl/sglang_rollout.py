"""SGLang rollout engines for OpenRLHF 0.11.2, driven through OpenRLHF's own CLI.

    python -m rl.sglang_rollout <openrlhf.cli.train_ppo_ray flags>     # what `python rl/train.py` runs

OpenRLHF ships vLLM rollout actors only. This launcher swaps one piece and runs OpenRLHF's CLI module as
`__main__`, so every upstream flag keeps its meaning: `openrlhf.trainer.ray.create_vllm_engines` becomes
`create_sglang_engines`, whose Ray actors (`SGLangRollout`) each launch one SGLang server (`rl.sglang_server`,
with this project's engine code) and answer the calls the trainer makes on a rollout actor: token-level
`generate` returning vLLM-shaped outputs, `generate_responses` through OpenRLHF's own agent executor (and so
its reward function), weight sync, sleep/wake for colocation, pause/resume for async partial rollouts and
prefix-cache flushes. Engines are not tensor-parallel (`GRPORecipe` refuses `rollout_tp > 1` for SGLang).

Weight sync, two paths as in OpenRLHF: colocated, the trainer sends CUDA IPC handles and the server rebuilds
the tensors itself (`update_weights_from_tensor`); otherwise trainer rank 0 and the engines form a torch
process group that SGLang joins with `init_weights_update_group` and loads from with
`update_weights_from_distributed`. The IPC handle to load is the one made on the server's GPU, found
through NVML (`rl.gpu_ids`) so the actor never opens a CUDA context of its own. SGLang loads weights only
inside a weight-update session, which opens at a sync's first tensor and closes at its last (OpenRLHF flags
the last one `empty_cache=True`), flushing the prefix cache so nothing computed with the old weights is reused.

Every sample carries its own `sampling_seed` (`SampleSeeds`): with deterministic inference
(`--train.full_determinism_enable`) SGLang otherwise seeds every request alike, the n samples of a prompt come
out identical and every GRPO group has zero variance. Copies of one prompt in a batch get seeds of their own
too. Without it SGLang ignores the seed.

OpenRLHF's modules import `vllm` at top level; `rl.vllm_standin` provides the names they use and is
installed here in the driver and in every Ray worker.
"""

from __future__ import annotations

import asyncio
import atexit
import copy
import hashlib
import json
import os
import runpy
import sys
import tempfile
from pathlib import Path
from typing import Any

from engine.launch import key_file, stop, wait_ready
from engine.ports import free_port
from engine.spec import READY_TIMEOUT_S, auth, launch_env
from rl.gpu_ids import handle_for_gpu, nvml_uuids, server_gpu_env, visible_device_uuid
from rl.recipe import OPENRLHF_CLI
from rl.sglang_server import launch_tied, rollout_spec
from rl.vllm_standin import (
    CompletionOutput,
    Logprob,
    RequestOutput,
    install_vllm_standin,
    with_standin_hook,
)

MEMORY_TAGS = ("weights", "kv_cache", "cuda_graph")  # what SGLang's release/resume_memory_occupation manage
IDLE_WAIT_S = 30.0  # how long `sleep` waits for the last batch to drain before releasing memory
IPC_DEVICE_ARG = 6  # position of the device index in torch's rebuild_cuda_tensor arguments
# SGLang 0.5.23 pauses in "retract" mode: running requests go back to its queue, the KV cache may be flushed
# for a weight update, and they are recomputed with the new weights on continue (vLLM's "keep" pause).
PAUSE_MODE = "retract"


# -- vLLM-shaped requests and results to and from SGLang's ------------------------------------------------------


def sglang_sampling(params: Any) -> dict[str, Any]:
    """SGLang's sampling parameters for a vLLM-style `params` (ours or vLLM's own: read by attribute)."""
    out = {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "min_new_tokens": params.min_tokens,
        "skip_special_tokens": params.skip_special_tokens,
    }
    if params.max_tokens is not None:
        out["max_new_tokens"] = params.max_tokens
    if getattr(params, "seed", None) is not None:
        out["sampling_seed"] = params.seed
    return out


def sample_seed(trainer_seed: int, engine: int, copy_index: int, prompt: str, index: int) -> int:
    """The sampling seed of sample `index` of copy `copy_index` of `prompt` on rollout engine `engine`: the same
    on every rerun (no Python hash randomisation) and within SGLang's int64 range."""
    key = f"{trainer_seed}\0{engine}\0{copy_index}\0{index}\0{prompt}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") >> 1


class SampleSeeds:
    """One rollout engine's per-sample seeds, batch by batch.

    OpenRLHF sends a prompt's n samples in one call, and nothing says where in the batch the prompt stands. A
    prompt the dataset repeats arrives twice; keyed on its text alone both copies would get the same n seeds
    and so, under deterministic inference, the same samples. So a seed also keys on how many copies of the
    prompt this engine has had in the batch, and on the engine (copies sent to two engines). The count
    restarts at each weight sync, which ends a batch, so a rerun that dispatches alike gets the same seeds."""

    def __init__(self, trainer_seed: int, engine: int) -> None:
        self.trainer_seed = trainer_seed
        self.engine = engine
        self.copies: dict[str, int] = {}  # prompt -> copies seeded in this batch

    def take(self, prompt: str, n: int) -> list[int]:
        """Seeds for the n samples of the next copy of `prompt`."""
        copy_index = self.copies.get(prompt, 0)
        self.copies[prompt] = copy_index + 1
        return [sample_seed(self.trainer_seed, self.engine, copy_index, prompt, i) for i in range(n)]

    def new_batch(self) -> None:
        self.copies.clear()


def with_seed(params: Any, seed: int) -> Any:
    """A copy of `params` carrying `seed` (vLLM's SamplingParams field name), so samples do not share one."""
    seeded = copy.copy(params)
    seeded.seed = seed
    return seeded


def request_output(prompt_token_ids: list[int], response: dict[str, Any]) -> RequestOutput:
    """A vLLM-shaped result from one SGLang `/generate` response."""
    meta = response["meta_info"]
    reason = meta.get("finish_reason") or {}
    if reason.get("type") == "abort":
        raise RuntimeError(f"SGLang aborted the request: {reason.get('message')}")
    logprobs = None
    if "output_token_logprobs" in meta:
        logprobs = [{token: Logprob(value)} for value, token, _ in meta["output_token_logprobs"]]
    completion = CompletionOutput(
        list(response["output_ids"]), response["text"], reason.get("type"), logprobs
    )
    return RequestOutput(list(prompt_token_ids), [completion], meta.get("cached_tokens", 0))


# -- the rollout engine ------------------------------------------------------------------------------------------


def tags_to_wake(asleep: set[str], tags: list[str] | None) -> list[str]:
    """SGLang memory types to resume for OpenRLHF's `wake_up(tags)`: all when None; the KV cache brings its
    CUDA graphs along; anything already awake is skipped (SGLang refuses to resume it twice)."""
    unknown = set(tags or ()) - set(MEMORY_TAGS)
    if unknown:
        raise ValueError(f"unknown memory tags {sorted(unknown)}; expected some of {MEMORY_TAGS}")
    wanted = (
        set(MEMORY_TAGS) if tags is None else set(tags) | ({"cuda_graph"} if "kv_cache" in tags else set())
    )
    return [t for t in MEMORY_TAGS if t in wanted & asleep]


class SGLangRollout:
    """One SGLang server answering OpenRLHF's rollout-actor calls.

    A plain class: `create_sglang_engines` wraps it with `ray.remote` (an async actor, since the trainer's
    calls are coroutines), and tests drive it directly.
    """

    def __init__(
        self,
        model: str,
        *,
        agent_func_path: str | None = None,
        remote_rm_url: str | None = None,
        log_dir: str | None = None,
        ready_timeout: float = READY_TIMEOUT_S,
        trainer_seed: int = 0,
        engine_index: int = 0,
        **engine: Any,
    ) -> None:
        env = server_gpu_env(os.environ, _ray_gpu_ids()) if engine.get("device", "cuda") == "cuda" else {}
        self.spec = rollout_spec(model, port=free_port(), env=env, **engine)
        self.seeds = SampleSeeds(trainer_seed, engine_index)
        self._gpu_uuid: str | None = None  # the server's GPU, looked up on the first CUDA-IPC weight sync
        self.enable_sleep = bool(engine.get("enable_sleep"))
        self.executor = agent_executor(agent_func_path, remote_rm_url)
        self.log = (
            Path(log_dir or Path(tempfile.gettempdir()) / "sglang-rollout") / f"engine-{self.spec.port}.log"
        )
        self.asleep: set[str] = set()
        self.unfinished = 0
        self.group: str | None = None  # the weight-sync group, once joined
        self.in_update = False  # inside an SGLang weight-update session
        self._http: tuple[Any, Any] | None = None  # (aiohttp session, the event loop it belongs to)
        self.process = launch_tied(self.spec, self.log)
        atexit.register(self.shutdown)
        try:
            wait_ready(self.spec, self.process, self.log, ready_timeout)
        except BaseException:
            self.shutdown()
            raise

    def shutdown(self) -> None:
        stop(self.process)
        key_file(self.log).unlink(missing_ok=True)
        if self._http is not None and not self._http[1].is_closed() and not self._http[1].is_running():
            self._http[1].run_until_complete(self._http[0].close())
        self._http = None

    async def _post(self, route: str, body: dict[str, Any]) -> Any:
        import aiohttp

        loop = asyncio.get_running_loop()
        if self._http is None or self._http[1] is not loop:
            timeout = aiohttp.ClientTimeout(total=None)  # a rollout may decode for many minutes
            self._http = (
                aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)),
                loop,
            )
        url, headers = f"{self.spec.base_url}{route}", auth(self.spec.api_key)
        async with self._http[0].post(url, json=body, headers=headers) as response:
            text = await response.text()
            if response.status != 200:
                raise RuntimeError(f"SGLang {route} failed (HTTP {response.status}): {text[:500]}")
            return json.loads(text) if response.content_type == "application/json" else text

    async def _control(self, route: str, body: dict[str, Any]) -> None:
        """A weight or memory operation; SGLang answers these with success and a message."""
        result = await self._post(route, body)
        if isinstance(result, dict) and result.get("success") is False:
            raise RuntimeError(f"SGLang {route} failed: {result.get('message')}")

    # -- generation
    async def generate(
        self, prompt_token_ids: list[int], sampling_params: Any, multi_modal_data: Any = None
    ) -> RequestOutput:
        if multi_modal_data:
            raise NotImplementedError("the SGLang rollout engine serves text prompts only")
        body = {
            "input_ids": list(prompt_token_ids),
            "sampling_params": sglang_sampling(sampling_params),
            "return_logprob": sampling_params.logprobs is not None,
        }
        self.unfinished += 1
        try:
            response = await self._post("/generate", body)
        finally:
            self.unfinished -= 1
        return request_output(prompt_token_ids, response)

    async def generate_responses(
        self, prompt, label, sampling_params, max_length, hf_tokenizer, num_samples=1, images=None
    ) -> list[dict]:
        """N samples of one prompt, each through OpenRLHF's agent executor (tokenizing, reward, ranges)."""
        kwargs = dict(
            prompt=prompt, label=label, max_length=max_length, hf_tokenizer=hf_tokenizer, images=images
        )
        runs = [
            self.executor.execute(sampling_params=with_seed(sampling_params, seed), llm_engine=self, **kwargs)
            for seed in self.seeds.take(prompt, num_samples)
        ]
        return await asyncio.gather(*runs)

    async def pause_generation(self) -> None:
        """Hold every request (async partial rollouts call this around a weight sync)."""
        await self._post("/pause_generation", {"mode": PAUSE_MODE})

    async def resume_generation(self) -> None:
        await self._post("/continue_generation", {})

    def get_num_unfinished_requests(self) -> int:
        return self.unfinished

    # -- weight sync
    async def _load(self, route: str, body: dict[str, Any], last: bool) -> None:
        if not self.in_update:
            await self._control("/begin_weight_update", {})
            self.in_update = True
        await self._control(route, {**body, "flush_cache": last})
        if last:  # OpenRLHF marks a sync's last tensor with empty_cache=True
            await self._control("/end_weight_update", {})
            self.in_update = False
            self.seeds.new_batch()

    async def init_process_group(
        self, master_address, master_port, rank_offset, world_size, group_name, backend, use_ray
    ):
        if use_ray:
            raise NotImplementedError(
                "--vllm.sync_with_ray is not supported with SGLang rollouts; leave it off"
            )
        body = dict(
            master_address=master_address,
            master_port=master_port,
            rank_offset=rank_offset,
            world_size=world_size,
            group_name=group_name,
            backend=backend,
        )
        await self._control("/init_weights_update_group", body)
        self.group = group_name

    async def update_weight(self, name, dtype, shape, empty_cache=False) -> None:
        if self.group is None:
            raise RuntimeError(
                "update_weight before init_process_group: no weight-sync group to receive from"
            )
        body = {"names": [name], "dtypes": [str(dtype).removeprefix("torch.")], "shapes": [list(shape)]}
        await self._load("/update_weights_from_distributed", {**body, "group_name": self.group}, empty_cache)

    async def update_weight_cuda_ipc(self, name, dtype, shape, ipc_handles, empty_cache=False) -> None:
        if self._gpu_uuid is None:
            visible = launch_env(self.spec).get("CUDA_VISIBLE_DEVICES")
            self._gpu_uuid = visible_device_uuid(visible, nvml_uuids(), self.spec.base_gpu_id)
        payload = ipc_payload(name, handle_for_gpu(ipc_handles, self._gpu_uuid), self.spec.base_gpu_id)
        body = {"serialized_named_tensors": [payload] * self.spec.tp}
        await self._load("/update_weights_from_tensor", body, empty_cache)

    async def reset_prefix_cache(self) -> None:
        await self._post("/flush_cache", {})

    # -- colocation
    async def wait_idle(self, within_s: float = IDLE_WAIT_S) -> None:
        """Return once the engine has nothing running or queued. SGLang publishes idle a scheduler iteration
        after its last reply, and `/flush_cache?timeout=` waits for it (the cache is flushed as it goes)."""
        await self._post(f"/flush_cache?timeout={within_s:g}", {})

    async def sleep(self, level: int = 1) -> None:
        if not self.enable_sleep:
            raise RuntimeError("this engine was started without sleep support (enable_sleep)")
        # SGLang asserts the scheduler is fully idle on release, and that assertion kills the scheduler: a
        # release right after the last reply, before the batch drained, would take the server down.
        await self.wait_idle()
        await self._control("/release_memory_occupation", {"tags": list(MEMORY_TAGS)})
        self.asleep = set(MEMORY_TAGS)

    async def wake_up(self, tags: list[str] | None = None) -> None:
        resume = tags_to_wake(self.asleep, tags)
        if resume:
            await self._control("/resume_memory_occupation", {"tags": resume})
            self.asleep -= set(resume)


def _ray_gpu_ids() -> list[int | str]:
    """The GPUs Ray gave this actor; none outside Ray (tests drive the actor directly)."""
    import ray

    return ray.get_gpu_ids() if ray.is_initialized() else []


class _Rebuild:
    """Pickles as the call that rebuilds a CUDA tensor from its IPC handle, for the server to make."""

    def __init__(self, func: Any, args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def ipc_payload(name: str, handle: tuple[Any, tuple], device_index: int) -> str:
    """`update_weights_from_tensor`'s payload for one tensor the trainer shared by CUDA IPC.

    `handle` is torch's `reduce_tensor` output, made on the trainer's device; the server opens it on its own
    device, `device_index` (what OpenRLHF's vLLM worker does by patching the same argument).
    """
    from sglang.srt.utils import MultiprocessingSerializer

    func, args = handle
    args = (*args[:IPC_DEVICE_ARG], device_index, *args[IPC_DEVICE_ARG + 1 :])
    return MultiprocessingSerializer.serialize([(name, _Rebuild(func, args))], output_str=True)


def agent_executor(agent_func_path: str | None, remote_rm_url: str | None) -> Any:
    """OpenRLHF's own executor, exactly as its vLLM actor picks one: a custom agent, or single turn + reward."""
    if agent_func_path:
        from openrlhf.trainer.ray.vllm_engine import _load_agent_executor  # needs the vllm stand-in

        return _load_agent_executor(agent_func_path)
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    return SingleTurnAgentExecutor(remote_rm_url)


# -- the factory OpenRLHF calls, and the launcher ------------------------------------------------------------------


def create_sglang_engines(
    num_engines: int,
    tensor_parallel_size: int,
    pretrain: str,
    seed: int,
    full_determinism: bool,
    enable_prefix_caching: bool,
    enforce_eager: bool,
    max_model_len: int,
    shared_pg: Any = None,
    gpu_memory_utilization: float | None = None,
    vllm_enable_sleep: bool = False,
    logprobs_mode: str | None = None,
    agent_func_path: str | None = None,
    remote_rm_url: str | None = None,
    max_images_per_prompt: int = 0,
) -> list[Any]:
    """OpenRLHF 0.11.2's `create_vllm_engines`, positionally, returning SGLang rollout actors."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if tensor_parallel_size != 1:  # rl.recipe refuses it at parse time; this catches `-- --vllm.*` overrides
        raise ValueError("SGLang rollout engines use one GPU each: set --vllm.tensor_parallel_size 1")
    if logprobs_mode or max_images_per_prompt:
        raise ValueError("SGLang rollout engines do not serve vLLM's processed logprobs or images")
    hybrid = shared_pg is not None  # colocated: the engines share the actor's GPUs
    if not hybrid:
        shared_pg = placement_group([{"GPU": 1, "CPU": 1}] * num_engines, strategy="PACK")
        ray.get(shared_pg.ready())
    gpus = 0.2 if hybrid else 1  # as OpenRLHF's vLLM engines, so the actor still fits beside one
    engines = [
        ray.remote(SGLangRollout)
        .options(
            num_cpus=gpus,
            num_gpus=gpus,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=shared_pg,
                placement_group_capture_child_tasks=True,
                placement_group_bundle_index=i,
            ),
        )
        .remote(
            pretrain,
            agent_func_path=agent_func_path,
            remote_rm_url=remote_rm_url,
            trainer_seed=seed,  # per-sample seeds
            engine_index=i,
            seed=seed + i,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=enable_prefix_caching,
            enable_sleep=vllm_enable_sleep,
            deterministic=full_determinism,
            enforce_eager=enforce_eager,
        )
        for i in range(num_engines)
    ]
    if vllm_enable_sleep:
        ray.get([engine.sleep.remote() for engine in engines])
    return engines


def main(argv: list[str] | None = None) -> int:
    install_vllm_standin()
    import openrlhf.trainer.ray
    import ray

    openrlhf.trainer.ray.create_vllm_engines = create_sglang_engines
    ray.init = with_standin_hook(ray.init)
    sys.argv = [OPENRLHF_CLI, *(sys.argv[1:] if argv is None else argv)]
    runpy.run_module(OPENRLHF_CLI, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
