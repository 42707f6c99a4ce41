"""`python -m doctor`: its environment checks as pure functions on literal machines, the memory
checks on the public plan, its tables, and the command itself on this CPU machine. The smoke test it runs is
tested in test_smoke.py."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from doctor import checks as doctor
from doctor import smoke
from doctor.checks import Device
from doctor.smoke import FAIL, PASS, SKIP, WARN, Check
from engine.layout import Engines
from engine.sizing import GIB, MIN_KV_TOKENS
from engine.spec import EngineSpec

REPO = Path(__file__).resolve().parent.parent
H100 = Device("NVIDIA H100 80GB HBM3", (9, 0), 79 * GIB, 80 * GIB)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the command runs the real checks")
def test_on_a_cpu_machine_it_says_it_needs_a_gpu_lists_its_checks_and_exits_0(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-m", "doctor", "--rl", "--output", str(tmp_path / "d")],
        cwd=REPO,  # as a user types it, in the checkout under test
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "needs a GPU" in done.stdout
    for shown in (
        "580.65.06",
        "python -m programs.a2r",
        "python -m benchmarks.throughput",
        "python -m rl.train",
    ):
        assert shown in done.stdout
    assert not (tmp_path / "d").exists(), "a CPU machine must not start building models or runs"


def test_version_numbers_are_compared_as_numbers_and_junk_is_refused():
    assert doctor.version_tuple("580.65.06") == (580, 65, 6)
    assert doctor.version_tuple("580.105.08") > doctor.version_tuple("580.65.06")
    with pytest.raises(ValueError, match="'N/A'"):
        doctor.version_tuple("N/A")


@pytest.mark.parametrize(
    ("driver", "cuda_error", "status"),
    [
        ("575.57.08", "RuntimeError: The NVIDIA driver on your system is too old", FAIL),
        ("575.57.08", None, WARN),  # forward compatibility: CUDA 13 runs on it, so the run may go on
        ("580.65.05", None, WARN),
        ("580.65.06", None, PASS),
        ("590.44.01", None, PASS),
        (None, None, WARN),
    ],
)
def test_the_driver_must_run_cuda_13_and_fails_only_when_torch_cannot(driver, cuda_error, status):
    check = doctor.check_driver(driver, cuda_error)
    assert check.status == status
    if driver and status != PASS:
        assert "580.65.06" in check.advice and "CUDA 13" in check.advice


def test_a_driver_too_old_for_torch_is_a_gpu_machine_that_fails_not_one_without_a_gpu(tmp_path):
    # What the driver lists and torch cannot use (is_available() is False there): the doctor must not say
    # "no GPU" and exit 0, and nothing after the failure runs.
    old = doctor.Machine([], "550.54.15", "13.0", driver_gpus=8, cuda_error="driver too old (found 12040)")
    assert old.has_gpu and not doctor.Machine(driver="550.54.15").has_gpu
    checks = doctor.run_doctor(old, tmp_path, rl=False)
    status = {c.name: c.status for c in checks}
    assert status["driver"] == status["CUDA init"] == FAIL and "GPUs" not in status
    assert "driver too old (found 12040)" in next(c.figures for c in checks if c.name == "CUDA init")
    assert status[smoke.A2R] == status[smoke.THROUGHPUT] == SKIP


def test_cuda_is_probed_in_a_child_process_that_names_why_it_fails():
    devices, error = doctor.probe_cuda()  # this machine has no GPU: torch says why, in the child
    assert devices == [] and "NVIDIA driver" in error
    assert not torch.cuda.is_initialized()  # nothing initialised in this process


def test_gpus_below_compute_capability_7_5_are_named():
    assert doctor.check_gpus([]).status == FAIL
    assert doctor.check_gpus([H100]).status == PASS
    v100 = Device("Tesla V100-SXM2-32GB", (7, 0), 31 * GIB, 32 * GIB)
    check = doctor.check_gpus([H100, v100])
    assert check.status == FAIL and "Tesla V100-SXM2-32GB" in check.advice and "H100" not in check.advice


def test_the_cuda_runtime_is_the_images():
    assert doctor.check_cuda_runtime("13.0").status == PASS
    assert doctor.check_cuda_runtime("12.8").status == WARN
    assert doctor.check_cuda_runtime(None).status == FAIL


@pytest.mark.parametrize(
    ("present", "state"),
    [
        ({"flash_attn", "flash_attn.bert_padding"}, "fa2"),
        ({"flash_attn", "flash_attn.cute"}, "fa4-only"),
        (set(), "missing"),
    ],
)
def test_flash_attn_state_tells_flash_attn_2_from_sglangs_flash_attn_4(monkeypatch, present, state):
    def import_module(name):
        if name not in present:
            raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib, "import_module", import_module)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name in present else None)
    assert doctor.flash_attn_state() == state


def test_flash_attn_4_alone_fails_rl_and_only_warns_without_it():
    assert doctor.check_flash_attn("fa2", rl=True).status == PASS
    check = doctor.check_flash_attn("fa4-only", rl=True)
    assert check.status == FAIL and "flash-attn-4" in check.figures and "flash-attn 2" in check.advice
    assert doctor.check_flash_attn("fa4-only", rl=False).status == WARN
    assert doctor.check_flash_attn("missing", rl=False).status == WARN


def co_located(explorer: float, synthesizer_of_rest: float) -> Engines:
    return Engines(
        EngineSpec("Qwen/Qwen3-4B", mem_fraction_static=explorer),
        EngineSpec("Qwen/Qwen3-8B", port=30001, mem_fraction_static=synthesizer_of_rest),
        layout="co-located",
        sequential=True,
    )


def test_each_co_located_share_is_taken_from_what_the_engines_before_it_left():
    shares = doctor.launch_shares(co_located(0.40, 0.75))
    assert [role for role, _ in shares] == ["explorer", "synthesizer"]
    assert [round(share, 6) for _, share in shares] == [0.40, 0.45]
    split = Engines(EngineSpec("a"), EngineSpec("b", base_gpu_id=1), layout="split")
    with pytest.raises(ValueError, match="not a co-located plan"):
        doctor.launch_shares(split)


def test_memory_on_80_gib_passes_and_on_24_gib_names_what_does_not_fit():
    sizes = doctor.gpu_model_shapes()
    assert [c.status for c in doctor.memory_checks(co_located(0.40, 0.75), 79 * GIB, sizes)] == [PASS, PASS]
    explorer, synthesizer = doctor.memory_checks(co_located(0.40, 0.75), 24 * GIB, sizes)
    # 0.40 x 24 GiB = 9.6 GiB holds the 4B's 7.5 GiB but not a 40,960-token context of KV; 0.45 x 24 GiB
    # = 10.8 GiB does not hold the 8B's 15.3 GiB.
    assert explorer.status == WARN and "40,960" in explorer.advice
    assert synthesizer.status == FAIL and "15.3 GiB" in synthesizer.figures


def test_free_needed_is_the_least_memory_at_which_every_engine_passes():
    engines, sizes = co_located(0.40, 0.75), doctor.gpu_model_shapes()
    needed = doctor.free_needed(engines, sizes)
    assert {c.status for c in doctor.memory_checks(engines, needed, sizes)} == {PASS}
    assert PASS != doctor.memory_checks(engines, needed - 2**20, sizes)[1].status


def test_the_memory_check_reads_the_shares_of_the_public_plan():
    engines = doctor.default_plan({role: model for role, (model, _) in smoke.GPU_MODELS.items()})
    assert (engines.explorer.model, engines.synthesizer.model) == ("Qwen/Qwen3-4B", "Qwen/Qwen3-8B")
    shares = doctor.launch_shares(engines)
    assert shares[0][1] == engines.explorer.mem_fraction_static and sum(s for _, s in shares) < 1


def test_memory_is_planned_on_the_model_folders_as_a_run_plans_it(tiny_model, tmp_path):
    folders = {
        role: smoke.model_folder(name, tiny_model, tmp_path) for role, (_, name) in smoke.GPU_MODELS.items()
    }
    assert [c.status for c in doctor.memory_rows(H100, folders)] == [PASS, PASS]
    small = Device("NVIDIA A10G", (8, 6), 16 * GIB, 24 * GIB)  # less than the two models' weights
    (refused,) = doctor.memory_rows(small, folders)
    assert refused.status == FAIL and "16.0 GiB free" in refused.figures and refused.advice


def test_the_tables_have_a_row_per_check():
    checks = [
        Check("driver", PASS, "590.44.01 >= 580.65.06"),
        Check(smoke.A2R, SKIP, "", "fix first: GPUs"),
    ]
    table = doctor.checks_table(checks)
    assert table.row_count == 2 and list(table.columns[3].cells) == ["", "fix first: GPUs"]
    rows = doctor.planned_checks(Path("F"), rl=False)
    names = [name for name, _ in rows]
    assert names[:6] == ["driver", "CUDA init", "GPUs", "CUDA runtime", "flash-attn (RL)", "memory"]
    assert names[-2:] == [smoke.A2R, smoke.THROUGHPUT] and doctor.plan_table(rows).row_count == len(rows)
    assert smoke.GRPO in [name for name, _ in doctor.planned_checks(Path("F"), rl=True)]


def test_the_memory_check_wants_room_for_the_models_longest_sequence():
    shapes = doctor.gpu_model_shapes()
    assert [shape.context for shape in shapes.values()] == [40960, 40960]  # the shipped configs' values
    shape = shapes["Qwen/Qwen3-4B"]
    assert doctor.full_context(shape) == 40960
    assert doctor.full_context(replace(shape, context=None)) == MIN_KV_TOKENS
