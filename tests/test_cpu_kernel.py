"""The CPU `sgl_kernel` stand-in's two real operators, on small tensors (loaded by path: it must never be
importable as `sgl_kernel` in the test process, whose sglang may import the real wheel)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from engine.spec import CPU_KERNEL_DIR


@pytest.fixture(scope="module")
def kernel():
    spec = importlib.util.spec_from_file_location(
        "cpu_sgl_kernel", CPU_KERNEL_DIR / "sgl_kernel" / "__init__.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_assign_req_to_token_pool_writes_each_span_in_request_order(kernel):
    table = torch.zeros(3, 6, dtype=torch.int32)
    kernel.assign_req_to_token_pool_cpu(
        torch.tensor([2, 0]),
        table,
        torch.tensor([1, 0]),
        torch.tensor([3, 3]),
        torch.tensor([7, 8, 9, 10, 11]),
        6,
    )
    assert table[2].tolist() == [0, 7, 8, 0, 0, 0]
    assert table[0].tolist() == [9, 10, 11, 0, 0, 0]
    assert table[1].tolist() == [0] * 6


def test_copy_all_layer_kv_cache_moves_rows_in_every_buffer(kernel):
    layers = [torch.arange(12, dtype=torch.float32).view(6, 2) + 100 * i for i in range(2)]
    before = [layer.clone() for layer in layers]
    ptrs = torch.tensor([layer.data_ptr() for layer in layers], dtype=torch.int64)
    strides = torch.tensor([layer.stride(0) * layer.element_size() for layer in layers], dtype=torch.int64)
    # rows 0 -> 1 and 1 -> 4 overlap: row 4 must receive row 1's *old* content
    kernel.copy_all_layer_kv_cache_cpu(ptrs, strides, torch.tensor([1, 4]), torch.tensor([0, 1]))
    for layer, old in zip(layers, before, strict=True):
        assert torch.equal(layer[1], old[0]) and torch.equal(layer[4], old[1])
        assert torch.equal(layer[[0, 2, 3, 5]], old[[0, 2, 3, 5]])


def test_absent_operators_fall_back_and_speculative_ones_refuse(kernel):
    with pytest.raises(AttributeError):
        kernel.convert_weight_packed  # noqa: B018 - SGLang probes this to decide on AMX kernels
    with pytest.raises(NotImplementedError, match="speculative"):
        kernel.verify_tree_greedy_cpu()
