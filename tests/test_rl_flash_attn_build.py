"""`python -m rl.flash_attn_build`: the source it builds is patched to C++20 (torch 2.14 refuses C++17) and
leaves SGLang's `flash_attn/cute` alone, and the install command it runs is the one printed here. The
compile itself needs nvcc and a GPU host; the header check that makes it necessary runs here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch.utils.cpp_extension

from doctor import checks
from rl import flash_attn_build as build
from rl import preflight

# The shape of the release's setup.py where it names the standard (nvcc flags and the host compiler's).
SETUP = """nvcc_flags = ["-O3", "-std=c++17", "--use_fast_math"]
compiler_c17_flag = ["-O3", "-std=c++17"]
"""


def fake_sdist(work: Path) -> Path:
    """A source archive laid out as flash-attn's release: setup.py, flash_attn/ with bert_padding and cute/."""
    root = work / "src" / f"flash_attn-{preflight.FLASH_ATTN_VERSION}"
    (root / "flash_attn" / "cute").mkdir(parents=True)
    (root / "setup.py").write_text(SETUP)
    (root / "flash_attn" / "bert_padding.py").write_text("")
    (root / "flash_attn" / "cute" / "interface.py").write_text("")
    with tarfile.open(work / build.SDIST, "w:gz") as archive:
        archive.add(root, arcname=root.name)
    return root


def test_every_cxx17_flag_becomes_cxx20_and_a_setup_without_one_is_refused():
    patched = build.patch_setup(SETUP)
    assert "-std=c++17" not in patched and patched.count("-std=c++20") == 2
    with pytest.raises(ValueError, match=r"no -std=c\+\+17 to patch.*PR #2899"):
        build.patch_setup(patched)


def test_the_command_prepares_the_patched_source_and_prints_the_install_it_runs(tmp_path):
    fake_sdist(tmp_path)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "rl.flash_attn_build",
            "--work",
            str(tmp_path),
            "--no-install",
            "--archs",
            "80;90",
            "--jobs",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    source = tmp_path / f"flash_attn-{preflight.FLASH_ATTN_VERSION}"
    setup = (source / "setup.py").read_text()
    assert "-std=c++17" not in setup and 'nvcc_flags = ["-O3", "-std=c++20"' in setup
    assert not (source / "flash_attn" / "cute").exists(), "it would overwrite SGLang's flash-attn-4"
    assert (source / "flash_attn" / "bert_padding.py").exists()
    install = (
        f"FLASH_ATTENTION_FORCE_BUILD=TRUE FLASH_ATTN_CUDA_ARCHS='80;90' MAX_JOBS=2 {sys.executable} -m pip "
        f"install --no-cache-dir --no-build-isolation --no-deps {source}"
    )
    assert done.stdout.splitlines()[-1] == install


def test_without_jobs_flash_attn_sizes_them_itself_and_hopper_is_the_default():
    assert "MAX_JOBS" not in build.build_env(build.DEFAULT_ARCHS, None)
    assert build.build_env(build.DEFAULT_ARCHS, None)["FLASH_ATTN_CUDA_ARCHS"] == "90"
    assert "--no-build-isolation" in build.download_command(Path("w"))  # its metadata imports torch


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to preprocess torch's headers")
@pytest.mark.parametrize(("standard", "compiles"), [(build.OLD_STD, False), (build.NEW_STD, True)])
def test_torch_headers_refuse_the_releases_standard_and_take_the_patched_one(tmp_path, standard, compiles):
    source = tmp_path / "flash_api.cpp"
    source.write_text("#include <torch/nn/functional.h>\n")  # what flash-attn's flash_api.cpp includes
    includes = [f"-I{d}" for d in torch.utils.cpp_extension.include_paths()]
    done = subprocess.run(
        ["g++", standard, "-E", *includes, str(source), "-o", os.devnull],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (done.returncode == 0) == compiles, done.stderr[-500:]
    if not compiles:
        assert "C++20 or later compatible compiler is required" in done.stderr


def test_the_trainer_and_the_doctor_give_the_same_fix():
    assert preflight.FLASH_ATTN_BUILD in preflight.FLASH_ATTN_FIX
    assert preflight.FLASH_ATTN_BUILD in checks.check_flash_attn("fa4-only", rl=True).advice
