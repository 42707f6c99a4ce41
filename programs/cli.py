"""What every entry point that starts engines shares: its flags, the profile, the offline model, the engine plan,
signal handling and output that stays whole in a pipe.

Each entry point has one shape, `main(argv) -> parse_args(argv) -> run(args)`, run through `run_main`: a
polite kill (SIGTERM) takes the Ctrl-C path, so engines stop and finished records stay, and a run its opening
checks refuse (`refusing`) ends in one error line and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from engine.gpu import probe_gpu
from engine.launch import known_context, server_info
from engine.layout import EngineConfig, Engines, plan
from programs.core.confidence import STREAM_INTERVAL
from programs.core.config import METHOD_FIELDS, RunConfig, SamplingConfig
from programs.core.flags import add_dataclass_args, dataclass_from_args
from programs.offline.model import OfflineModels, offline_models
from programs.profile import OFFLINE, PROFILES, Profile, choose_profile, default_models

# soft_wrap: rich never breaks a printed line itself. Piped output (CI, logs, tests) otherwise wraps at 80
# columns, cutting paths and messages mid-word. emoji off: `chain:x:5` is a dataset name, not ❌. Text that did
# not come from the project (names, paths, questions, replies, errors quoting them) is printed through `escape`
# or as `Text`, never read as markup.
console = Console(soft_wrap=True, emoji=False)

ROLES = ("explorer", "synthesizer")
INCREMENTAL_STREAMING = "--incremental-streaming-output"  # SGLang streams deltas, not all so far
RUN_FLAGS_NOT_ON_THE_COMMAND_LINE = (
    "n",
    "explorer",
    "synthesizer",
    "explorer_model",
    "synthesizer_model",
    "extra",
    "probe_prefix",
)


def show(table: Table) -> None:
    """Print a table whole: piped or redirected, rich assumes 80 columns and would squeeze its cells."""
    if not console.is_terminal:
        wide = Measurement.get(console, console.options.update_width(1_000), table).maximum
        console.width = max(console.width, wide)
    console.print(table)


def add_engine_args(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    group = parser.add_argument_group("engines")
    add_dataclass_args(group, EngineConfig, skip=skip)
    group.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        help="defaults for models, problem sets and budgets (default: offline with no GPU and no model named, "
        "else paper)",
    )
    if "one_model" in skip:
        return
    group.add_argument(
        "--one-model",
        action="store_true",
        help="serve both roles from the explorer's engine (symmetric A2R; offline: the small model alone)",
    )


def add_run_args(parser: argparse.ArgumentParser, skip: tuple[str, ...] = (), methods: bool = False) -> None:
    """Sampling (both roles), per-role token budgets and the A2R run's own flags, from their dataclasses;
    with `methods`, the synthesis methods' too (`--method`, `--syntheses`, `--rounds`, `--subset`), for entry
    points whose synthesis stage runs them (`Pipeline.run`)."""
    group = parser.add_argument_group("sampling and run")
    add_dataclass_args(group, SamplingConfig, skip=("max_tokens", "ignore_eos"))
    for role in ROLES:
        if f"{role}_max_tokens" not in skip:
            group.add_argument(
                f"--{role}-max-tokens", type=int, help=f"{role} token budget (default: the profile's)"
            )
    unused = () if methods else METHOD_FIELDS
    add_dataclass_args(group, RunConfig, skip=RUN_FLAGS_NOT_ON_THE_COMMAND_LINE + skip + unused)


def check_positive(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """Refuse a count flag below 1, naming it."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")


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
    engines = plan_here(config, device)
    return streamed_for_online(engines) if getattr(args, "online_confidence", None) is not None else engines


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


# Flags an entry point that runs the explorer alone (`explorer_engines`) leaves out: nothing would act on them.
EXPLORER_ONLY_SKIP = ("synthesizer_model", "synthesizer_url", "gpu_shares", "one_model")


def explorer_engines(args: argparse.Namespace) -> tuple[Engines, Profile]:
    """One engine serving the explorer model alone (the profile's explorer; the tiny model offline)."""
    profile, device = profile_for(args)
    planned = plan_engines(args, profile, device, build_offline_models(profile, args))
    model = planned.explorer.model or None  # None: a running server at --explorer-url
    config = dataclass_from_args(
        EngineConfig, args, device=device, explorer_model=model, synthesizer_model=model
    )
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
        probe_prefix=profile.probe_prefix,
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


def default_output(dataset: str | None, n: int, kind: str = "", question: str | None = None) -> Path:
    """`runs/[<kind>-]<name>-n<N>`: the name is a shipped or generated set's own, a local file's stem with a
    hash of its full path (two `test.jsonl` in different folders must not share a run folder), or, for one
    question, `question` with a hash of its text."""
    if question is not None:
        name = f"question-{short_hash(question)}"
    else:
        path = Path(dataset or "")
        name = f"{path.stem}-{short_hash(str(path.resolve()))}" if path.is_file() else path.stem
    return Path("runs") / "-".join(filter(None, [kind, name, f"n{n}"]))


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """A polite kill (SIGTERM) takes the Ctrl-C path: engines stop and finished records stay."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Refused(Exception):
    """A run refused before it starts anything (its arguments, data or records will not do)."""


@contextlib.contextmanager
def refusing(*errors: type[Exception]) -> Iterator[None]:
    """Around the checks that open an entry point's `run`: any of `errors` refuses the run, which `run_main`
    answers with the error's one line and exit status 2 (so every entry point refuses alike)."""
    try:
        yield
    except errors as exc:
        raise Refused(str(exc)) from exc


def run_main(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run an entry point's `run(args)` with SIGTERM handled as Ctrl-C; its exit status (2 for a run
    `refusing` refused, after its one line)."""
    with sigterm_as_ctrl_c():
        try:
            return run(args)
        except Refused as exc:
            print_error(exc)
            return 2


def stopped(exc: BaseException, kept: str) -> int:
    """Say why a run stopped early and what it `kept`; its exit status: 130 for Ctrl-C or SIGTERM, else 1."""
    if isinstance(exc, KeyboardInterrupt):
        console.print(f"[yellow]interrupted:[/] {escape(kept)}; rerun to resume")
        return 130
    console.print(f"[red]error:[/] {escape(str(exc))}\n{escape(kept)}")
    return 1


def print_error(exc: BaseException | str) -> None:
    """The one line a refused run prints: its message, which may quote a user's name or path, as text."""
    console.print(f"[red]error:[/] {escape(str(exc))}")


def log_frontend_warnings(log_dir: Path) -> None:
    """Send Python warnings to `log_dir/frontend.log`. SGLang's frontend reports every request that fails
    as a warning with its traceback: when the engines stop under a run that was interrupted, that is dozens
    of lines per request in flight, and the user is better served by the one line the run prints."""
    log_dir.mkdir(parents=True, exist_ok=True)
    logging.captureWarnings(True)
    logger = logging.getLogger("py.warnings")
    logger.handlers = [logging.FileHandler(log_dir / "frontend.log")]
    logger.propagate = False


def exit_with(code: int) -> NoReturn:
    """Leave the process with `code`. After an interrupt or an engine failure SGLang's frontend threads may
    still wait on engines that are gone (non-daemon threads in `Queue.get`), and a normal exit would wait
    for them forever; records are already on disk and engines stopped, so leave without waiting."""
    if code in (0, 2):
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
