"""What the online confidence stop's streaming costs the explorer, with SGLang sending whole chunks (its default)
and deltas (`--incremental-streaming-output`, what the online stop launches its explorer with).

    python -m benchmarks.streaming                      # CPU: the offline explorer, 4 paths of 4000 tokens
    python -m benchmarks.streaming --n 8 --max-tokens 1024

For each server mode one CPU engine starts with the offline explorer and explores the same prompt twice: not
streamed (top-k log-probabilities in the final reply, as the offline confidence reads them) and streamed as the
online stop streams it (a chunk every STREAM_INTERVAL tokens, each read for its confidences; the stop never
fires here, so both decode the same tokens: `ignore_eos`, to the budget). The cost is the streamed time over
the plain one, a ratio within one engine's run. Whole chunks repeat every log-probability so far, so their
cost grows with the square of the path length; deltas keep it linear. Writes OUTPUT/streaming.json.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from rich.table import Table

from engine.launch import serve
from engine.layout import Engines
from engine.ports import free_port
from engine.spec import EngineSpec
from programs.cli import INCREMENTAL_STREAMING, console, show
from programs.core.confidence import STREAM_INTERVAL, OnlineStop, window_for
from programs.core.config import SamplingConfig
from programs.engine_handle import EngineHandle
from programs.explorer import run_explorer
from programs.offline.model import offline_models

PROMPT = "Count from one onwards, one number per line."
MODES = {
    "whole chunks (SGLang's default)": (),
    "deltas (--incremental-streaming-output)": (INCREMENTAL_STREAMING,),
}


def explore_seconds(
    handle: EngineHandle, sampling: SamplingConfig, n: int, streamed: bool
) -> tuple[float, int]:
    """Wall seconds of one exploration of N paths and the tokens they decoded (the engine's count)."""
    # A warm-up of N paths sets the threshold only as the last path ends: nothing is stopped, all is read.
    online = OnlineStop(keep=0.5, warmup=n, window=window_for(sampling.max_tokens)) if streamed else None
    start = time.perf_counter()
    paths = run_explorer(handle.backend, PROMPT, sampling, list(range(n)), confidence=True, online=online)
    return time.perf_counter() - start, sum(p.completion_tokens for p in paths)


def measure(spec: EngineSpec, log_dir: Path, sampling: SamplingConfig, n: int) -> dict[str, float]:
    with serve(Engines(spec, spec, layout="same-model"), log_dir):
        handle = EngineHandle.attach(spec)
        plain, tokens = explore_seconds(handle, sampling, n, streamed=False)
        streamed, streamed_tokens = explore_seconds(handle, sampling, n, streamed=True)
    return {
        "plain_s": plain,
        "streamed_s": streamed,
        "cost": streamed / plain,
        "tokens": tokens,
        "streamed_tokens": streamed_tokens,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.streaming", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--n", type=int, default=4, help="paths per exploration")
    parser.add_argument(
        "--max-tokens", type=int, default=4000, help="tokens per path (the offline model's context is 4096)"
    )
    parser.add_argument(
        "--output", type=Path, default=Path("runs/streaming"), help="folder for streaming.json"
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.max_tokens < 1:
        parser.error(f"--n and --max-tokens must be at least 1, got {args.n} and {args.max_tokens}")
    model = str(offline_models().explorer)
    sampling = SamplingConfig(args.max_tokens, ignore_eos=True)
    results = {}
    for mode, flags in MODES.items():
        console.print(f"{mode}: {args.n} paths of {args.max_tokens} tokens, plain then streamed ...")
        spec = EngineSpec(
            model,
            device="cpu",
            port=free_port(),
            extra_args=("--stream-interval", str(STREAM_INTERVAL), *flags),
        )
        results[mode] = measure(spec, args.output / "logs", sampling, args.n)
    table = Table(title=f"online confidence streaming, {args.n} paths x {args.max_tokens} tokens, CPU")
    for column in ("server streams", "not streamed (s)", "streamed (s)", "cost (streamed / not)"):
        table.add_column(column)
    for mode, r in results.items():
        table.add_row(mode, f"{r['plain_s']:.1f}", f"{r['streamed_s']:.1f}", f"{r['cost']:.2f}x")
    show(table)
    args.output.mkdir(parents=True, exist_ok=True)
    config = {
        "n": args.n,
        "max_tokens": args.max_tokens,
        "stream_interval": STREAM_INTERVAL,
        "model": model,
        "sampling": asdict(sampling),
    }
    (args.output / "streaming.json").write_text(
        json.dumps({"config": config, "results": results}, indent=2) + "\n"
    )
    console.print(f"results: {args.output / 'streaming.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
