"""What probing running paths for their answers costs the explorer, against the same paths unprobed.

    python -m benchmarks.probes --load-format dummy                  # CPU: the offline explorer, random weights
    python -m benchmarks.probes --explorer-model Qwen/Qwen3-4B --load-format dummy   # GPU

One engine serves the explorer. Every path decodes exactly `--path-tokens` tokens (EOS ignored), so every mode
does the same path work. Three modes explore the same problems in interleaved rounds, each from a flushed
prefix cache, each first in turn:
- unprobed: each path in one request, as the paper runs it;
- chunked:  each path cut every `--probe-every` tokens and continued from the radix cache, nothing asked;
- probed:   cut the same way, and probed at each cut while it thinks (with random weights a path may close
            its thought by chance, and is then no longer probed).
Within each round, each mode's throughput (the paths' own tokens per second) over another's gives what the
cuts cost (chunked/unprobed), what the probes add (probed/chunked) and both (probed/unprobed); the median and
min-max over rounds are reported. Token counts are the engine's (`meta_info`): per probe, the prompt tokens it
was not served from the radix cache plus those it generated, and the uncached prompt of the chunk that
continued the path (`PathRecord.probe_tokens`).

Where a cut's time goes comes from the engine's own timestamps (an explorer started here runs with
`--enable-metrics`): per continued path, the wait from the engine finishing a chunk to it receiving the next
(the reply's and the request's trip through the server and the client), then the continuation's time to its
first token, of which the prefill forward that reads the path back from the cache; beside them a decode step
of the same paths. Writes OUTPUT/probes.json and the paths of each mode and round (OUTPUT/MODE.jsonl).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from itertools import pairwise
from pathlib import Path
from statistics import median
from typing import Any

from rich.table import Table

from engine.endpoint import PathEndpoint, TokenTrail
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

MODES = ("unprobed", "chunked", "probed")
RATIOS = {  # name: the mode, the mode it is set against, and what its shortfall in throughput is
    "chunking": ("chunked", "unprobed", "the cuts cost"),
    "probes": ("probed", "chunked", "the probes add"),
    "both": ("probed", "unprobed", "probing costs"),
}
METRICS_FLAG = "--enable-metrics"  # SGLang's meta_info then carries each request's timestamps:
TIMESTAMPS = ("request_received_ts", "forward_entry_time", "prefill_finished_time", "request_finished_ts")
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


@dataclass(frozen=True)
class Reply:
    """One request of a chunked path as the engine answered it."""

    trail: TokenTrail  # the path's: every request of one path shares it
    kind: str  # "first" (the path's prompt), "continuation" (the path from the cache) or "probe"
    meta: dict[str, Any]


class RecordingEndpoint(PathEndpoint):
    """The explorer's own endpoint, keeping the reply of every request a chunked path makes."""

    def __init__(self, base: PathEndpoint) -> None:
        super().__init__(base.base_url, base.dp_ranks.dp_size, base.api_key, base.incremental)
        self.replies: list[Reply] = []  # appended from the paths' threads

    def generate_on_trail(self, s: Any, sampling_params: Any, trail: TokenTrail) -> tuple[str, dict]:
        known = trail.known(s.text_)
        kind = "first" if known is None else "continuation" if known[0] == s.text_ else "probe"
        text, meta = super().generate_on_trail(s, sampling_params, trail)
        self.replies.append(Reply(trail, kind, meta))
        return text, meta


def explore(
    explorer: EngineHandle, problems: list[Problem], args: argparse.Namespace, chunking: Chunking
) -> tuple[list[PathRecord], float, list[Reply]]:
    """Every problem's N fixed-length paths, `--max-in-flight` problems at once: the paths, the wall time and
    the replies of a chunked path's requests."""
    sampling = SamplingConfig(args.path_tokens, ignore_eos=True)
    backend = RecordingEndpoint(explorer.backend)

    def solve(problem: Problem) -> list[PathRecord]:
        prompt = explorer.prompt(problem.problem, args.path_tokens, True, problem.id)
        seeds = list(range(args.n))
        return run_explorer(backend, prompt, sampling, seeds, chunking=chunking)

    start = time.perf_counter()
    with ThreadPoolExecutor(args.max_in_flight) as pool:
        paths = [path for paths in pool.map(solve, problems) for path in paths]
    return paths, time.perf_counter() - start, backend.replies


def cuts(replies: list[Reply]) -> dict[str, Any] | None:
    """Where the time of a path's cuts went, in milliseconds (medians over cuts), from the engine's own
    timestamps; None without them (an engine started without `--enable-metrics`)."""
    chunks: dict[int, list[dict[str, Any]]] = {}
    for reply in replies:
        if reply.kind != "probe":
            chunks.setdefault(id(reply.trail), []).append(reply.meta)
    ordered = [sorted(metas, key=lambda m: m.get("request_received_ts", 0)) for metas in chunks.values()]
    pairs = [(done, then) for metas in ordered for done, then in pairwise(metas)]
    needed = (*TIMESTAMPS, "first_token_latency")
    if not pairs or not all(key in m for pair in pairs for m in pair for key in needed):
        return None
    steps = [1000 / m["decode_throughput"] for metas in ordered for m in metas if m.get("decode_throughput")]
    return {
        "cuts": len(pairs),
        "wait_ms": median(
            1000 * (then["request_received_ts"] - done["request_finished_ts"]) for done, then in pairs
        ),
        "first_token_ms": median(1000 * then["first_token_latency"] for _, then in pairs),
        "prefill_ms": median(
            1000 * (then["prefill_finished_time"] - then["forward_entry_time"]) for _, then in pairs
        ),
        "decode_step_ms": median(steps) if steps else None,
    }


def figures(paths: list[PathRecord], wall_s: float, replies: list[Reply]) -> dict[str, Any]:
    """One mode's figures in one round, from the engine's token counts and timestamps."""
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
        "cuts": cuts(replies),
    }


def measure(
    explorer: EngineHandle, problems: list[Problem], args: argparse.Namespace, profile: Profile
) -> list[dict]:
    """The modes in interleaved rounds; each round's figures per mode, each mode's paths in OUTPUT."""
    probed = Chunking(probe_every=args.probe_every, form=profile.probe)
    chunkings = {"unprobed": Chunking(), "chunked": replace(probed, ask=False), "probed": probed}
    explore(explorer, problems[:1], args, chunkings["probed"])  # the engine's first batches, untimed
    rounds = []
    sinks = {mode: (args.output / f"{mode}.jsonl").open("w", encoding="utf-8") for mode in MODES}
    try:
        for index in range(args.rounds):
            round_figures = {}
            first = index % len(MODES)  # each mode goes first in turn
            for mode in MODES[first:] + MODES[:first]:
                explorer.flush_cache()
                console.print(f"round {index + 1}/{args.rounds}: {mode}, {len(problems)} problems ...")
                paths, wall_s, replies = explore(explorer, problems, args, chunkings[mode])
                sinks[mode].writelines(json.dumps({"round": index, **p.to_json()}) + "\n" for p in paths)
                round_figures[mode] = figures(paths, wall_s, replies)
            rounds.append(round_figures)
    finally:
        for sink in sinks.values():
            sink.close()
    return rounds


def ratio(rounds: list[dict], mode: str, against: str) -> dict[str, Any]:
    """`mode`'s path tokens/s over `against`'s within each round: median, range, and the cost it implies."""
    per_round = [r[mode]["path_tokens_per_s"] / r[against]["path_tokens_per_s"] for r in rounds]
    middle = median(per_round)
    return {
        "median": middle,
        "min": min(per_round),
        "max": max(per_round),
        "rounds": per_round,
        "cost_percent": 100 * (1 - middle),
    }


def summary(rounds: list[dict], args: argparse.Namespace) -> dict[str, Any]:
    """The ratios of `RATIOS` over rounds, the probes' tokens, and each cut mode's cut timings (medians of
    the rounds' medians)."""
    probed = [r["probed"] for r in rounds]
    probes = sum(f["probes"] for f in probed)

    def cut_timings(mode: str) -> dict[str, Any] | None:
        measured = [r[mode]["cuts"] for r in rounds if r[mode]["cuts"] is not None]
        if not measured:
            return None
        keys = [k for k in measured[0] if k != "cuts"]
        timings = {
            k: median(v) if (v := [m[k] for m in measured if m[k] is not None]) else None for k in keys
        }
        return {"cuts": sum(m["cuts"] for m in measured), **timings}

    return {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rounds": rounds,
        "ratios": {name: ratio(rounds, mode, against) for name, (mode, against, _) in RATIOS.items()},
        "probes": probes,
        "tokens_per_probe": sum(f["probe_tokens"] for f in probed) / probes if probes else None,
        "probe_tokens_share": sum(f["probe_tokens"] for f in probed) / sum(f["path_tokens"] for f in probed),
        "cuts": {mode: cut_timings(mode) for mode in ("chunked", "probed")},
    }


def table(result: dict[str, Any]) -> Table:
    config = result["config"]
    table = Table(
        title=f"probing cost: {config['n']} paths of {config['path_tokens']} tokens, cut and probed every "
        f"{config['probe_every']} ({len(result['rounds'])} rounds)"
    )
    columns = ("mode", "path tokens/s (median)", "probes", "tokens per probe", "cut: wait", "first token")
    for column in (*columns, "of it prefill", "decode step (ms)"):
        table.add_column(column, justify="right" if column != "mode" else "left")
    for mode in MODES:
        per_round = [r[mode] for r in result["rounds"]]
        per_probe = sum(f["probe_tokens"] for f in per_round) / max(1, sum(f["probes"] for f in per_round))
        cut = result["cuts"].get(mode) or {}
        table.add_row(
            mode,
            f"{median(f['path_tokens_per_s'] for f in per_round):,.0f}",
            str(sum(f["probes"] for f in per_round)),
            f"{per_probe:.1f}" if mode == "probed" else "-",
            *(f"{cut[k]:.0f} ms" if cut.get(k) is not None else "-" for k in ("wait_ms", "first_token_ms")),
            f"{cut['prefill_ms']:.0f} ms" if cut.get("prefill_ms") is not None else "-",
            f"{cut['decode_step_ms']:.1f}" if cut.get("decode_step_ms") is not None else "-",
        )
    return table


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run, parse_args(argv))


def run(args: argparse.Namespace) -> int:
    with cli.refusing(DatasetError, OSError, ValueError):
        engines, profile = planning.explorer_engines(args)
        problems = load_problems(args.dataset or profile.throughput_dataset, args.problems)
        args.output.mkdir(parents=True, exist_ok=True)
    if engines.explorer.launched:  # the engine's timestamps in every reply, for where a cut's time goes
        explorer = replace(engines.explorer, extra_args=(*engines.explorer.extra_args, METRICS_FLAG))
        one = engines.synthesizer is engines.explorer
        engines = replace(engines, explorer=explorer, synthesizer=explorer if one else engines.synthesizer)
    try:
        cli.log_frontend_warnings(args.output / "logs")
        with serve(engines, args.output / "logs") as running:
            rounds = measure(EngineHandle.attach(running.explorer), problems, args, profile)
    except (KeyboardInterrupt, EngineError, RuntimeError) as exc:
        return cli.stopped(exc, f"the paths measured so far are in {args.output}")
    result = {**summary(rounds, args), "engine": asdict(engines.explorer)}
    (args.output / "probes.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    cli.show(table(result))
    ratios, per_probe = result["ratios"], result["tokens_per_probe"]
    for name, (mode, against, shortfall) in RATIOS.items():
        r = ratios[name]
        console.print(
            f"{mode}/{against} path tokens/s: {r['median']:.3f} (rounds {r['min']:.3f}-{r['max']:.3f}): "
            f"{shortfall} {r['cost_percent']:.1f}% of explorer throughput"
        )
    console.print(
        f"{per_probe:.1f} engine-computed tokens per probe"
        if per_probe is not None
        else "no probe was made (every path had closed its thought first): probed is chunked"
    )
    console.print(f"results: {args.output / 'probes.json'}")
    return 0


if __name__ == "__main__":
    cli.exit_with(main())
