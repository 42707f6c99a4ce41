"""A pure-PyTorch stand-in for SGLang's `sgl_kernel` wheel, for a CPU-only SGLang server process.

Why it exists: the published `sgl_kernel` wheel is CUDA-only (importing it fails without `libcuda.so.1`) and
no CPU build is published, yet with `SGLANG_USE_CPU_ENGINE=1` SGLang imports a few CPU operators from it at
module import. This module provides the two the CPU runtime actually calls, implemented with torch, and
import-only placeholders for the speculative-decoding ones. Every other attribute raises AttributeError, so
SGLang's optional `from sgl_kernel import ...` probes fall back to their pure-torch paths. In particular it
does not register `torch.ops.sgl_kernel.convert_weight_packed`: SGLang then reports no AMX support and
every layer runs its `forward_native` path.

Put its parent directory first on PYTHONPATH of the CPU server process only (before sglang is imported).
It must never be on the path of a GPU process, where it would shadow the real kernels.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import NoReturn

import torch

__all__ = [
    "assign_req_to_token_pool_cpu",
    "copy_all_layer_kv_cache_cpu",
    "assign_draft_cache_locs_contiguous_cpu",
    "assign_extend_cache_locs_cpu",
    "build_tree_kernel_efficient_cpu",
    "verify_tree_greedy_cpu",
    "fill_accept_out_cache_loc_cpu",
    "fill_bonus_tokens_cpu",
    "rotate_input_ids_cpu",
]


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """Write newly allocated KV slots into each request's row of the request-to-token table.

    Request r (row `req_pool_indices[r]`) gets the next `end_offset[r] - start_offset[r]` entries of
    `out_cache_loc`, consumed in request order, at columns [start_offset[r], end_offset[r]).
    """
    if req_to_token.shape[1] != pool_len:
        raise ValueError(f"pool_len {pool_len} does not match req_to_token width {req_to_token.shape[1]}")
    spans = list(zip(req_pool_indices.tolist(), start_offset.tolist(), end_offset.tolist(), strict=True))
    needed = sum(end - start for _, start, end in spans)
    if needed > out_cache_loc.numel():
        raise ValueError(f"spans need {needed} cache slots but out_cache_loc holds {out_cache_loc.numel()}")
    consumed = 0
    for row, start, end in spans:
        length = end - start
        req_to_token[row, start:end] = out_cache_loc[consumed : consumed + length].to(req_to_token.dtype)
        consumed += length


def copy_all_layer_kv_cache_cpu(
    data_ptrs: torch.Tensor,
    strides: torch.Tensor,
    tgt_loc: torch.Tensor,
    src_loc: torch.Tensor,
) -> None:
    """Move KV slots in every layer's buffer: row `src_loc[j]` is copied to row `tgt_loc[j]`.

    SGLang hands over raw buffer addresses (`data_ptrs[i]`) and row sizes in bytes (`strides[i]`), as its
    Triton kernel takes them. Each buffer is viewed as bytes up to the highest row touched; all sources
    are read before any target is written, so overlapping moves are safe.
    """
    if tgt_loc.numel() != src_loc.numel():
        raise ValueError(f"tgt_loc has {tgt_loc.numel()} entries but src_loc has {src_loc.numel()}")
    if tgt_loc.numel() == 0:
        return
    tgt = tgt_loc.to(torch.int64)
    src = src_loc.to(torch.int64)
    rows = int(torch.maximum(tgt.max(), src.max()).item()) + 1
    for address, row_bytes in zip(data_ptrs.tolist(), strides.tolist(), strict=True):
        raw = (ctypes.c_uint8 * (rows * row_bytes)).from_address(address)
        buffer = torch.frombuffer(raw, dtype=torch.uint8).view(rows, row_bytes)
        buffer[tgt] = buffer[src]


def _speculative_only(name: str) -> Callable[..., NoReturn]:
    """A placeholder that lets SGLang import `name`; speculative decoding is unsupported on this CPU path."""

    def unsupported(*args: object, **kwargs: object) -> NoReturn:
        raise NotImplementedError(
            f"sgl_kernel.{name} is a placeholder in the project's CPU stand-in; "
            "speculative decoding is not supported on the CPU engine"
        )

    unsupported.__name__ = unsupported.__qualname__ = name
    return unsupported


assign_draft_cache_locs_contiguous_cpu = _speculative_only("assign_draft_cache_locs_contiguous_cpu")
assign_extend_cache_locs_cpu = _speculative_only("assign_extend_cache_locs_cpu")
build_tree_kernel_efficient_cpu = _speculative_only("build_tree_kernel_efficient_cpu")
verify_tree_greedy_cpu = _speculative_only("verify_tree_greedy_cpu")
fill_accept_out_cache_loc_cpu = _speculative_only("fill_accept_out_cache_loc_cpu")
fill_bonus_tokens_cpu = _speculative_only("fill_bonus_tokens_cpu")
rotate_input_ids_cpu = _speculative_only("rotate_input_ids_cpu")


def __getattr__(name: str) -> NoReturn:
    # Anything else is absent, so SGLang's optional imports take their fallback path.
    raise AttributeError(f"module 'sgl_kernel' (CPU stand-in) has no attribute {name!r}")
