"""Throughput of A2R against self-consistency, the raw engine and a two-phase batch, at steady state.

    python -m benchmarks.throughput                          # CPU: the offline pair, free length, 3 rounds
    python -m benchmarks.throughput --fixed-length           # every sequence exactly its (scaled) length
    python -m benchmarks.throughput --fixed-length --sweep length   # 64, 256, 1024-token paths (GPU: Table 4 x .1 .3 1)
    python -m benchmarks.throughput --fixed-length --sweep load     # 1, 4, 16 problems in flight, and the KV pool's
    python -m benchmarks.throughput --explorer-model Qwen/Qwen3-4B --synthesizer-model Qwen/Qwen3-8B \\
        --load-format dummy --fixed-length --n 4            # GPU: real architectures, random weights

The engines start once. The four modes (`benchmarks.modes`: sc, a2r, raw, two-phase) then run the same problems
in interleaved rounds (sc, a2r, raw, two-phase, sc, ...), each from a flushed prefix cache, so drift in the
machine's load spreads over every mode alone. Each mode runs long enough to reach steady state: at least 4 times
as many problems as the explorer keeps in flight (so syntheses overlap later explorations as in a real run), and
more if the raw engine would finish them in under `--seconds` (measured first, on the same engines). Ratios are
taken within a round and reported as the median and min-max over rounds. Token counts are the engines' own
(`meta_info`); `--fixed-length` decodes exactly the requested lengths (`ignore_eos`), so every mode does the same
work whatever the weights. Writes OUTPUT/throughput.json and per-problem records (OUTPUT/MODE.jsonl, each record
with its round); a sweep writes one such folder per value, OUTPUT/sweep-KIND.json and OUTPUT/sweep-KIND.png, and
a rerun reuses the values already measured with the same configuration.

Where self-consistency loses time against the raw engine (`benchmarks.overhead`, printed after every run): per
problem, fork's prefix commit (one more HTTP round trip, waited for before the paths start), N path requests
instead of one request with n=N (each parsed and re-tokenized by the engine), the frontend's threads, and the
time a freed slot waits for its next problem's prompt. Every one is a fixed cost per problem, so its share of
the time falls as paths get longer; docs/results-cpu.md gives each item's measured share at each swept length.
Each mode also records the CPU seconds this process (the frontend) and every local engine's processes used
(`cpu_s`: scheduler, server, detokenizer; `engine.cpu_use`), so where a core's time went is read, not guessed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import median, median_low
from typing import Any

import psutil
from rich.table import Table

from benchmarks.cost import TABLE4_4B_TO_8B
from benchmarks.modes import MODES, PaperSizedReferences, run_raw, run_two_phase, summarize
from benchmarks.overhead import budget_table, fixed_costs, shares
from benchmarks.sweep import SWEEPS, plot_sweep, sweep_table, sweep_values
from engine.cpu_use import cpu_seconds, local_server
from engine.launch import EngineError, serve
from engine.layout import Engines
from programs import cli, planning
from programs.cli import console
from programs.core.config import RunConfig
from programs.core.grading import start_verifier
from programs.core.records import Problem, ProblemRecord
from programs.datasets import DatasetError, load_problems
from programs.engine_handle import EngineHandle
from programs.pipeline import Pipeline, stage_slots
from programs.profile import Profile

# One reference in the synthesizer's prompt in Table 4: its input less the query, shared by the N=4 references.
PAPER_REFERENCE_TOKENS = (TABLE4_4B_TO_8B["synthesizer_in"] - TABLE4_4B_TO_8B["explorer_in"]) // 4
SYNTHESIS_SHARE = TABLE4_4B_TO_8B["synthesizer_out"] / TABLE4_4B_TO_8B["explorer_out"]
ROLES = ("explorer", "synthesizer")
PROBLEMS_PER_SLOT = 4  # problems per in-flight slot: enough that syntheses overlap later explorations
STEADY = 0.05  # a ratio whose rounds all lie within this share of their median is steady
# Ratios taken within each round: tokens/s of the first mode over the second's, and the pipeline's time to
# answer and wall time against the two-phase batch on the same work.
RATIOS = {
    "sc_over_raw": ("sc", "raw", "tokens_per_s"),
    "a2r_over_sc": ("a2r", "sc", "tokens_per_s"),
    "a2r_over_raw": ("a2r", "raw", "tokens_per_s"),
    "a2r_over_two_phase": ("a2r", "two-phase", "tokens_per_s"),
    "a2r_answer_p50_over_two_phase": ("a2r", "two-phase", "time_to_answer_p50_s"),
    "a2r_wall_over_two_phase": ("a2r", "two-phase", "wall_s"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput", description=__doc__.split("\n")[0]
    )
    run = parser.add_argument_group("run")
    run.add_argument("--n", type=int, default=4, help="explorer paths per problem")
    run.add_argument(
        "--dataset", help="shipped name, a .jsonl/.parquet file, or hf:REPO (default: the profile's)"
    )
    run.add_argument(
        "--limit", type=int, help="exactly LIMIT problems per mode (default: sized by --seconds)"
    )
    run.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the four modes")
    run.add_argument("--seconds", type=float, help="least decoding time per mode (default: the profile's)")
    run.add_argument(
        "--max-in-flight", type=int, help="cap on problems explored at once (default: the profile's)"
    )
    run.add_argument("--sweep", choices=SWEEPS, help="measure at several path lengths or in-flight caps")
    run.add_argument("--sweep-values", type=int, nargs="+", help="the swept values (default: the profile's)")
    run.add_argument("--output", type=Path, help="folder for the results (default: runs/throughput-...)")
    fixed = parser.add_argument_group("fixed length (comparable across weights, e.g. --load-format dummy)")
    fixed.add_argument("--fixed-length", action="store_true", help="ignore EOS: decode exactly the lengths")
    fixed.add_argument("--explorer-tokens", type=int, help="tokens per path (default: Table 4's x scale)")
    fixed.add_argument("--synthesizer-tokens", type=int, help="tokens per synthesis (default: idem)")
    fixed.add_argument("--scale", type=float, help="share of Table 4's lengths (default: the profile's)")
    cli.add_engine_args(parser)
    cli.add_run_args(parser, skip=("synthesize", "shuffle_references"))
    args = parser.parse_args(argv)
    cli.check_positive(parser, args, "n", "limit", "rounds", "max_in_flight")
    for name in ("explorer_tokens", "synthesizer_tokens", "scale"):
        value = getattr(args, name)
        if value is not None and (not args.fixed_length or value <= 0):
            parser.error(f"--{name.replace('_', '-')} needs --fixed-length and a positive value, got {value}")
    if args.fixed_length and (args.explorer_max_tokens or args.synthesizer_max_tokens):
        parser.error(
            "--fixed-length takes its lengths from --explorer-tokens, --synthesizer-tokens or --scale"
        )
    if args.sweep == "length" and not args.fixed_length:
        parser.error("--sweep length needs --fixed-length: free-length paths end where the model stops")
    if args.sweep_values is not None and (not args.sweep or min(args.sweep_values) < 1):
        parser.error(f"--sweep-values needs --sweep and positive values, got {args.sweep_values}")
    if args.seconds is not None and args.seconds <= 0:
        parser.error(f"--seconds must be positive, got {args.seconds}")
    return args


@dataclass(frozen=True)
class Point:
    """One measured configuration: the run, the length references are cut to, the in-flight cap, and how
    many rounds of how many problems (`limit`, else enough for `seconds` per mode)."""

    name: str
    config: RunConfig
    reference_tokens: int | None
    max_in_flight: int | None
    rounds: int
    limit: int | None
    seconds: float

    def key(self) -> dict[str, Any]:
        """What a saved result must match to be reused by a rerun."""
        return {
            "run": self.config.to_dict(),
            "reference_tokens": self.reference_tokens,
            "max_in_flight": self.max_in_flight,
            "rounds": self.rounds,
            "limit": self.limit,
            "seconds": self.seconds,
        }


def fixed_lengths(
    args: argparse.Namespace, profile: Profile, explorer_tokens: int | None = None
) -> tuple[int, int]:
    """(path, synthesis) lengths of a fixed-length run: the flags', else Table 4's times the scale; a swept path
    length keeps Table 4's synthesis-to-path ratio."""
    scale = args.scale or profile.throughput_scale
    if explorer_tokens is not None:
        return explorer_tokens, args.synthesizer_tokens or max(1, round(SYNTHESIS_SHARE * explorer_tokens))
    return (
        args.explorer_tokens or round(scale * TABLE4_4B_TO_8B["explorer_out"]),
        args.synthesizer_tokens or round(scale * TABLE4_4B_TO_8B["synthesizer_out"]),
    )


def points(args: argparse.Namespace, engines: Engines, profile: Profile) -> list[Point]:
    """The configurations to measure: one, or one per swept value."""
    in_flight = args.max_in_flight or profile.throughput_in_flight

    def point(name: str, explorer_tokens: int | None = None, cap: int | None = in_flight) -> Point:
        budgets, reference_tokens = planning.budgets(profile), None
        if args.fixed_length:
            budgets = fixed_lengths(args, profile, explorer_tokens)
            # A reference keeps the paper's share of its path (1069 of 18597 tokens), whatever its length.
            reference_tokens = max(
                1, round(PAPER_REFERENCE_TOKENS / TABLE4_4B_TO_8B["explorer_out"] * budgets[0])
            )
        config = RunConfig.from_args(
            args,
            budgets=budgets,
            probe=profile.probe,
            ignore_eos=args.fixed_length,
            **planning.role_models(engines),
        )
        seconds = args.seconds or profile.throughput_seconds
        return Point(name, config, reference_tokens, cap, args.rounds, args.limit, seconds)

    if args.sweep is None:
        return [point("default")]
    values = sweep_values(args.sweep, profile, args.sweep_values)
    if args.sweep == "length":
        return [point(f"length-{value}", explorer_tokens=value) for value in values]
    return [point(f"load-{value}" if value else "load-kv", cap=value or None) for value in values]


def run_mode(
    mode: str, pipelines: dict[str, Pipeline], problems: list[Problem], slots: tuple[int, int]
) -> tuple[list[ProblemRecord], float]:
    """One mode over `problems`: its records and its wall time."""
    records: list[ProblemRecord] = []
    start = time.perf_counter()
    if mode == "raw":
        sc = pipelines["sc"]
        records = run_raw(sc.explorer, problems, sc.config, slots[0])
    elif mode == "two-phase":
        records = run_two_phase(pipelines["a2r"], problems, slots)
    else:
        pipelines[mode].run(problems, records.append, max_in_flight=slots[0])
    wall_s = time.perf_counter() - start
    failed = [r for r in records if r.error]
    if failed:  # a throughput figure over less work than the other modes did would mislead
        raise RuntimeError(
            f"{mode}: {len(failed)} of {len(records)} problems failed, e.g. {failed[0].id}: {failed[0].error}"
        )
    return records, wall_s


def problem_count(
    point: Point, pipelines: dict[str, Pipeline], pool: list[Problem], slots: tuple[int, int]
) -> int:
    """`--limit`, else enough problems for steady state: PROBLEMS_PER_SLOT per in-flight slot, and more if the
    raw engine (the fastest mode) would decode them in under `--seconds`, as timed on these engines now."""
    if point.limit:
        return point.limit
    least, seconds = PROBLEMS_PER_SLOT * slots[0], point.seconds
    _, wall_s = run_mode("raw", pipelines, pool[:least], slots)
    wanted = max(least, math.ceil(least * seconds / wall_s))
    if wanted > len(pool):
        console.print(
            f"[yellow]warning:[/] {seconds:g} s per mode wants {wanted} problems; the dataset has {len(pool)}"
        )
    return min(wanted, len(pool))


def cpu_meter(roles: dict[str, str]) -> Callable[[], dict[str, float]]:
    """A reading of the CPU seconds used so far by this process (the frontend) and by each local engine's
    processes, by role and kind ("explorer scheduler"). `roles` maps each engine's URL to the first role it
    serves: an engine serving both roles, even at two spellings of its URL, is read once, as the explorer; a
    remote one is not read."""
    servers: dict[str, psutil.Process] = {}
    for url, role in roles.items():
        server = local_server(url)
        if server is not None and server.pid not in {s.pid for s in servers.values()}:
            servers[role] = server

    def read() -> dict[str, float]:
        frontend = psutil.Process().cpu_times()
        used = {"frontend": frontend.user + frontend.system}
        for role, server in servers.items():
            used.update({f"{role} {kind}": seconds for kind, seconds in cpu_seconds(server).items()})
        return used

    return read


def measure_point(
    point: Point, pool: list[Problem], handles: tuple[EngineHandle, EngineHandle], output: Path
) -> dict[str, Any]:
    """Every mode of `point` in interleaved rounds on the running engines; the per-round figures."""
    explorer, synthesizer = handles
    config = point.config
    slots = stage_slots(config, explorer, synthesizer, point.max_in_flight)
    sc = replace(config, synthesize=False, skip_synthesis_if_unanimous=False)
    pipelines = {"sc": Pipeline(sc, explorer, None)}
    pipelines["a2r"] = (
        PaperSizedReferences(config, explorer, synthesizer, point.reference_tokens)
        if point.reference_tokens
        else Pipeline(config, explorer, synthesizer)
    )
    # One-off costs (the engines' first batches at this length, the grading worker) are paid before timing.
    pipelines["a2r"].run(pool[:1], lambda record: None)
    problems = pool[: problem_count(point, pipelines, pool, slots)]
    if len(problems) < PROBLEMS_PER_SLOT * slots[0]:
        console.print(
            f"[yellow]warning:[/] {len(problems)} problems for {slots[0]} in flight: fewer than "
            f"{PROBLEMS_PER_SLOT} per slot, so the run ends before steady state"
        )
    roles: dict[str, str] = {}  # each engine's URL, with the first role it serves
    for role, handle in zip(ROLES, handles, strict=True):
        roles.setdefault(handle.url, role)
    output.mkdir(parents=True, exist_ok=True)
    sinks = {mode: (output / f"{mode}.jsonl").open("w", encoding="utf-8") for mode in MODES}
    rounds: list[dict[str, Any]] = []
    cpu = cpu_meter(roles)
    try:
        for index in range(point.rounds):
            figures = {}
            for mode in MODES:
                for handle in {handle.url: handle for handle in handles}.values():
                    handle.flush_cache()
                console.print(
                    f"{point.name} round {index + 1}/{point.rounds}: {mode}, {len(problems)} problems, "
                    f"{slots[0]} in flight ..."
                )
                before = cpu()
                records, wall_s = run_mode(mode, pipelines, problems, slots)
                after = cpu()
                sinks[mode].writelines(
                    json.dumps({"round": index, **r.to_json()}, ensure_ascii=False) + "\n" for r in records
                )
                sinks[mode].flush()
                figures[mode] = summarize(records, wall_s, slots[0])
                figures[mode]["cpu_s"] = {key: after[key] - before[key] for key in after}
            rounds.append(figures)
    finally:
        for sink in sinks.values():
            sink.close()
    return {"rounds": rounds, "problem_ids": [p.id for p in problems], "slots": list(slots)}


def spread(values: list[float]) -> dict[str, Any]:
    return {"median": median(values), "min": min(values), "max": max(values), "rounds": values}


def median_figures(figures: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over rounds, nested dicts (the stage shares) included."""

    def middle(values: list[Any]) -> Any:
        if isinstance(values[0], dict):
            return median_figures(values)
        return median_low(values) if isinstance(values[0], int) else median(values)  # counts stay counts

    return {key: middle([f[key] for f in figures]) for key in figures[0]}


def result_of(
    point: Point, measured: dict[str, Any], engines: Engines, args: argparse.Namespace, device: str
) -> dict[str, Any]:
    """throughput.json: the medians under the keys a single run always had, the ratios with their ranges,
    every round's figures, and the configuration."""
    rounds = measured["rounds"]
    modes = {mode: median_figures([r[mode] for r in rounds]) for mode in MODES}
    ratios = {
        name: spread([r[a][figure] / r[b][figure] for r in rounds]) for name, (a, b, figure) in RATIOS.items()
    }
    pipeline_modes = [r[m] for r in rounds for m in ("sc", "a2r", "two-phase")]
    return {
        **{f"{mode.replace('-', '_')}_tokens_per_s": modes[mode]["tokens_per_s"] for mode in MODES},
        # Over the pipeline modes: the explorer program's prompts, shared by fork.
        "explorer_cache_hit_ratio": sum(m["explorer_cached_tokens"] for m in pipeline_modes)
        / sum(m["explorer_prompt_tokens"] for m in pipeline_modes),
        **{name: ratio["median"] for name, ratio in ratios.items()},
        "ratios": ratios,
        "modes": modes,
        "rounds": rounds,
        "config": {
            **point.key(),
            "point": point.name,
            "dataset": args.dataset,
            "problem_ids": measured["problem_ids"],
            "slots": measured["slots"],
            "engines": {
                "layout": engines.layout,
                "frontend_cores": engines.frontend_cores,
                **{r: getattr(engines, r).to_dict() for r in ROLES},
            },
            "machine": machine(device),
        },
    }


def saved(point: Point, folder: Path) -> dict[str, Any] | None:
    """A result already measured for `point` in `folder` (a rerun of a sweep skips it), or None."""
    path = folder / "throughput.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    same = all(result["config"].get(key) == value for key, value in point.key().items())
    return result if same else None


def machine(device: str) -> dict[str, Any]:
    """What the figures were measured on, to label them with."""
    gpus: list[str] = []
    if device == "cuda":
        import torch

        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"device": device, "cpus": os.cpu_count(), "gpus": gpus, "platform": platform.platform()}


def mode_column(m: dict[str, Any], raw: dict[str, Any]) -> dict[str, str]:
    """One mode's column of the table, by row name."""
    return {
        "problems / s": f"{m['problems_per_s']:.3g}",
        "output tokens / s": f"{m['tokens_per_s']:,.0f}",
        "  relative to raw": f"{m['tokens_per_s'] / raw['tokens_per_s']:.2f}",
        "latency p50 / p95 (s)": f"{m['latency_p50_s']:.2f} / {m['latency_p95_s']:.2f}",
        "time to answer p50 (s)": f"{m['time_to_answer_p50_s']:.2f}",
        "first answer (s)": f"{m['first_answer_s']:.2f}",
        "wall (s)": f"{m['wall_s']:.1f}",
        "explorer cache hit": f"{m['explorer_cache_hit_ratio']:.1%}",
        "explore / synth time": "{explore:.0%} / {synthesize:.0%}".format(**m["stage_share"]),
        # (a result saved before CPU time was recorded has none)
        **{
            f"CPU cores: {key}": f"{seconds / m['wall_s']:.2f}" for key, seconds in m.get("cpu_s", {}).items()
        },
    }


def table(result: dict[str, Any]) -> Table:
    run, modes = result["config"]["run"], result["modes"]
    n, length = run["n"], "fixed length" if run["explorer"]["ignore_eos"] else "free length"
    models = " -> ".join(dict.fromkeys(Path(run[f"{role}_model"]).name for role in ROLES))
    title = (
        f"Throughput, N={n}, {modes['sc']['problems']} problems, {length}, medians of "
        f"{result['config']['rounds']} rounds"
    )
    grid = Table(title=title, caption=models)
    grid.add_column("")
    for label in (f"SC@{n}", f"A2R@{n}", f"raw engine, n={n}", "two-phase A2R"):
        grid.add_column(label, justify="right")
    columns = [mode_column(modes[mode], modes["raw"]) for mode in MODES]
    for name in columns[0]:
        grid.add_row(name, *(column[name] for column in columns))
    return grid


def ratio_line(result: dict[str, Any]) -> str:
    return ", ".join(
        f"{name} {r['median']:.3f} [{r['min']:.3f}-{r['max']:.3f}]" for name, r in result["ratios"].items()
    )


def unsteady(result: dict[str, Any]) -> list[str]:
    """The ratios with a round further than STEADY from their median. The modes of a round run one after
    another, so such a range tells of the machine's speed (or of free-length sampling) more than of the modes."""
    return [
        name
        for name, r in result["ratios"].items()
        if not (1 - STEADY) * r["median"] <= r["min"] <= r["max"] <= (1 + STEADY) * r["median"]
    ]


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run, parse_args(argv))


def run(args: argparse.Namespace) -> int:
    with cli.refusing(DatasetError, OSError, ValueError):
        profile, device = planning.profile_for(args)
        args.dataset = args.dataset or profile.throughput_dataset
        pool = load_problems(args.dataset)
        engines = planning.plan_engines(args, profile, device, planning.build_offline_models(profile, args))
        todo = points(args, engines, profile)
        output = args.output or cli.default_output(args.dataset, args.n, kind="throughput")
        output.mkdir(parents=True, exist_ok=True)
    folder = {p.name: output if args.sweep is None else output / p.name for p in todo}
    results = {p.name: r for p in todo if (r := saved(p, folder[p.name])) is not None}
    if results:
        console.print(
            f"reusing {', '.join(results)}: measured with this configuration in {output} "
            "(another --output measures again)"
        )
    try:
        if len(results) < len(todo):
            left = [p for p in todo if p.name not in results]
            measure_all(left, pool, engines, args, device, output, folder, results)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted:[/] engines stopped; values measured in full stay in {output}")
        return 130
    except (EngineError, RuntimeError, ValueError) as exc:
        cli.print_error(exc)
        return 1
    ordered = [results[p.name] for p in todo]
    if args.sweep is not None:
        summary = {"sweep": args.sweep, "points": {p.name: results[p.name] for p in todo}}
        (output / f"sweep-{args.sweep}.json").write_text(json.dumps(summary, indent=2) + "\n")
        plot_sweep(args.sweep, [p.name for p in todo], results, output / f"sweep-{args.sweep}.png")
        cli.show(sweep_table(args.sweep, [p.name for p in todo], results))
    else:
        cli.show(table(ordered[0]))
        console.print(ratio_line(ordered[0]))
    for p in todo:
        if wide := unsteady(results[p.name]):
            console.print(
                f"[yellow]note:[/] {p.name}: {', '.join(wide)} moved more than ±{STEADY:.0%} between rounds. The "
                "modes of a round run one after another, so a change in the machine's speed (or, at free length, "
                "in the paths sampled) shows here: read the medians, or measure again on an idle machine"
            )
    cli.show(budget_table(ordered))
    written = [f"sweep-{args.sweep}.json", f"sweep-{args.sweep}.png"] if args.sweep else ["throughput.json"]
    console.print(f"results: {', '.join(str(output / name) for name in written)}")
    return 0


def measure_all(
    todo: list[Point],
    pool: list[Problem],
    engines: Engines,
    args: argparse.Namespace,
    device: str,
    output: Path,
    folder: dict[str, Path],
    results: dict[str, dict[str, Any]],
) -> None:
    """Start the engines once, measure every point in `todo` and its fixed costs, and write each point's
    throughput.json the moment it is done, so an interrupted sweep keeps what it finished."""
    cli.log_frontend_warnings(output / "logs")
    with serve(engines, output / "logs") as running:
        handles = EngineHandle.attach_roles(running)
        start_verifier()
        for p in todo:
            measured = measure_point(p, pool, handles, folder[p.name])
            costs = fixed_costs(handles[0], pool, p.config, measured["slots"][0])
            result = result_of(p, measured, engines, args, device)
            results[p.name] = {**result, "overhead": {"costs": costs, "shares": shares(costs, result)}}
            (folder[p.name] / "throughput.json").write_text(json.dumps(results[p.name], indent=2) + "\n")


if __name__ == "__main__":
    cli.exit_with(main())
