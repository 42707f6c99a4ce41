"""Time to answer on one engine serving both roles: syntheses first (SGLang's priority scheduling, the default
for that layout) against first come, first served (`--no-synthesis-priority`).

    python -m benchmarks.priority                       # CPU: the offline explorer as both roles, 16 problems
    python -m benchmarks.priority --problems 24 --n 8 --in-flight 4

For each setting one CPU engine starts with the offline explorer and the pipeline solves the same problems
with `--in-flight` explored at once, so that fresh explorations are waiting whenever a synthesis is sent.
Reported from the records' own timings: the median and 90th percentile of a problem's time from its synthesis
being sent to its answer (`synthesize_s`), the median time from queued to answered (`total_s`), and the run's
wall time; the ratio of the synthesis medians is taken between two runs on this machine, back to back.
Writes OUTPUT/priority.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from rich.table import Table

from engine.launch import serve
from engine.layout import EngineConfig, plan
from programs.cli import console, show
from programs.core.config import RunConfig, SamplingConfig
from programs.core.records import ProblemRecord
from programs.datasets import load_problems
from programs.engine_handle import EngineHandle
from programs.offline.model import offline_models
from programs.pipeline import Pipeline
from programs.profile import OFFLINE

SETTINGS = {"syntheses first (priority)": True, "first come, first served": False}


def solve(config: EngineConfig, run: RunConfig, problems: list, in_flight: int, log_dir: Path) -> dict:
    engines = plan(config, device="cpu")
    with serve(engines, log_dir):
        handle = EngineHandle.attach(engines.explorer)
        records: list[ProblemRecord] = []
        start = time.perf_counter()
        Pipeline(run, handle, handle).run(problems, records.append, max_in_flight=in_flight)
        wall = time.perf_counter() - start
    failed = [r.error for r in records if r.error]
    if failed:
        raise RuntimeError(f"{len(failed)} problems failed, first: {failed[0]}")
    synthesis = [r.timings["synthesize_s"] for r in records]
    return {
        "synthesis_median_s": float(np.median(synthesis)),
        "synthesis_p90_s": float(np.percentile(synthesis, 90)),
        "total_median_s": float(np.median([r.timings["total_s"] for r in records])),
        "wall_s": wall,
        "problems": len(records),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.priority", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--problems", type=int, default=16, help="chain problems solved per setting")
    parser.add_argument("--n", type=int, default=4, help="explorer paths per problem")
    parser.add_argument("--in-flight", type=int, default=4, help="problems explored at once")
    parser.add_argument("--output", type=Path, default=Path("runs/priority"), help="folder for priority.json")
    args = parser.parse_args(argv)
    if min(args.problems, args.n, args.in_flight) < 1:
        parser.error("--problems, --n and --in-flight must be at least 1")
    model = str(offline_models().explorer)
    run = RunConfig(
        n=args.n,
        explorer=SamplingConfig(OFFLINE.explorer_max_tokens),
        synthesizer=SamplingConfig(OFFLINE.synthesizer_max_tokens),
        explorer_model=model,
        synthesizer_model=model,
    )
    problems = load_problems(f"chain:0:{args.problems}")
    results = {}
    for name, first in SETTINGS.items():
        console.print(f"{name}: {args.problems} problems, N={args.n}, {args.in_flight} explored at once ...")
        config = EngineConfig(explorer_model=model, synthesis_priority=first)
        results[name] = solve(config, run, problems, args.in_flight, args.output / "logs")
    table = Table(
        title=f"time to answer, one CPU engine for both roles, {args.problems} problems, N={args.n}"
    )
    for column in (
        "scheduling",
        "synthesis median (s)",
        "synthesis p90 (s)",
        "problem median (s)",
        "wall (s)",
    ):
        table.add_column(column)
    for name, r in results.items():
        figures = (r["synthesis_median_s"], r["synthesis_p90_s"], r["total_median_s"], r["wall_s"])
        table.add_row(name, *(f"{x:.2f}" for x in figures))
    show(table)
    first, fcfs = (results[name]["synthesis_median_s"] for name in SETTINGS)
    console.print(f"synthesis median, priority / first come first served: {first / fcfs:.2f}")
    args.output.mkdir(parents=True, exist_ok=True)
    summary = {
        "config": {**run.to_dict(), "in_flight": args.in_flight, "problems": args.problems},
        "results": results,
    }
    (args.output / "priority.json").write_text(json.dumps(summary, indent=2) + "\n")
    console.print(f"results: {args.output / 'priority.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
