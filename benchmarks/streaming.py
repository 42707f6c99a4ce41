"""What the online confidence stop's streaming costs, from an explorer that sends whole chunks (SGLang's
default) and from one that sends deltas (`--incremental-streaming-output`, how the online stop launches it).

    python -m benchmarks.streaming                          # CPU: the offline explorer, 2 paths of 4096 tokens
    python -m benchmarks.streaming --n 4 --max-tokens 8192  # more and longer paths

For each server mode one CPU engine starts with the offline explorer (a chunk every STREAM_INTERVAL tokens, as
the online stop launches it) and explores one prompt with N paths, streamed as the online stop streams them:
top-20 log-probabilities, each chunk read for its confidences. The stop is armed but never fires (its warm-up
is all N paths) and EOS is ignored, so both modes decode the same tokens to the budget; the engine's
`completion_tokens` counts them. The client meters what it really received and did: the JSON bytes of every
chunk, the CPU time its path threads spent splitting the stream into lines and parsing and reassembling the
chunks (thread CPU, so waiting on the socket counts nothing), and the wall time, hence tokens/s. Whole chunks
repeat every log-probability so far, so their bytes grow with the square of the path length; deltas keep
them linear. The ratios (whole over deltas) are taken within one run. A path longer than the offline
model's 4096-token context gets a longer `--context-length` (its RoPE extends; the figures are about bytes,
not answers). Writes OUTPUT/streaming.json with its configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.table import Table

from engine.endpoint import PathEndpoint, StreamedReply
from engine.launch import EngineError, serve, server_info
from engine.layout import Engines
from engine.ports import free_port
from engine.spec import EngineSpec
from programs import cli
from programs.cli import console
from programs.core.confidence import STREAM_INTERVAL, TOP_K, OnlineStop, window_for
from programs.core.config import SamplingConfig
from programs.engine_handle import EngineHandle
from programs.explorer import run_explorer
from programs.offline.model import offline_models
from programs.planning import INCREMENTAL_STREAMING

PROMPT = "Count from one onwards, one number per line."
PROMPT_ROOM = 64  # context kept for the prompt (a dozen tokens) beyond the paths' budget
LONGER_CONTEXT_ENV = {"SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN": "1"}
WARMUP_TOKENS = 16  # one short untimed exploration per engine first: its first batches
MODES = {"cumulative": (), "incremental": (INCREMENTAL_STREAMING,)}  # "before" and "after"
MODE_NAMES = {
    "cumulative": "whole chunks (SGLang's default)",
    "incremental": f"deltas ({INCREMENTAL_STREAMING})",
}


@dataclass
class Meter:
    """What the client's path threads received and spent reading streamed chunks, all paths together."""

    chunks: int = 0
    json_bytes: int = 0
    split_cpu_s: float = 0.0  # requests' iter_lines: the stream cut into lines
    parse_cpu_s: float = 0.0  # json.loads and StreamedReply.add
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, chunks: int = 0, json_bytes: int = 0, split: float = 0.0, parse: float = 0.0) -> None:
        with self.lock:
            self.chunks += chunks
            self.json_bytes += json_bytes
            self.split_cpu_s += split
            self.parse_cpu_s += parse


class MeteredEndpoint(PathEndpoint):
    """The explorer's own endpoint, its stream reading metered in each path's thread CPU time."""

    def __init__(self, base: PathEndpoint, meter: Meter) -> None:
        super().__init__(base.base_url, base.dp_ranks.dp_size, base.api_key, base.incremental)
        self.meter = meter

    def stream_lines(self, response: Any) -> Iterator[bytes]:
        lines = super().stream_lines(response)
        while True:
            start = time.thread_time()
            line = next(lines, None)
            self.meter.add(split=time.thread_time() - start)
            if line is None:
                return
            yield line

    def read_chunk(self, reply: StreamedReply, data: bytes) -> tuple[str, dict[str, Any]]:
        start = time.thread_time()
        read = super().read_chunk(reply, data)
        self.meter.add(chunks=1, json_bytes=len(data), parse=time.thread_time() - start)
        return read


def explore(handle: EngineHandle, sampling: SamplingConfig, n: int) -> tuple[Meter, list[int], float]:
    """One streamed exploration of N paths as the online stop runs it (never stopping): the meter, each
    path's tokens (the engine's count) and the wall seconds."""
    meter = Meter()
    backend = MeteredEndpoint(handle.backend, meter)
    # A warm-up of N paths sets the threshold only as the last path ends: nothing is stopped, all is read.
    online = OnlineStop(keep=0.5, warmup=n, window=window_for(sampling.max_tokens))
    start = time.perf_counter()
    paths = run_explorer(backend, PROMPT, sampling, list(range(n)), confidence=True, online=online)
    return meter, [p.completion_tokens for p in paths], time.perf_counter() - start


def engine_spec(model: str, mode: str, max_tokens: int, model_context: int) -> EngineSpec:
    """The CPU explorer for one server mode, with the context the paths need."""
    longer = max_tokens + PROMPT_ROOM > model_context
    return EngineSpec(
        model,
        device="cpu",
        port=free_port(),
        context_length=max_tokens + PROMPT_ROOM if longer else None,
        env=dict(LONGER_CONTEXT_ENV) if longer else {},
        extra_args=("--stream-interval", str(STREAM_INTERVAL), *MODES[mode]),
    )


def measure(spec: EngineSpec, log_dir: Path, sampling: SamplingConfig, n: int) -> dict[str, Any]:
    """One server mode's figures: a warm-up exploration, then the timed one."""
    with serve(Engines(spec, spec, layout="same-model"), log_dir) as running:
        handle = EngineHandle.attach(running.explorer)
        reported = bool(server_info(running.explorer).get("incremental_streaming_output"))
        explore(handle, replace(sampling, max_tokens=WARMUP_TOKENS), n)
        process_start = time.process_time()
        meter, tokens, wall_s = explore(handle, sampling, n)
        process_cpu_s = time.process_time() - process_start
    return {
        "server_reports_incremental": reported,
        "paths": n,
        "path_tokens": tokens,
        "tokens": sum(tokens),
        "wall_s": wall_s,
        "tokens_per_s": sum(tokens) / wall_s,
        "chunks": meter.chunks,
        "json_bytes": meter.json_bytes,
        "json_bytes_per_path": meter.json_bytes / n,
        "split_cpu_s": meter.split_cpu_s,
        "parse_cpu_s": meter.parse_cpu_s,
        "read_cpu_s": meter.split_cpu_s + meter.parse_cpu_s,
        "read_cpu_s_per_path": (meter.split_cpu_s + meter.parse_cpu_s) / n,
        "client_process_cpu_s": process_cpu_s,
    }


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Cumulative over incremental: bytes and client CPU (how much more the default costs), and tokens/s
    (incremental over cumulative: how much faster the deltas decode)."""
    before, after = results["cumulative"], results["incremental"]

    def over(a: float, b: float) -> float | None:
        return a / b if b else None

    return {
        "json_bytes": over(before["json_bytes"], after["json_bytes"]),
        "read_cpu_s": over(before["read_cpu_s"], after["read_cpu_s"]),
        "client_process_cpu_s": over(before["client_process_cpu_s"], after["client_process_cpu_s"]),
        "tokens_per_s": over(after["tokens_per_s"], before["tokens_per_s"]),
    }


def table(result: dict[str, Any]) -> Table:
    config = result["config"]
    table = Table(
        title=f"online confidence streaming: {config['n']} paths of {config['max_tokens']} tokens, a chunk every "
        f"{config['stream_interval']} tokens, top-{config['top_k']} log-probabilities, CPU"
    )
    columns = ("server streams", "JSON per path", "chunks", "read CPU per path (s)", "of which parse (s)",
               "client CPU (s)", "tokens", "wall (s)", "tokens/s")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "server streams" else "right")
    for mode, r in result["results"].items():
        table.add_row(
            MODE_NAMES[mode],
            f"{r['json_bytes_per_path'] / 1e6:,.1f} MB",
            f"{r['chunks']:,}",
            f"{r['read_cpu_s_per_path']:.2f}",
            f"{r['parse_cpu_s'] / r['paths']:.2f}",
            f"{r['client_process_cpu_s']:.1f}",
            f"{r['tokens']:,}",
            f"{r['wall_s']:.1f}",
            f"{r['tokens_per_s']:.1f}",
        )
    return table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.streaming", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--n", type=int, default=2, help="paths in the exploration")
    parser.add_argument(
        "--max-tokens", type=int, default=4096, help="tokens every path decodes (EOS ignored)"
    )
    parser.add_argument(
        "--output", type=Path, default=Path("runs/streaming"), help="folder for streaming.json"
    )
    args = parser.parse_args(argv)
    cli.check_positive(parser, args, "n", "max_tokens")
    return args


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run, parse_args(argv))


def run(args: argparse.Namespace) -> int:
    try:
        models = offline_models()
        args.output.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError) as exc:
        cli.print_error(exc)
        return 2
    model = str(models.explorer)
    model_context = json.loads((models.explorer / "config.json").read_text())["max_position_embeddings"]
    sampling = SamplingConfig(args.max_tokens, ignore_eos=True)
    cli.log_frontend_warnings(args.output / "logs")
    results = {}
    try:
        for mode in MODES:
            console.print(f"{MODE_NAMES[mode]}: {args.n} paths of {args.max_tokens} tokens, streamed ...")
            spec = engine_spec(model, mode, args.max_tokens, model_context)
            results[mode] = measure(spec, args.output / "logs" / mode, sampling, args.n)
            r = results[mode]
            console.print(
                f"  {r['tokens']:,} tokens in {r['wall_s']:.1f} s, {r['json_bytes_per_path'] / 1e6:,.1f} MB of "
                f"JSON and {r['read_cpu_s_per_path']:.2f} s of client CPU per path"
            )
    except (KeyboardInterrupt, EngineError, RuntimeError) as exc:
        return cli.stopped(exc, "nothing was written")
    config = {
        "n": args.n,
        "max_tokens": args.max_tokens,
        "stream_interval": STREAM_INTERVAL,
        "top_k": TOP_K,
        "prompt": PROMPT,
        "model": model,
        "model_context": model_context,
        "sampling": asdict(sampling),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "sglang": metadata.version("sglang"),
        },  # fmt: skip
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    result = {"config": config, "results": results, "ratios": ratios(results)}
    (args.output / "streaming.json").write_text(json.dumps(result, indent=2) + "\n")
    cli.show(table(result))
    r = result["ratios"]

    def times(value: float | None) -> str:
        return f"{value:,.1f}x" if value is not None else "n/a"

    console.print(
        f"whole chunks against deltas: {times(r['json_bytes'])} the JSON, {times(r['read_cpu_s'])} the client's "
        f"read CPU; deltas decode at {times(r['tokens_per_s'])} the tokens/s"
    )
    console.print(f"results: {args.output / 'streaming.json'}")
    return 0


if __name__ == "__main__":
    cli.exit_with(main())
