"""Argument groups every entry point shares (engines, sampling, output), built from the config dataclasses."""

from __future__ import annotations

import argparse
import contextlib
import signal
from collections.abc import Iterator
from typing import TypeVar

from rich.console import Console

from engine.layout import EngineConfig, Engines, plan
from programs.core.config import QWEN3_THINKING
from programs.core.flags import add_dataclass_args, dataclass_from_args
from programs.offline import task as synthetic

T = TypeVar("T")


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser.add_argument_group("engines"), EngineConfig)


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling (both roles; Qwen3 thinking-mode defaults)")
    group.add_argument(
        "--temperature", type=float, default=QWEN3_THINKING["temperature"], help="sampling temperature"
    )
    group.add_argument("--top-p", type=float, default=QWEN3_THINKING["top_p"], help="nucleus sampling mass")
    group.add_argument(
        "--top-k", type=int, default=QWEN3_THINKING["top_k"], help="sample from the k likeliest tokens"
    )
    group.add_argument("--explorer-max-tokens", type=int, help="token budget per path (default: by device)")
    group.add_argument(
        "--synthesizer-max-tokens", type=int, help="synthesizer token budget (default: by device)"
    )
    group.add_argument("--no-thinking", action="store_true", help="render chat prompts with thinking off")
    group.add_argument("--seed", type=int, default=0, help="seeds every path and the reference shuffle")


def detect_device(requested: str | None) -> str:
    if requested:
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def gpu_count(device: str) -> int:
    if device != "cuda":
        return 0
    import torch

    return torch.cuda.device_count()


def offline(args: argparse.Namespace) -> bool:
    """No GPU and no model named: the CPU serves the offline tiny model, which knows the synthetic task
    alone, so that task is then the default problem set too."""
    return detect_device(args.device) == "cpu" and not (args.explorer_model or args.explorer_url)


def plan_engines(args: argparse.Namespace, console: Console) -> tuple[Engines, str]:
    """Device, models and layout from the engine flags; with no GPU and no model, the offline tiny model."""
    device = detect_device(args.device)
    config = dataclass_from_args(EngineConfig, args, device=device)
    if offline(args):
        from programs.offline.model import tiny_model_path

        path = str(tiny_model_path())
        console.print(
            f"[bold yellow]No GPU: running on the CPU with the project's offline tiny model ({path}).[/] "
            f"It was trained here on small arithmetic (`--dataset {synthetic.NAME}`); on other problems its "
            "answers show the pipeline working, not accuracy."
        )
        config.explorer_model = path
        config.synthesizer_model = config.synthesizer_model or path
    return plan(config, device=device, gpus=gpu_count(device)), device


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """A polite kill (SIGTERM) takes the Ctrl-C path: engines stop and finished records stay."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
