"""What probing running paths for their answers costs the explorer, against the same paths unprobed.

    python -m benchmarks.probes --load-format dummy                  # CPU: the offline explorer, random weights
    python -m benchmarks.probes --explorer-model Qwen/Qwen3-4B --load-format dummy   # GPU

One engine serves the explorer. Every path decodes exactly `--path-tokens` tokens (EOS ignored), so both
modes do the same path work, and is probed every `--probe-every` tokens while it thinks (with random weights a
path may close its thought by chance, and is then no longer probed). The two modes, unprobed and probed,
explore the same problems in interleaved rounds, each from a flushed prefix cache, each mode first in every
other round; the probed run's throughput over the unprobed one's,
counting the paths' own tokens only, is taken within each round and reported as the median and min-max over
rounds. Token counts are the engine's (`meta_info`): per probe, the prompt tokens it was not served from the
radix cache plus those it generated, and the uncached prompt of the chunk that continued the path
(`PathRecord.probe_tokens`). Writes OUTPUT/probes.json and the paths of each mode and round (OUTPUT/MODE.jsonl).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from statistics import median
from typing import Any

from rich.table import Table

from engine.launch import EngineError, serve
from programs import cli, planning
from programs.chunked import Chunking
from programs.cli import console
from programs.core.config import SamplingConfig
from programs.core.records import PathRecord, Problem
from programs.datasets import DatasetError, load_problems
from programs.engine_handle import EngineHandle
from programs.explorer import run_explorer
from programs.profile import Profile

MODES = ("unprobed", "probed")
PATH_TOKENS, PROBE_EVERY = 1024, 500  # the target: a probe every 500 tokens of 1024-token paths


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probes", description=__doc__.split("\n")[0])
    run = parser.add_argument_group("run")
    run.add_argument("--n", type=int, default=8, help="paths per problem")
    run.add_argument("--path-tokens", type=int, default=PATH_TOKENS, help="tokens every path decodes")
    run.add_argument("--probe-every", type=int, default=PROBE_EVERY, help="tokens between probes")
    run.add_argument("--problems", type=int, default=8, help="problems per mode and round")
    run.add_argument("--max-in-flight", type=int, default=4, help="problems explored at once")
    run.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the two modes")
    run.add_argument("--dataset", help="problems to explore (default: the profile's throughput set)")
    run.add_argument("--output", type=Path, default=Path("runs/probes"), help="folder for the results")
    cli.add_engine_args(parser, skip=cli.EXPLORER_ONLY_SKIP)
    args = parser.parse_args(argv)
    cli.check_positive(parser, args, "n", "path_tokens", "probe_every", "problems", "max_in_flight", "rounds")
    if args.probe_every >= args.path_tokens:
        parser.error(f"--probe-every {args.probe_every} makes no probe in paths of {args.path_tokens} tokens")
    return args


def explore(
    explorer: EngineHandle, problems: list[Problem], args: argparse.Namespace, chunking: Chunking
) -> tuple[list[PathRecord], float]:
    """Every problem's N fixed-length paths, `--max-in-flight` problems at once: the paths and the wall time."""
    sampling = SamplingConfig(args.path_tokens, ignore_eos=True)

    def solve(problem: Problem) -> list[PathRecord]:
        prompt = explorer.prompt(problem.problem, args.path_tokens, True, problem.id)
        seeds = list(range(args.n))
        return run_explorer(explorer.backend, prompt, sampling, seeds, chunking=chunking)

    start = time.perf_counter()
    with ThreadPoolExecutor(args.max_in_flight) as pool:
        paths = [path for paths in pool.map(solve, problems) for path in paths]
    return paths, time.perf_counter() - start


def figures(paths: list[PathRecord], wall_s: float) -> dict[str, Any]:
    """One mode's figures in one round, from the engine's token counts."""
    tokens = sum(p.completion_tokens for p in paths)
    probes = sum(len(p.probes) for p in paths)
    probe_tokens = sum(p.probe_tokens for p in paths)
    return {
        "paths": len(paths),
        "path_tokens": tokens,
        "wall_s": wall_s,
        "path_tokens_per_s": tokens / wall_s,
        "probes": probes,
        "probe_tokens": probe_tokens,
        "tokens_per_probe": probe_tokens / probes if probes else None,
        "answered_probes": sum(answer is not None for p in paths for _, answer in p.probes),
    }


def measure(
    explorer: EngineHandle, problems: list[Problem], args: argparse.Namespace, profile: Profile
) -> list[dict]:
    """The two modes in interleaved rounds; each round's figures per mode, each mode's paths in OUTPUT."""
    probed = Chunking(probe_every=args.probe_every, form=profile.probe)
    chunkings = {"unprobed": Chunking(), "probed": probed}
    explore(explorer, problems[:1], args, chunkings["probed"])  # the engine's first batches, untimed
    rounds = []
    sinks = {mode: (args.output / f"{mode}.jsonl").open("w", encoding="utf-8") for mode in MODES}
    try:
        for index in range(args.rounds):
            round_figures = {}
            for mode in MODES if index % 2 == 0 else MODES[::-1]:  # each goes first in every other round
                explorer.flush_cache()
                console.print(f"round {index + 1}/{args.rounds}: {mode}, {len(problems)} problems ...")
                paths, wall_s = explore(explorer, problems, args, chunkings[mode])
                sinks[mode].writelines(json.dumps({"round": index, **p.to_json()}) + "\n" for p in paths)
                round_figures[mode] = figures(paths, wall_s)
            rounds.append(round_figures)
    finally:
        for sink in sinks.values():
            sink.close()
    return rounds


def summary(rounds: list[dict], args: argparse.Namespace) -> dict[str, Any]:
    """Per round, probed over unprobed path tokens/s; their median and range, and the probes' cost."""
    ratios = [r["probed"]["path_tokens_per_s"] / r["unprobed"]["path_tokens_per_s"] for r in rounds]
    probed = [r["probed"] for r in rounds]
    probes = sum(f["probes"] for f in probed)
    return {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rounds": rounds,
        "throughput_ratio": {
            "median": median(ratios),
            "min": min(ratios),
            "max": max(ratios),
            "rounds": ratios,
        },
        "cost_percent": 100 * (1 - median(ratios)),
        "probes": probes,
        "tokens_per_probe": sum(f["probe_tokens"] for f in probed) / probes if probes else None,
        "probe_tokens_share": sum(f["probe_tokens"] for f in probed) / sum(f["path_tokens"] for f in probed),
    }


def table(result: dict[str, Any]) -> Table:
    config = result["config"]
    table = Table(
        title=f"probing cost: {config['n']} paths of {config['path_tokens']} tokens, a probe every "
        f"{config['probe_every']} ({len(result['rounds'])} rounds)"
    )
    for column in ("mode", "path tokens/s (median)", "probes", "tokens per probe"):
        table.add_column(column, justify="right" if column != "mode" else "left")
    for mode in MODES:
        per_round = [r[mode] for r in result["rounds"]]
        per_probe = sum(f["probe_tokens"] for f in per_round) / max(1, sum(f["probes"] for f in per_round))
        table.add_row(
            mode,
            f"{median(f['path_tokens_per_s'] for f in per_round):,.0f}",
            str(sum(f["probes"] for f in per_round)),
            f"{per_probe:.1f}" if mode == "probed" else "-",
        )
    return table


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run, parse_args(argv))


def run(args: argparse.Namespace) -> int:
    with cli.refusing(DatasetError, OSError, ValueError):
        engines, profile = planning.explorer_engines(args)
        problems = load_problems(args.dataset or profile.throughput_dataset, args.problems)
        args.output.mkdir(parents=True, exist_ok=True)
    try:
        cli.log_frontend_warnings(args.output / "logs")
        with serve(engines, args.output / "logs") as running:
            rounds = measure(EngineHandle.attach(running.explorer), problems, args, profile)
    except (KeyboardInterrupt, EngineError, RuntimeError) as exc:
        return cli.stopped(exc, f"the paths measured so far are in {args.output}")
    result = {**summary(rounds, args), "engine": asdict(engines.explorer)}
    (args.output / "probes.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    cli.show(table(result))
    ratio, per_probe = result["throughput_ratio"], result["tokens_per_probe"]
    console.print(
        f"probed/unprobed path tokens/s: {ratio['median']:.3f} (rounds {ratio['min']:.3f}-{ratio['max']:.3f}): "
        f"probing costs {result['cost_percent']:.1f}% of explorer throughput; "
        + (
            f"{per_probe:.1f} engine-computed tokens per probe"
            if per_probe is not None
            else "no probe was made (every path had closed its thought first), so this is what chunking alone "
            "costs"
        )
    )
    console.print(f"results: {args.output / 'probes.json'}")
    return 0


if __name__ == "__main__":
    cli.exit_with(main())
