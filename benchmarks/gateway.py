"""A2R's explorer on K workers behind SGLang's gateway (`smg`, cache-aware), against one worker alone.

    python -m benchmarks.gateway --workers 2 --n 8 --limit 10
    python -m benchmarks.gateway --workers 2 --n 8 --limit 10 --stop first:2 --json

K CPU explorer workers start (the offline explorer unless `--explorer-model` names another), each on its own
cores where there are enough, else all on the same ones, with the gateway in front. The problems are explored
through it (N paths each, no synthesis: the explorer is the stage that scales out); then one worker alone, on
all the same cores, explores them again. Reported, from the engines' own counts: the requests each worker
served, the explorer's prefix-cache hit ratio, with `--stop` the most requests any worker still ran 5 s after
the run's last stop, and tokens/s through the gateway over one worker's. OUTPUT/gateway.json keeps the figures
and the configuration; each leg's records go to OUTPUT/<leg>.jsonl as they finish. Every run measures anew.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, TimeElapsedColumn
from rich.table import Table

from engine.gateway import counted, serve_gateway, serve_workers, worker_specs
from engine.launch import EngineError, get_json
from engine.spec import EngineSpec
from programs import cli
from programs.cli import console
from programs.core.config import RunConfig, SamplingConfig
from programs.core.records import Problem, ProblemRecord, usage
from programs.datasets import DatasetError, load_problems
from programs.engine_handle import EngineHandle
from programs.offline.model import offline_models
from programs.pipeline import Pipeline
from programs.profile import OFFLINE

AFTER_STOP_S = 5.0  # `running_after_stop` is read this long after the last stop
SAMPLE_EVERY_S = 0.2
progress_console = Console(stderr=True, soft_wrap=True)  # stdout holds the figures alone (`--json`)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gateway", description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="explorer workers behind the gateway")
    parser.add_argument("--n", type=int, default=8, help="explorer paths per problem")
    parser.add_argument(
        "--dataset", default=OFFLINE.datasets[0], help="shipped name or a .jsonl/.parquet file"
    )
    parser.add_argument("--limit", type=int, default=10, help="first LIMIT problems")
    parser.add_argument("--stop", help="stop policy, e.g. first:2 (programs.core.stopping)")
    parser.add_argument("--explorer-model", help="model the workers serve (default: the offline explorer)")
    parser.add_argument(
        "--explorer-max-tokens", type=int, default=OFFLINE.explorer_max_tokens, help="token budget per path"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    parser.add_argument(
        "--output", type=Path, default=Path("runs/gateway"), help="folder for figures and logs"
    )
    args = parser.parse_args(argv)
    cli.check_positive(parser, args, "workers", "n", "limit", "explorer_max_tokens")
    return args


class Loads:
    """Each worker's running requests (`/v1/loads`), sampled in the background with the time of each sample."""

    def __init__(self, urls: list[str]) -> None:
        self.urls, self.samples = urls, []
        self._done = threading.Event()

    def running(self) -> list[int]:
        return [sum(x["num_running_reqs"] for x in get_json(f"{url}/v1/loads")["loads"]) for url in self.urls]

    @contextmanager
    def sampling(self) -> Iterator[Loads]:
        def sample() -> None:
            while not self._done.wait(SAMPLE_EVERY_S):
                self.samples.append((time.perf_counter(), self.running()))

        thread = threading.Thread(target=sample, name="loads", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._done.set()
            thread.join()

    def after(self, moment: float) -> int:
        """The most requests any worker ran in the first sample taken at or after `moment` (if none was yet, a
        reading now: the sampler may lag on a loaded machine)."""
        return max(next((running for at, running in self.samples if at >= moment), None) or self.running())


def explore(leg: str, url: str, problems: list[Problem], config: RunConfig, output: Path) -> dict[str, Any]:
    """Explore `problems` through the engine at `url`, each record appended to OUTPUT/<leg>.jsonl as it ends;
    the records, the wall time and when the run began (perf_counter)."""
    handle = EngineHandle.attach(EngineSpec(config.explorer_model, device="cpu", url=url))
    records: list[ProblemRecord] = []
    with (
        (output / f"{leg}.jsonl").open("w") as sink,
        Progress(*Progress.get_default_columns(), TimeElapsedColumn(), console=progress_console) as bar,
    ):
        task = bar.add_task(leg, total=len(problems))

        def append(record: ProblemRecord) -> None:
            sink.write(json.dumps(record.to_json()) + "\n")
            sink.flush()
            records.append(record)
            bar.advance(task)

        began = time.perf_counter()
        Pipeline(config, handle, None).run(problems, append)
    return {"records": records, "wall_s": time.perf_counter() - began, "began": began}


def last_stop(run: dict[str, Any]) -> float | None:
    """When the run's last stop fired (perf_counter), from each path's record: its problem's exploration start
    plus the stop's offset (a few milliseconds early: the exploration starts after its prompt is built)."""
    stops = [
        run["began"] + r.timings["explore_started_at"] + p.stopped_s
        for r in run["records"]
        if not r.error
        for p in r.paths
        if p.stopped_s is not None
    ]
    return max(stops, default=None)


def tokens_per_s(run: dict[str, Any]) -> float:
    return usage([r for r in run["records"] if not r.error]).explorer_completion_tokens / run["wall_s"]


def through_gateway(
    specs: list[EngineSpec], problems: list[Problem], config: RunConfig, output: Path
) -> dict[str, Any]:
    urls = [spec.base_url for spec in specs]
    with serve_workers(specs, output / "logs"), serve_gateway(urls, output / "logs") as gateway:
        before = [counted(url) for url in urls]
        loads = Loads(urls)
        with loads.sampling():
            run = explore("gateway", gateway, problems, config, output)
            stopped = last_stop(run)
            if stopped is not None:
                time.sleep(max(0.0, stopped + AFTER_STOP_S + SAMPLE_EVERY_S - time.perf_counter()))
        after = None if stopped is None else loads.after(stopped + AFTER_STOP_S)
        served = {url: counted(url) - b for url, b in zip(urls, before, strict=True)}
    solved = [r for r in run["records"] if not r.error]
    return {
        "problems": len(solved),
        "failed": len(run["records"]) - len(solved),
        "workers_served": sum(count > 0 for count in served.values()),
        "requests_per_worker": served,
        "cache_hit": usage(solved).prefix_cache_hit_ratio,
        "running_after_stop": after,
        "tokens_per_s": tokens_per_s(run),
        "wall_s": run["wall_s"],
    }


def one_worker(spec: EngineSpec, problems: list[Problem], config: RunConfig, output: Path) -> dict[str, Any]:
    with serve_workers([spec], output / "logs" / "alone"):
        run = explore("one-worker", spec.base_url, problems, config, output)
    return {"tokens_per_s": tokens_per_s(run), "wall_s": run["wall_s"]}


def table(figures: dict[str, Any]) -> Table:
    out = Table(
        title=f"explorer through the gateway: {figures['workers']} workers on cores {figures['cores']}"
    )
    for column in (
        "problems",
        "workers served",
        "requests per worker",
        "cache hit",
        "running 5 s after stop",
        "tokens/s gateway",
        "tokens/s one worker",
        "ratio",
    ):
        out.add_column(column, justify="right")
    after = figures["running_after_stop"]
    out.add_row(
        f"{figures['problems']} ({figures['failed']} failed)",
        str(figures["workers_served"]),
        " / ".join(map(str, figures["requests_per_worker"].values())),
        f"{figures['cache_hit']:.1%}",
        "no stop" if after is None else str(after),
        f"{figures['tokens_per_s']:.0f}",
        f"{figures['one_worker']['tokens_per_s']:.0f}",
        f"{figures['speedup']:.2f}x",
    )
    return out


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run, parse_args(argv))


def run(args: argparse.Namespace) -> int:
    with cli.refusing(DatasetError, ValueError):
        problems = load_problems(args.dataset, args.limit)
        model = args.explorer_model or str(offline_models().explorer)
        sampling = SamplingConfig(args.explorer_max_tokens)
        config = RunConfig(args.n, sampling, sampling, model, model, synthesize=False, stop=args.stop)
    args.output.mkdir(parents=True, exist_ok=True)
    cores = sorted(os.sched_getaffinity(0))
    try:
        figures = {
            "config": config.to_dict(),
            "dataset": args.dataset,
            "workers": args.workers,
            "cores": cores,
        }
        figures |= through_gateway(worker_specs(model, args.workers, cores), problems, config, args.output)
        figures["one_worker"] = one_worker(worker_specs(model, 1, cores)[0], problems, config, args.output)
    except (KeyboardInterrupt, EngineError, RuntimeError) as exc:
        return cli.stopped(exc, f"records so far in {args.output}")
    figures["speedup"] = figures["tokens_per_s"] / figures["one_worker"]["tokens_per_s"]
    (args.output / "gateway.json").write_text(json.dumps(figures, indent=2) + "\n")
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        cli.show(table(figures))
        console.print(f"figures: {args.output / 'gateway.json'}")
    return 0


if __name__ == "__main__":
    cli.exit_with(main())
