"""The check a GPU user runs first: this machine against what the pinned SGLang image needs, then a smoke test.

    python -m doctor          # GPUs, driver, CUDA, flash-attn, memory shares; then A2R and throughput
    python -m doctor --rl     # ... and one GRPO step on a random 0.6B-sized model

The checks are `doctor.checks`, the smoke test `doctor.smoke`. On a machine with no CUDA device it lists what
it would check and exits 0. Results go to runs/doctor/<time>/doctor.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from doctor.checks import checks_table, plan_table, planned_checks, read_machine, run_doctor
from doctor.smoke import FAIL
from programs.cli import console, show


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rl", action="store_true", help="also run one GRPO step on a random 0.6B-sized model"
    )
    parser.add_argument(
        "--output", type=Path, help="folder for models, runs and logs (default: runs/doctor/<time>)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = args.output or Path("runs") / "doctor" / time.strftime("%Y%m%d-%H%M%S")
    machine = read_machine()  # the driver's GPUs count: torch sees none when the driver is too old for it
    if not machine.has_gpu:
        console.print(
            "[yellow]No CUDA device: `python -m doctor` needs a GPU.[/] On a GPU machine it checks:"
        )
        show(plan_table(planned_checks(folder, args.rl)))
        return 0
    checks = run_doctor(machine, folder, args.rl)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "doctor.json").write_text(json.dumps([asdict(c) for c in checks], indent=2) + "\n")
    show(checks_table(checks))
    console.print(f"results: {folder / 'doctor.json'}")
    return 1 if any(c.status == FAIL for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
