"""A run planned before anything starts: the device and profile, the offline pair, the engines the flags ask
for (fitted to this machine's GPUs), each role's model and token budget, and the RunConfig that records them.

Entry points call `profile_for` and `plan_run` (or `explorer_engines`) after their cheap checks pass: planning
may build the offline pair (minutes, once) or ask a running server what it streams.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from rich.markup import escape

from engine.gpu import probe_gpu
from engine.launch import known_context, server_info
from engine.layout import EngineConfig, Engines, plan
from programs.cli import ROLES, console
from programs.core.confidence import STREAM_INTERVAL
from programs.core.config import RunConfig
from programs.core.flags import dataclass_from_args
from programs.offline.model import OfflineModels, offline_models
from programs.profile import OFFLINE, Profile, choose_profile, default_models

INCREMENTAL_STREAMING = "--incremental-streaming-output"  # SGLang streams deltas, not all so far


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


def plan_here(config: EngineConfig, device: str) -> Engines:
    """`config` planned for this machine: its GPU count and, with a GPU, GPU 0's free memory (co-located shares)
    and compute capability (whether deterministic mode keeps the prefix cache)."""
    gpus = gpu_count(device)
    return plan(config, device=device, gpus=gpus, gpu=probe_gpu() if gpus else None)


def profile_for(args: argparse.Namespace) -> tuple[Profile, str]:
    """The run's profile and device, decided once from `--profile`, the device and whether a model was named."""
    device = detect_device(args.device)
    named = bool(args.explorer_model or args.explorer_url)
    return choose_profile(args.profile, device, named), device


def build_offline_models(profile: Profile, args: argparse.Namespace) -> OfflineModels | None:
    """The offline profile's pair when no model is named: built on first use (minutes), then cached."""
    if profile is not OFFLINE or args.explorer_model or args.explorer_url:
        return None
    models = offline_models()
    console.print(
        f"[bold yellow]No GPU: running on the CPU with the project's offline models "
        f"({escape(str(models.explorer.parent))}).[/] "
        f"They were trained here on small arithmetic (`--dataset {OFFLINE.datasets[0]}`); on other problems "
        "their answers show the pipeline working, not accuracy."
    )
    return models


def plan_engines(
    args: argparse.Namespace, profile: Profile, device: str, offline: OfflineModels | None
) -> Engines:
    """The engines the flags ask for, with the profile's (or the offline kit's) models wherever none is named."""
    engines = plan_here(engine_config(args, profile, device, offline), device)
    return streamed_for_online(engines) if getattr(args, "online_confidence", None) is not None else engines


def engine_config(
    args: argparse.Namespace, profile: Profile, device: str, offline: OfflineModels | None
) -> EngineConfig:
    """The engine flags, each role's model filled in where none is named (none when the explorer runs at
    --explorer-url)."""
    config = dataclass_from_args(EngineConfig, args, device=device)
    one_model = getattr(args, "one_model", False)
    if one_model and (config.synthesizer_model or config.synthesizer_url):
        raise ValueError(
            "--one-model serves the synthesizer from the explorer's engine: drop --synthesizer-*"
        )
    if not config.explorer_url:
        if offline is not None:
            explorer, synthesizer = str(offline.explorer), str(offline.synthesizer)
        else:
            explorer, synthesizer = default_models(profile, device, config.explorer_model)
        config.explorer_model = explorer
        config.synthesizer_model = config.synthesizer_model or (explorer if one_model else synthesizer)
    return config


def streamed_for_online(engines: Engines) -> Engines:
    """The engines, the explorer (if launched here) streaming each path as deltas, a chunk every
    STREAM_INTERVAL tokens; a running explorer that streams whole chunks is named in a warning.

    The online confidence stop streams every path with its top-k log-probabilities. By default SGLang repeats
    all of them so far in every chunk: about 0.5 GB of JSON per 4096-token path, 30 GB per 32k-token one
    (`python -m benchmarks.streaming` measures it)."""
    if not engines.explorer.launched:
        try:
            incremental = server_info(engines.explorer).get("incremental_streaming_output")
        except OSError:  # not answering: starting the run says so, with the reason
            return engines
        if not incremental:
            console.print(
                f"[yellow]warning:[/] the explorer at {engines.explorer.base_url} was started without "
                "--incremental-streaming-output: every streamed chunk repeats the path's log-probabilities so "
                "far, so the online confidence stop slows as the square of the path length. Restart it with "
                "that flag."
            )
        return engines
    interval = ("--stream-interval", str(STREAM_INTERVAL), INCREMENTAL_STREAMING)
    explorer = replace(engines.explorer, extra_args=(*engines.explorer.extra_args, *interval))
    same = engines.synthesizer is engines.explorer
    return replace(engines, explorer=explorer, synthesizer=explorer if same else engines.synthesizer)


def explorer_engines(args: argparse.Namespace) -> tuple[Engines, Profile]:
    """One engine serving the explorer model alone (the profile's explorer; the tiny model offline)."""
    profile, device = profile_for(args)
    config = engine_config(args, profile, device, build_offline_models(profile, args))
    config.synthesizer_model = config.explorer_model
    return plan_here(config, device), profile


def plan_run(
    args: argparse.Namespace, profile: Profile, device: str, **overrides: Any
) -> tuple[Engines, RunConfig]:
    """The engines and the run the shared flags describe (building the offline pair if they need it, so
    call it once the cheap checks have passed); `overrides` fix what an entry point decides itself."""
    engines = plan_engines(args, profile, device, build_offline_models(profile, args))
    fitted = fit_budgets(args, budgets(profile), engines)
    extra = {"server_args": flags} if (flags := server_args(engines)) else {}
    config = RunConfig.from_args(
        args,
        budgets=fitted,
        probe=profile.probe,
        **role_models(engines),
        extra=extra,
        **overrides,
    )
    return engines, config


def server_args(engines: Engines) -> dict[str, list[str]]:
    """The SGLang flags beyond the plan's own each launched role's engine runs with (given, streaming,
    priority), for the run's configuration."""
    return {
        role: list(spec.extra_args)
        for role in ROLES
        if (spec := getattr(engines, role)).launched and spec.extra_args
    }


def role_models(engines: Engines) -> dict[str, str]:
    """The model (or, for a server we did not start, its URL) each role is served by, for RunConfig."""
    return {
        "explorer_model": engines.explorer.model or engines.explorer.base_url,
        "synthesizer_model": engines.synthesizer.model or engines.synthesizer.base_url,
    }


def budgets(profile: Profile) -> tuple[int, int]:
    return profile.explorer_max_tokens, profile.synthesizer_max_tokens


def fit_budgets(args: argparse.Namespace, defaults: tuple[int, int], engines: Engines) -> tuple[int, int]:
    """The profile's (explorer, synthesizer) budgets made to fit each role's context where it is known before
    anything starts (`engine.launch.known_context`): a default over half the context is capped to half, the
    other half left for the prompt, with a line saying so; a budget given by flag that leaves no room for a
    prompt is refused (ValueError) naming the flag. Otherwise every problem would fail, one by one."""
    fitted = []
    for role, spec, default in zip(ROLES, (engines.explorer, engines.synthesizer), defaults, strict=True):
        context, given = known_context(spec), getattr(args, f"{role}_max_tokens", None)
        if context is not None and given is not None and given >= context:
            raise ValueError(
                f"--{role}-max-tokens {given} leaves no room for a prompt in the {role}'s context "
                f"({context} tokens): give less"
            )
        if context is not None and given is None and default > context // 2:
            console.print(
                f"[yellow]{role} budget capped to {context // 2} tokens (the profile's {default} overflow its "
                f"{context}-token context); --{role}-max-tokens sets it"
            )
            default = context // 2
        fitted.append(default)
    return fitted[0], fitted[1]
