"""Build flash-attn 2 for OpenRLHF against SGLang's torch 2.14, which the released source cannot do unpatched.

    python -m rl.flash_attn_build [--archs "90"] [--jobs N] [--work DIR] [--no-install]

Why: flash-attn 2.8.3.post2's setup.py compiles with `-std=c++17`, and torch 2.14's `ATen/ATen.h` stops any
standard below C++20 with an `#error`, so `pip install flash-attn` fails after minutes of nvcc work. Upstream
fixed it in flash-attention PR #2899 (C++20 for torch >= 2.13), after that release. This does what #2899 does
to the release's own source: download the sdist, switch its C++ standard to C++20, and build it against the
installed torch (`--no-build-isolation`). It also drops the sdist's `flash_attn/cute` (the FA4-era files the
release ships), which would otherwise overwrite SGLang's flash-attn-4 in the same `flash_attn` package.

The build sizes itself: without `--jobs` flash-attn runs min(cores / 2, free GB / 9) compiler jobs, the
memory its setup.py measures per job; forcing more gets nvcc killed on ordinary hosts. `--archs` is the
deployment's CUDA architectures (each one adds a full compile): "90" for H100/H200, "80;90" to add A100.
`--no-install` stops after the patched source is ready and prints the install command (what a CPU can do).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as `python rl/flash_attn_build.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rl.preflight import FLASH_ATTN_VERSION, flash_attn_problem  # noqa: E402

SDIST = f"flash_attn-{FLASH_ATTN_VERSION}.tar.gz"
OLD_STD, NEW_STD = "-std=c++17", "-std=c++20"  # torch >= 2.13 needs C++20 (flash-attention PR #2899)
DEFAULT_ARCHS = "90"  # Hopper, where the paper's pair trains; the release's own default is "80;90;100;120"
SHADOWED = Path("flash_attn") / "cute"  # flash-attn-4's package directory, owned by SGLang's flash-attn-4


def download_command(work: Path, python: str = sys.executable) -> list[str]:
    """Fetch the release's source only. --no-build-isolation: pip reads its metadata by running setup.py,
    which imports torch (the installed one; in an isolated build environment there is none)."""
    return [python, "-m", "pip", "download", "--no-build-isolation", "--no-binary", ":all:", "--no-deps",
            f"flash-attn=={FLASH_ATTN_VERSION}", "-d", str(work)]  # fmt: skip


def install_command(source: Path, python: str = sys.executable) -> list[str]:
    """Build and install the patched source against the installed torch, touching no other package."""
    return [
        python,
        "-m",
        "pip",
        "install",
        "--no-cache-dir",
        "--no-build-isolation",
        "--no-deps",
        str(source),
    ]


def build_env(archs: str, jobs: int | None) -> dict[str, str]:
    """The variables flash-attn's setup.py reads: always compile (its prebuilt wheels are for other torches),
    for `archs`, with `jobs` compiler jobs when given (else setup.py sizes them from the host's memory)."""
    env = {"FLASH_ATTENTION_FORCE_BUILD": "TRUE", "FLASH_ATTN_CUDA_ARCHS": archs}
    if jobs is not None:
        env["MAX_JOBS"] = str(jobs)
    return env


def patch_setup(text: str) -> str:
    """setup.py with every C++17 flag made C++20; refused when there is none to patch (a release that
    already builds with C++20 needs no patch, and a silent no-op would hide that the build is unchanged)."""
    if OLD_STD not in text:
        raise ValueError(
            f"flash-attn {FLASH_ATTN_VERSION}'s setup.py has no {OLD_STD} to patch: this source may already "
            "build with C++20 (flash-attention PR #2899); install it unpatched"
        )
    return text.replace(OLD_STD, NEW_STD)


def prepare(sdist: Path, work: Path) -> Path:
    """Unpack `sdist` into `work`, patch its setup.py, drop its `flash_attn/cute`; the source folder."""
    with tarfile.open(sdist) as archive:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12
        archive.extractall(work, **safe)
    source = work / f"flash_attn-{FLASH_ATTN_VERSION}"
    setup = source / "setup.py"
    setup.write_text(patch_setup(setup.read_text()))
    shutil.rmtree(source / SHADOWED, ignore_errors=True)
    return source


def shell(command: list[str], env: dict[str, str]) -> str:
    """`command` with `env` as one line a shell runs."""
    return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), shlex.join(command)])


def run(command: list[str], env: dict[str, str]) -> None:
    print(f"+ {shell(command, env)}", flush=True)
    subprocess.run(command, env={**os.environ, **env}, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rl.flash_attn_build", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--archs", default=DEFAULT_ARCHS, help='CUDA architectures, ";"-separated (e.g. "80;90")'
    )
    parser.add_argument("--jobs", type=int, help="compiler jobs (default: flash-attn sizes them to the host)")
    parser.add_argument("--work", type=Path, help="folder for the source (default: a temporary one)")
    parser.add_argument(
        "--no-install", action="store_true", help="prepare the source, print the install command"
    )
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    work = args.work or Path(tempfile.mkdtemp(prefix="flash-attn-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / SDIST).exists():  # a rerun reuses the download
        run(download_command(work), {})
    try:
        source = prepare(work / SDIST, work)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"patched {source / 'setup.py'}: {OLD_STD} -> {NEW_STD}; removed {source / SHADOWED}")
    env, install = build_env(args.archs, args.jobs), install_command(source)
    if args.no_install:
        print(shell(install, env))
        return 0
    run(install, env)
    importlib.invalidate_caches()  # the finders cached site-packages before the install
    problem = flash_attn_problem()
    if problem:
        print(f"error: built, but {problem}", file=sys.stderr)
        return 1
    print(
        f"flash-attn {FLASH_ATTN_VERSION} built for CUDA architectures {args.archs}: flash_attn.bert_padding imports"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
