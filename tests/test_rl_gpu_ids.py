"""`rl.gpu_ids`: a rollout engine's GPU chosen from Ray's ids and NVML, never from a CUDA context (literal inputs)."""

from __future__ import annotations

import sys

import pytest

from rl import vllm_standin
from rl.gpu_ids import handle_for_gpu, server_gpu_env, visible_device_uuid

UUIDS = ["GPU-aaaa1111-0000", "GPU-bbbb2222-0000", "GPU-bbbb3333-0000"]  # NVML's order


@pytest.fixture
def standin(monkeypatch):
    """OpenRLHF's `ray_noset_visible_devices` lives in a package that imports vllm: the stand-in serves it."""
    for name, module in vllm_standin.standin_modules().items():
        monkeypatch.setitem(sys.modules, name, module)


def test_ray_sets_the_gpu_unless_told_not_to(standin):
    assert (
        server_gpu_env({}, [3]) == {}
    )  # Ray set CUDA_VISIBLE_DEVICES=3 for the actor; the server inherits it
    noset = {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}
    assert server_gpu_env(noset, [3]) == {"CUDA_VISIBLE_DEVICES": "3"}  # else every engine starts on GPU 0
    assert server_gpu_env({"RAY_EXPERIMENTAL_NOSET_HIP_VISIBLE_DEVICES": "1"}, ["5"]) == {
        "CUDA_VISIBLE_DEVICES": "5"
    }
    with pytest.raises(RuntimeError, match="assigned this rollout actor no GPU"):
        server_gpu_env(noset, [])


def test_the_servers_gpu_uuid_follows_cuda_visible_devices():
    assert visible_device_uuid("2", UUIDS) == UUIDS[2]
    assert visible_device_uuid("2,0", UUIDS, index=1) == UUIDS[0]
    assert visible_device_uuid(None, UUIDS) == UUIDS[0]  # nothing hidden: CUDA device 0 is NVML's 0
    assert visible_device_uuid("GPU-bbbb3", UUIDS) == UUIDS[2]  # CUDA takes a unique UUID prefix
    with pytest.raises(ValueError, match="matches 2 of this node's GPUs"):
        visible_device_uuid("GPU-bbbb", UUIDS)
    with pytest.raises(ValueError, match="NVML sees 3 GPUs"):
        visible_device_uuid("7", UUIDS)
    with pytest.raises(ValueError, match="CUDA device 1 does not exist"):
        visible_device_uuid("0", UUIDS, index=1)


def test_the_trainers_handle_for_this_gpu_is_found_whatever_the_prefix():
    handles = {"aaaa1111-0000": "from trainer rank 0", "BBBB2222-0000": "from trainer rank 1"}
    assert handle_for_gpu(handles, "GPU-bbbb2222-0000") == "from trainer rank 1"
    with pytest.raises(RuntimeError, match="no weight handle made on this engine's GPU GPU-bbbb3333"):
        handle_for_gpu(handles, UUIDS[2])
