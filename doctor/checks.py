"""The doctor's checks of this machine against what the pinned SGLang image needs, the smoke test after them,
and the doctor's verdict (`run_doctor`); `python -m doctor` runs them (doctor/__main__.py).

The smoke test (the project's own commands on random-weight Qwen3-4B/8B engines) is `doctor.smoke`. On a
machine with no CUDA device the command lists what it would check and exits 0. `tests/test_gpu.py` runs the
same checks under `pytest -m gpu`.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from doctor.smoke import (
    A2R,
    FAIL,
    GPU_MODELS,
    GRPO,
    PASS,
    SKIP,
    THROUGHPUT,
    TOKENIZER_COMMAND,
    WARN,
    Check,
    build_model_folders,
    load_config,
    smoke_a2r_and_throughput,
    smoke_commands,
    smoke_grpo,
)
from engine.gpu import GpuInfo
from engine.layout import EngineConfig, Engines, plan
from engine.sizing import GIB, MIN_KV_TOKENS, ModelShape, read_shape

# NVIDIA's CUDA 13.0 release notes, "CUDA Toolkit and Corresponding Driver Versions" (Linux x86_64,
# CUDA 13.0 GA: >= 580.65.06): https://docs.nvidia.com/cuda/archive/13.0.0/cuda-toolkit-release-notes/
MIN_DRIVER_CUDA13 = "580.65.06"
# The same release drops Maxwell, Pascal and Volta: CUDA 13 builds run on compute capability 7.5 and up.
MIN_COMPUTE_CAPABILITY = (7, 5)
IMAGE = "lmsysorg/sglang:v0.5.23"
IMAGE_CUDA_MAJOR = 13


@dataclass(frozen=True)
class Device:
    name: str
    capability: tuple[int, int]
    free_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class Machine:
    """The GPUs as the driver sees them (nvidia-smi) and as torch sees them (in a child process)."""

    devices: list[Device] = field(default_factory=list)  # torch's, with CUDA_VISIBLE_DEVICES applied
    driver: str | None = None  # nvidia-smi's driver version; None when nvidia-smi is absent
    cuda_runtime: str | None = None  # torch.version.cuda; None for a CPU build of torch
    driver_gpus: int = 0  # GPUs nvidia-smi lists (the driver's, whatever torch makes of them)
    cuda_error: str | None = None  # why torch could not initialise CUDA, if it could not

    @property
    def has_gpu(self) -> bool:
        return bool(self.driver_gpus or self.devices or self.cuda_error)


def version_tuple(text: str) -> tuple[int, ...]:
    """'580.65.06' -> (580, 65, 6); anything else is refused, naming it."""
    try:
        return tuple(int(part) for part in text.strip().split("."))
    except ValueError:
        raise ValueError(f"not a dotted version number: {text!r}") from None


# torch's view, from a child process: CUDA initialised here would hold a context (about 0.5 GB) on every GPU
# through the smoke run's engines (engine/gpu.py probes the same way).
CUDA_PROBE = (
    "import json, torch; torch.cuda.init(); print(json.dumps([[torch.cuda.get_device_name(i), "
    "list(torch.cuda.get_device_capability(i)), *torch.cuda.mem_get_info(i)] "
    "for i in range(torch.cuda.device_count())]))"
)
PROBE_TIMEOUT_S = 120.0


def probe_cuda(python: str = sys.executable) -> tuple[list[Device], str | None]:
    """torch's CUDA devices, or why torch cannot initialise CUDA (a driver too old says so here)."""
    try:
        done = subprocess.run(
            [python, "-c", CUDA_PROBE], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return [], f"torch.cuda.init() did not return within {PROBE_TIMEOUT_S:g} s"
    if done.returncode != 0:
        return [], (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    return [Device(name, tuple(cap), free, total) for name, cap, free, total in rows], None


def driver_gpus() -> tuple[str | None, int]:
    """The driver version and how many GPUs it drives, from nvidia-smi (no CUDA involved, so a driver too old
    for this torch still answers); (None, 0) without nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return None, 0
    query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    lines = subprocess.run(query, capture_output=True, text=True, check=False).stdout.split()
    return (lines[0] if lines else None), len(lines)


def read_machine() -> Machine:
    import torch

    driver, count = driver_gpus()
    if count == 0 and not torch.cuda.is_available():  # no driver GPU and none torch can use: no child needed
        return Machine(driver=driver, cuda_runtime=torch.version.cuda)
    devices, error = probe_cuda()
    return Machine(devices, driver, torch.version.cuda, count, error)


def check_gpus(devices: list[Device]) -> Check:
    if not devices:
        return Check(
            "GPUs", FAIL, "none visible to torch", "check CUDA_VISIBLE_DEVICES and the container's --gpus"
        )
    figures = ", ".join(
        f"{d.name} (sm {d.capability[0]}.{d.capability[1]}, {d.free_bytes / GIB:.1f} of {d.total_bytes / GIB:.1f} GiB free)"
        for d in devices
    )
    old = [d.name for d in devices if d.capability < MIN_COMPUTE_CAPABILITY]
    if old:
        minimum = ".".join(map(str, MIN_COMPUTE_CAPABILITY))
        return Check("GPUs", FAIL, figures, f"CUDA 13 needs compute capability {minimum}+: {', '.join(old)}")
    return Check("GPUs", PASS, figures)


def check_driver(driver: str | None, cuda_error: str | None = None) -> Check:
    """The driver against CUDA 13's minimum. Below it, CUDA 13 may still run through the image's forward-
    compatibility libraries (datacenter GPUs): that is a warning while torch initialises CUDA, and a failure
    once it cannot."""
    need = MIN_DRIVER_CUDA13
    if driver is None:
        return Check("driver", WARN, "unknown (no nvidia-smi)", f"{IMAGE} needs driver >= {need} (CUDA 13)")
    if version_tuple(driver) < version_tuple(need):
        advice = f"{IMAGE} is CUDA {IMAGE_CUDA_MAJOR}: upgrade the driver to >= {need}"
        if cuda_error:
            return Check("driver", FAIL, f"{driver} < {need}; torch cannot initialise CUDA", advice)
        figures = f"{driver} < {need}; torch runs CUDA through forward compatibility"
        return Check("driver", WARN, figures, advice)
    return Check("driver", PASS, f"{driver} >= {need}")


def check_cuda(cuda_error: str | None, driver_gpus: int) -> Check:
    """Whether torch can initialise CUDA at all: the one failure that stops everything after it."""
    if cuda_error:
        seen = f"the driver lists {driver_gpus} GPU(s) but " if driver_gpus else ""
        return Check("CUDA init", FAIL, f"{seen}torch.cuda.init() fails: {cuda_error}", "see the driver row")
    return Check("CUDA init", PASS, "torch initialises CUDA")


def check_cuda_runtime(cuda_runtime: str | None) -> Check:
    if cuda_runtime is None:
        return Check("CUDA runtime", FAIL, "torch has no CUDA (a CPU build)", f"use {IMAGE} or a CUDA torch")
    if version_tuple(cuda_runtime)[0] != IMAGE_CUDA_MAJOR:
        advice = f"{IMAGE} runs CUDA {IMAGE_CUDA_MAJOR}; the driver check above assumes it"
        return Check("CUDA runtime", WARN, f"torch built for CUDA {cuda_runtime}", advice)
    return Check("CUDA runtime", PASS, f"torch built for CUDA {cuda_runtime}")


def flash_attn_state() -> str:
    """'fa2' when OpenRLHF's import works, 'fa4-only' for SGLang's flash-attn-4 (only `cute/`), else 'missing'."""
    try:
        importlib.import_module("flash_attn.bert_padding")
        return "fa2"
    except ImportError:
        pass
    try:
        return "fa4-only" if importlib.util.find_spec("flash_attn.cute") is not None else "missing"
    except ImportError:  # no flash_attn at all, or one whose package does not import
        return "missing"


def check_flash_attn(state: str, rl: bool) -> Check:
    """OpenRLHF imports `flash_attn.bert_padding` at module top; only RL needs it, so without --rl it warns."""
    if state == "fa2":
        return Check("flash-attn (RL)", PASS, "flash_attn.bert_padding imports")
    figures = {
        "fa4-only": "flash-attn-4 only (SGLang's, `cute/`): no flash_attn.bert_padding",
        "missing": "not installed",
    }[state]
    # `pip install flash-attn` fails against torch 2.14 (C++17); the project's build patches it (tests check
    # that this names the command rl/preflight.py's FLASH_ATTN_BUILD holds).
    advice = "OpenRLHF needs flash-attn 2 built with C++20 for torch 2.14: python -m rl.flash_attn_build"
    return Check("flash-attn (RL)", FAIL if rl else WARN, figures, advice)


def gpu_model_shapes() -> dict[str, ModelShape]:
    """The default GPU models' shapes, by hub id, from the shipped configs."""
    return {model: ModelShape.from_config(model, load_config(name)) for model, name in GPU_MODELS.values()}


def default_plan(models: dict[str, str], gpu: GpuInfo | None = None) -> Engines:
    """`models` (role -> hub id or folder) co-located on one GPU, from the public planning path, sized for
    `gpu` as a real run sizes them: the smoke test's layout, and the tight case (on more GPUs a default run
    gives each engine a GPU of its own). Raises ValueError when the pair cannot share the GPU."""
    config = EngineConfig(explorer_model=models["explorer"], synthesizer_model=models["synthesizer"])
    return plan(config, device="cuda", gpus=1, gpu=gpu)


def memory_rows(device: Device, folders: dict[str, Path]) -> list[Check]:
    """The memory checks for GPU 0, planned on the model folders (their config.json, no download)."""
    gpu = GpuInfo(device.free_bytes, device.total_bytes, device.capability)
    try:
        engines = default_plan({role: str(path) for role, path in folders.items()}, gpu)
    except ValueError as exc:
        return [Check("memory", FAIL, f"{device.free_bytes / GIB:.1f} GiB free on GPU 0", str(exc))]
    shapes = {str(path): read_shape(str(path)) for path in folders.values()}
    return memory_checks(engines, device.free_bytes, shapes)


def launch_shares(engines: Engines) -> list[tuple[str, float]]:
    """(role, share of the memory free before any engine starts) per co-located engine, in launch order.

    SGLang's --mem-fraction-static is a share of the memory free when that engine starts, so an engine
    started earlier on the same GPU has already taken its part."""
    roles = {id(engines.synthesizer): "synthesizer", id(engines.explorer): "explorer"}
    left, shares = 1.0, []
    for spec in engines.to_launch:
        if spec.mem_fraction_static is None:
            raise ValueError(
                f"the {roles[id(spec)]} engine has no mem_fraction_static: not a co-located plan"
            )
        shares.append((roles[id(spec)], left * spec.mem_fraction_static))
        left -= shares[-1][1]
    return shares


def full_context(shape: ModelShape) -> int:
    """The sequence an engine should hold whole: the model's longest, else (a config that does not say) the
    least the planner sizes KV for."""
    return shape.context or MIN_KV_TOKENS


def memory_checks(engines: Engines, free_bytes: int, shapes: dict[str, ModelShape]) -> list[Check]:
    """Each co-located engine's share of `free_bytes` against its weights; a share that leaves no KV room for
    one full-context sequence warns."""
    checks = []
    for role, share_of_free in launch_shares(engines):
        model = getattr(engines, role).model
        size, share = shapes[model], int(share_of_free * free_bytes)
        label = Path(model).name
        kv_tokens = max(0, share - size.weight_bytes) // size.kv_bytes_per_token
        figures = (
            f"{share_of_free:.2f} x {free_bytes / GIB:.1f} GiB free = {share / GIB:.1f} GiB; {label} weights "
            f"{size.weight_bytes / GIB:.1f} GiB; KV room {kv_tokens:,} tokens"
        )
        if share <= size.weight_bytes:
            advice = "the weights do not fit: free GPU memory or change --gpu-shares"
            checks.append(Check(f"memory: {role}", FAIL, figures, advice))
        elif kv_tokens < full_context(size):
            advice = f"less KV than one {full_context(size):,}-token context: long paths will queue"
            checks.append(Check(f"memory: {role}", WARN, figures, advice))
        else:
            checks.append(Check(f"memory: {role}", PASS, figures))
    return checks


def free_needed(engines: Engines, shapes: dict[str, ModelShape]) -> int:
    """The free GPU memory at which every co-located engine passes: weights plus one full context of KV."""
    return max(
        int((size.weight_bytes + full_context(size) * size.kv_bytes_per_token) / share) + 1
        for role, share in launch_shares(engines)
        for size in [shapes[getattr(engines, role).model]]
    )


def environment_checks(machine: Machine, rl: bool, folders: dict[str, Path]) -> list[Check]:
    """Everything checked before any engine starts; memory is planned on the model `folders`."""
    checks = [
        check_driver(machine.driver, machine.cuda_error),
        check_cuda(machine.cuda_error, machine.driver_gpus),
        *([] if machine.cuda_error else [check_gpus(machine.devices)]),
        check_cuda_runtime(machine.cuda_runtime),
        check_flash_attn(flash_attn_state(), rl),
    ]
    return checks + (memory_rows(machine.devices[0], folders) if machine.devices else [])


def planned_checks(folder: Path, rl: bool, python: str = "python") -> list[tuple[str, str]]:
    """What a GPU run checks, as (check, what it compares or runs): printed where there is no GPU."""
    capability = ".".join(map(str, MIN_COMPUTE_CAPABILITY))
    engines = default_plan({role: model for role, (model, _) in GPU_MODELS.items()})
    shares = ", ".join(f"{role} {share:.2f}" for role, share in launch_shares(engines))
    needed = free_needed(engines, gpu_model_shapes()) / GIB
    models = " and ".join(model for model, _ in GPU_MODELS.values())
    rows = [
        (
            "driver",
            f"nvidia-smi driver >= {MIN_DRIVER_CUDA13} ({IMAGE} is CUDA {IMAGE_CUDA_MAJOR}); below it a warning "
            "while CUDA still initialises (forward compatibility), else a failure",
        ),
        ("CUDA init", "torch.cuda.init() in a child process (none held here through the smoke run)"),
        ("GPUs", f"torch.cuda devices, compute capability >= {capability}"),
        ("CUDA runtime", f"torch.version.cuda is {IMAGE_CUDA_MAJOR}.x"),
        ("flash-attn (RL)", "flash_attn.bert_padding imports (OpenRLHF needs flash-attn 2)"),
        (
            "memory",
            f"co-located on GPU 0, planned as a run plans them; at the default shares ({shares}) "
            f"{models} hold their weights and one context of KV each with {needed:.1f} GiB free, on less "
            "the plan sizes the shares from the configs or refuses the pair",
        ),
        (
            "model folders",
            f"doctor/gpu_configs/*.json + the tiny tokenizer: {shlex.join([python, *TOKENIZER_COMMAND])}",
        ),
    ]
    rows += [(name, shlex.join(argv)) for name, argv in smoke_commands(folder, rl, python).items()]
    return rows


def checks_table(checks: list[Check]) -> Table:
    table = Table(title="doctor")
    for column in ("check", "result", "figures", "what to do"):
        table.add_column(column)
    styles = {PASS: "green", WARN: "yellow", FAIL: "red", SKIP: "dim"}
    for check in checks:
        table.add_row(check.name, f"[{styles[check.status]}]{check.status}[/]", check.figures, check.advice)
    return table


def plan_table(rows: list[tuple[str, str]]) -> Table:
    table = Table(title="what `python -m doctor` checks on a GPU machine")
    table.add_column("check")
    table.add_column("compares, or runs")
    for name, what in rows:
        table.add_row(name, what)
    return table


def run_doctor(machine: Machine, folder: Path, rl: bool) -> list[Check]:
    """The environment checks, then the smoke test unless one of them failed (flash-attn only gates RL)."""
    checks = environment_checks(machine, rl, build_model_folders(folder))
    blocking = [c.name for c in checks if c.status == FAIL and not c.name.startswith("flash-attn")]
    smoke = [A2R, THROUGHPUT] + ([GRPO] if rl else [])
    if blocking:
        return checks + [Check(name, SKIP, "", f"fix first: {', '.join(blocking)}") for name in smoke]
    checks += smoke_a2r_and_throughput(folder)
    if rl:
        flash = next(c for c in checks if c.name.startswith("flash-attn"))
        checks.append(
            smoke_grpo(folder) if flash.status == PASS else Check(smoke[-1], SKIP, "", "needs flash-attn 2")
        )
    return checks
