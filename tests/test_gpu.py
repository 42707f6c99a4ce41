"""The doctor's checks as GPU tests (`pytest -m gpu`): the machine against the pinned image, the memory shares,
and the smoke test on dummy Qwen3-4B/8B engines (and one GRPO step). Skipped, with the reason, where neither
the driver (nvidia-smi) nor torch sees a GPU, so the default test command stays green on CPU machines; a GPU
whose driver torch cannot use fails here rather than skipping."""

from __future__ import annotations

from pathlib import Path

import pytest

from doctor import checks as doctor
from doctor import smoke
from doctor.smoke import FAIL, PASS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not doctor.read_machine().has_gpu,
        reason="needs a CUDA device: run on a GPU machine with `pytest -m gpu`",
    ),
]


@pytest.fixture(scope="module")
def machine() -> doctor.Machine:
    return doctor.read_machine()


def test_gpus_driver_and_cuda_runtime_meet_the_pinned_image(machine):
    checks = [
        doctor.check_driver(machine.driver, machine.cuda_error),
        doctor.check_cuda(machine.cuda_error, machine.driver_gpus),
        doctor.check_gpus(machine.devices),
        doctor.check_cuda_runtime(machine.cuda_runtime),
    ]
    assert [c for c in checks if c.status == FAIL] == []


def test_flash_attn_2_is_there_for_rl():
    check = doctor.check_flash_attn(doctor.flash_attn_state(), rl=True)
    assert check.status == PASS, f"{check.figures}: {check.advice}"


def test_free_memory_holds_the_planned_shares_of_the_default_models(machine, tmp_path: Path):
    checks = doctor.memory_rows(machine.devices[0], smoke.build_model_folders(tmp_path))
    assert [c for c in checks if c.status == FAIL] == []


def test_co_located_dummy_qwen3_engines_run_a2r_and_throughput(tmp_path: Path):
    smoke.build_model_folders(tmp_path)
    a2r, throughput = smoke.smoke_a2r_and_throughput(tmp_path)
    assert a2r.status == PASS, f"{a2r.figures}: {a2r.advice}"
    assert throughput.status == PASS, f"{throughput.figures}: {throughput.advice}"


def test_one_grpo_step_on_a_random_0_6b_model(tmp_path: Path):
    check = smoke.smoke_grpo(tmp_path)
    assert check.status == PASS, f"{check.figures}: {check.advice}"
