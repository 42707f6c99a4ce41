"""Load on the OpenAI-compatible server against the CLI pipeline, on the same engines and problems.

    python -m benchmarks.load --concurrency 8              # CPU: the offline pair, 64 chain problems, N=4
    python -m benchmarks.load --dataset aime24 --concurrency 32 --n 8

The engines start once. The server (`programs.serve`, in this process) takes every problem as a streaming
`a2r` request from CONCURRENCY clients at once; then, from a flushed prefix cache, the pipeline solves the
same problems with at most CONCURRENCY explored at once. Reported: requests/s, latency p50/p95, time to the
first streamed token, tokens/s per stage (from the engines' own usage counts), and the server's output
tokens/s over the pipeline's: what HTTP, SSE and per-request scheduling cost. OUTPUT/load.json keeps them.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import openai
import uvicorn
from rich.table import Table

from engine.launch import EngineError, serve
from engine.ports import free_port
from programs import cli, planning
from programs.cli import console
from programs.core.records import Problem, ProblemRecord, usage
from programs.datasets import DatasetError, load_problems
from programs.engine_handle import EngineHandle
from programs.pipeline import Pipeline
from programs.serve import Service, build_app


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n")[0])
    run = parser.add_argument_group("run")
    run.add_argument("--n", type=int, default=4, help="explorer paths per problem")
    run.add_argument("--concurrency", type=int, default=8, help="clients sending at once")
    run.add_argument(
        "--dataset", help="shipped name, a .jsonl/.parquet file, or hf:REPO (default: the profile's)"
    )
    run.add_argument("--limit", type=int, default=64, help="first LIMIT problems")
    run.add_argument("--output", type=Path, default=Path("runs/load"), help="folder for load.json and logs")
    cli.add_engine_args(parser, skip=("port",))
    cli.add_run_args(parser, skip=("synthesize",))
    args = parser.parse_args(argv)
    cli.check_positive(parser, args, "n", "concurrency", "limit")
    return args


def through_server(service: Service, problems: list[Problem], concurrency: int) -> dict[str, Any]:
    """Every problem as one streaming request; per request its latency, first-token time and usage."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(build_app(service), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=3600
    )

    def ask(problem: Problem) -> dict[str, Any]:
        start, first = time.perf_counter(), None
        chunks = client.chat.completions.create(
            model="a2r",
            messages=[{"role": "user", "content": problem.problem}],
            stream=True,
            stream_options={"include_usage": True},
        )
        final = None
        for chunk in chunks:
            delta = chunk.choices[0].delta if chunk.choices else None
            if first is None and delta and (delta.content or delta.model_extra.get("reasoning_content")):
                first = time.perf_counter() - start
            final = chunk
        return {
            "latency_s": time.perf_counter() - start,
            "first_token_s": first,
            "usage": final.usage.model_dump(),
        }

    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            replies = list(pool.map(ask, problems))
        wall = time.perf_counter() - start
    finally:
        server.should_exit = True
        thread.join(30)
    explorer = sum(r["usage"]["a2r"]["explorer"]["completion_tokens"] for r in replies)
    synthesizer = sum(r["usage"]["a2r"]["synthesizer"]["completion_tokens"] for r in replies)
    first = [r["first_token_s"] or r["latency_s"] for r in replies]
    return {
        **figures([r["latency_s"] for r in replies], wall, explorer, synthesizer),
        "first_token_p50_s": float(np.percentile(first, 50)),
    }


def through_pipeline(pipeline: Pipeline, problems: list[Problem], concurrency: int) -> dict[str, Any]:
    records: list[ProblemRecord] = []
    start = time.perf_counter()
    pipeline.run(problems, records.append, max_in_flight=concurrency)
    wall = time.perf_counter() - start
    used = usage(records)
    latency = [r.timings["total_s"] for r in records]
    return figures(latency, wall, used.explorer_completion_tokens, used.synthesizer_completion_tokens)


def figures(latency: list[float], wall: float, explorer: int, synthesizer: int) -> dict[str, Any]:
    """Rates over the wall time and latency percentiles, from per-request latencies and stage token counts."""
    return {
        "requests": len(latency),
        "wall_s": wall,
        "requests_per_s": len(latency) / wall,
        "latency_p50_s": float(np.percentile(latency, 50)),
        "latency_p95_s": float(np.percentile(latency, 95)),
        "explorer_tokens_per_s": explorer / wall,
        "synthesizer_tokens_per_s": synthesizer / wall,
        "tokens_per_s": (explorer + synthesizer) / wall,
    }


def table(result: dict[str, Any]) -> Table:
    out = Table(
        title=f"server vs pipeline, {result['problems']} problems, concurrency {result['concurrency']}"
    )
    out.add_column("")
    for mode in ("server", "pipeline"):
        out.add_column(mode, justify="right")
    rows = [
        ("requests / s", "requests_per_s", "{:.3f}"),
        ("latency p50 (s)", "latency_p50_s", "{:.2f}"),
        ("latency p95 (s)", "latency_p95_s", "{:.2f}"),
        ("first token p50 (s)", "first_token_p50_s", "{:.2f}"),
        ("explorer tok/s", "explorer_tokens_per_s", "{:,.0f}"),
        ("synthesizer tok/s", "synthesizer_tokens_per_s", "{:,.0f}"),
        ("tokens / s", "tokens_per_s", "{:,.0f}"),
    ]
    for label, key, fmt in rows:
        out.add_row(
            label, *(fmt.format(result[m][key]) if key in result[m] else "-" for m in ("server", "pipeline"))
        )
    out.add_row("server / pipeline tokens/s", f"{result['server_over_pipeline']:.3f}", "")
    return out


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run, parse_args(argv))


def run(args: argparse.Namespace) -> int:
    with cli.refusing(DatasetError, ValueError):
        profile, device = planning.profile_for(args)
        dataset = args.dataset or profile.datasets[0]
        problems = load_problems(dataset, args.limit)
        engines, config = planning.plan_run(args, profile, device)
    args.output.mkdir(parents=True, exist_ok=True)
    try:
        with serve(engines, args.output / "logs") as running:
            explorer, synthesizer = EngineHandle.attach_roles(running)
            service = Service(config, explorer, synthesizer, max_queue=len(problems))
            console.print(f"server: {len(problems)} streaming requests, {args.concurrency} at once ...")
            server = through_server(service, problems, args.concurrency)
            for handle in {handle.url: handle for handle in (explorer, synthesizer)}.values():
                handle.flush_cache()
            console.print(f"pipeline: the same problems, at most {args.concurrency} explored at once ...")
            pipeline = through_pipeline(Pipeline(config, explorer, synthesizer), problems, args.concurrency)
    except (KeyboardInterrupt, EngineError, RuntimeError) as exc:
        return cli.stopped(exc, "nothing written")
    result = {
        "config": config.to_dict(),
        "dataset": dataset,
        "problems": len(problems),
        "concurrency": args.concurrency,
        "server": server,
        "pipeline": pipeline,
        "server_over_pipeline": server["tokens_per_s"] / pipeline["tokens_per_s"],
    }
    (args.output / "load.json").write_text(json.dumps(result, indent=2) + "\n")
    cli.show(table(result))
    console.print(f"figures: {args.output / 'load.json'}")
    return 0


if __name__ == "__main__":
    cli.exit_with(main())
