"""Throughput of A2R against self-consistency and against the raw engine, end to end on the same engines.

    python -m benchmarks.throughput                          # CPU: the offline tiny model, 8 aime24 problems
    python -m benchmarks.throughput --fixed-length           # every sequence exactly its (scaled) length
    python -m benchmarks.throughput --explorer-model Qwen/Qwen3-4B --synthesizer-model Qwen/Qwen3-8B \\
        --load-format dummy --fixed-length --scale 1.0 --n 4  # GPU: real architectures, random weights

The engines start once; three modes then run one after another on the same problems, each from a flushed
prefix cache:
- sc:  the pipeline with synthesis off (explore N paths per problem, majority vote);
- a2r: the pipeline (explore, then synthesize);
- raw: the same chat-templated prompts POSTed straight to the explorer's `/generate` with `n`=N and the
  explorer's sampling parameters, as many problems in flight as the pipeline keeps: the engine's ceiling.
Token counts are the engines' own (`meta_info`). `--fixed-length` decodes exactly the requested lengths
(`ignore_eos`), so the modes do the same work whatever the weights; the lengths default to the paper's
Table 4 outputs times `--scale`. Writes OUTPUT/throughput.json and per-problem records (OUTPUT/MODE.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from statistics import mean
from typing import Any

import numpy as np
from rich.table import Table

from benchmarks.cost import TABLE4_4B_TO_8B
from engine.launch import EngineError, flush_cache, post, serve
from engine.layout import Engines
from programs import cli
from programs.cli import console
from programs.core.config import RunConfig
from programs.core.grading import start_verifier
from programs.core.records import PathRecord, Problem, ProblemRecord, usage
from programs.datasets import DatasetError, load_problems
from programs.engine_handle import EngineHandle
from programs.pipeline import Pipeline, stage_slots
from programs.profile import Profile

# One reference in the synthesizer's prompt in Table 4: its input less the query, shared by the N=4 references.
PAPER_REFERENCE_TOKENS = (TABLE4_4B_TO_8B["synthesizer_in"] - TABLE4_4B_TO_8B["explorer_in"]) // 4
MODES = ("sc", "a2r", "raw")
ROLES = ("explorer", "synthesizer")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput", description=__doc__.split("\n")[0]
    )
    run = parser.add_argument_group("run")
    run.add_argument("--n", type=int, default=4, help="explorer paths per problem")
    run.add_argument("--dataset", default="aime24", help="shipped name, a .jsonl/.parquet file, or hf:REPO")
    run.add_argument("--limit", type=int, help="first LIMIT problems (default: the profile's; all on a GPU)")
    run.add_argument("--output", type=Path, help="folder for the results (default: runs/throughput-...)")
    fixed = parser.add_argument_group("fixed length (comparable across weights, e.g. --load-format dummy)")
    fixed.add_argument("--fixed-length", action="store_true", help="ignore EOS: decode exactly the lengths")
    fixed.add_argument("--explorer-tokens", type=int, help="tokens per path (default: Table 4's x scale)")
    fixed.add_argument("--synthesizer-tokens", type=int, help="tokens per synthesis (default: idem)")
    fixed.add_argument("--scale", type=float, help="share of Table 4's lengths (default: the profile's)")
    cli.add_engine_args(parser)
    cli.add_run_args(parser, skip=("synthesize", "shuffle_references"))
    args = parser.parse_args(argv)
    cli.check_positive(parser, args, "n", "limit")
    for name in ("explorer_tokens", "synthesizer_tokens", "scale"):
        value = getattr(args, name)
        if value is not None and (not args.fixed_length or value <= 0):
            parser.error(f"--{name.replace('_', '-')} needs --fixed-length and a positive value, got {value}")
    if args.fixed_length and (args.explorer_max_tokens or args.synthesizer_max_tokens):
        parser.error(
            "--fixed-length takes its lengths from --explorer-tokens, --synthesizer-tokens or --scale"
        )
    return args


def run_config(args: argparse.Namespace, engines: Engines, profile: Profile) -> tuple[RunConfig, int | None]:
    """The A2R configuration every mode shares, and the reference length fixed-length runs cut paths to."""
    budgets, reference_tokens = cli.budgets(profile), None
    if args.fixed_length:
        scale = args.scale or profile.throughput_scale
        budgets = (
            args.explorer_tokens or round(scale * TABLE4_4B_TO_8B["explorer_out"]),
            args.synthesizer_tokens or round(scale * TABLE4_4B_TO_8B["synthesizer_out"]),
        )
        # A reference keeps the paper's share of its path (1069 of 18597 tokens), whatever the path's length.
        share = PAPER_REFERENCE_TOKENS / TABLE4_4B_TO_8B["explorer_out"]
        reference_tokens = max(1, round(share * budgets[0]))
    config = RunConfig.from_args(
        args, budgets=budgets, ignore_eos=args.fixed_length, **cli.role_models(engines)
    )
    return config, reference_tokens


class PaperSizedReferences(Pipeline):
    """Fixed-length A2R: each answer part cut to its last `reference_tokens` tokens before synthesis.

    With random weights no path closes `</think>`, so a whole path (thousands of tokens) stands in for its
    answer part and the synthesizer would read many times the paper's prompt; this keeps it the paper's size.
    """

    def __init__(
        self, config: RunConfig, explorer: EngineHandle, synthesizer: EngineHandle, reference_tokens: int
    ) -> None:
        super().__init__(config, explorer, synthesizer)
        self.reference_tokens = reference_tokens

    def explore(self, problem: Problem, first_path: int = 0) -> list[PathRecord]:
        tokenizer, keep = self.explorer.tokenizer, self.reference_tokens

        def cut(text: str) -> str:
            ids = tokenizer.encode(text, add_special_tokens=False)
            return text if len(ids) <= keep else tokenizer.decode(ids[-keep:])

        return [replace(p, answer_part=cut(p.answer_part)) for p in super().explore(problem, first_path)]


def run_raw(
    explorer: EngineHandle, problems: list[Problem], config: RunConfig, slots: int
) -> list[ProblemRecord]:
    """Each problem's prompt as one `/generate` request with `n`=N, `slots` problems in flight."""
    params = config.explorer.gen_kwargs()
    params.update(max_new_tokens=params.pop("max_tokens"), n=config.n)
    prompts = {
        p.id: explorer.prompt(p.problem, config.explorer.max_tokens, config.thinking, p.id) for p in problems
    }
    start = time.perf_counter()

    def solve(problem: Problem) -> ProblemRecord:
        started = time.perf_counter() - start
        body = {"text": prompts[problem.id], "sampling_params": params}
        outputs = json.loads(post(explorer.url, "/generate", body))
        finished = time.perf_counter() - start
        outputs = outputs if isinstance(outputs, list) else [outputs]
        paths = [PathRecord.from_engine(out["text"], out["meta_info"], None) for out in outputs]
        timings = {"queued_at": started, "explore_started_at": started, "finished_at": finished,
                   "explore_s": finished - started, "synthesize_s": 0.0, "total_s": finished - started}  # fmt: skip
        return ProblemRecord(problem.id, problem.problem, problem.answer, {}, paths, {}, None, timings)

    with ThreadPoolExecutor(slots, "raw") as pool:
        return list(pool.map(solve, problems))


def summarize(records: list[ProblemRecord], wall_s: float) -> dict[str, Any]:
    """One mode's figures from its records: rates over the wall time, and per problem its latency (from when
    it got an in-flight slot to its final answer), when its answer came (since the run started) and how its
    time split between the stages."""
    used = usage(records)
    timings = [r.timings for r in records]
    latency = [t["total_s"] for t in timings]
    stages = {stage: used.stage_seconds[f"{stage}_s"] for stage in ("explore", "synthesize")}
    return {
        "problems": len(records),
        "sequences": used.paths + used.syntheses,
        "explorer_prompt_tokens": used.explorer_prompt_tokens,
        "explorer_cached_tokens": used.explorer_cached_tokens,
        "output_tokens": used.output_tokens,
        "wall_s": wall_s,
        "problems_per_s": len(records) / wall_s,
        "tokens_per_s": used.output_tokens / wall_s,
        "latency_p50_s": float(np.percentile(latency, 50)),
        "latency_p95_s": float(np.percentile(latency, 95)),
        "time_to_answer_s": mean(t["finished_at"] for t in timings),
        "first_answer_s": min(t["finished_at"] for t in timings),
        "explorer_cache_hit_ratio": used.prefix_cache_hit_ratio,
        "stage_share": {k: v / sum(stages.values()) for k, v in stages.items()},
    }


def measure(
    problems: list[Problem], engines: Engines, config: RunConfig, reference_tokens: int | None, output: Path
) -> dict[str, dict[str, Any]]:
    """Start the engines once and run the three modes on them in turn, each from a flushed prefix cache."""
    cli.log_frontend_warnings(output / "logs")
    with serve(engines, output / "logs") as running:
        explorer, synthesizer = EngineHandle.attach_roles(running)
        urls = list(dict.fromkeys(handle.url for handle in (explorer, synthesizer)))
        # The same bound as the pipeline's explorer stage, so raw runs exactly as many problems at once.
        slots, _ = stage_slots(config, explorer, None)
        sc = replace(config, synthesize=False, skip_synthesis_if_unanimous=False)
        pipelines = {"sc": Pipeline(sc, explorer, None)}
        pipelines["a2r"] = (
            PaperSizedReferences(config, explorer, synthesizer, reference_tokens)
            if reference_tokens
            else Pipeline(config, explorer, synthesizer)
        )
        # One-off costs (the engines' first batches, the grading worker's start) are paid here, before any
        # mode is timed, and not by whichever mode happens to run first.
        start_verifier()
        pipelines["a2r"].run(problems[:1], lambda record: None)
        results = {}
        for mode in MODES:
            for url in urls:
                flush_cache(url)
            console.print(f"{mode}: {len(problems)} problems, {slots} in flight ...")
            records: list[ProblemRecord] = []
            start = time.perf_counter()
            if mode == "raw":
                records = run_raw(explorer, problems, config, slots)
            else:
                pipelines[mode].run(problems, records.append)
            wall_s = time.perf_counter() - start
            with (output / f"{mode}.jsonl").open("w", encoding="utf-8") as sink:
                sink.writelines(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records)
            results[mode] = {**summarize(records, wall_s), "in_flight": slots}
    return results


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
        "mean time to answer (s)": f"{m['time_to_answer_s']:.2f}",
        "first answer (s)": f"{m['first_answer_s']:.2f}",
        "explorer cache hit": f"{m['explorer_cache_hit_ratio']:.1%}",
        "explore / synth time": "{explore:.0%} / {synthesize:.0%}".format(**m["stage_share"]),
    }


def table(result: dict[str, Any]) -> Table:
    run, modes = result["config"]["run"], result["modes"]
    n, length = run["n"], "fixed length" if run["explorer"]["ignore_eos"] else "free length"
    models = " -> ".join(dict.fromkeys(Path(run[f"{role}_model"]).name for role in ROLES))
    grid = Table(title=f"Throughput, N={n}, {modes['sc']['problems']} problems, {length}", caption=models)
    grid.add_column("")
    for label in (f"SC@{n}", f"A2R@{n}", f"raw engine, n={n}"):
        grid.add_column(label, justify="right")
    columns = [mode_column(modes[mode], modes["raw"]) for mode in MODES]
    for name in columns[0]:
        grid.add_row(name, *(column[name] for column in columns))
    return grid


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run, parse_args(argv))


def run(args: argparse.Namespace) -> int:
    try:
        profile, device = cli.profile_for(args)
        problems = load_problems(args.dataset, args.limit or profile.throughput_limit)
        engines = cli.plan_engines(args, profile, device, cli.build_offline_models(profile, args))
        config, reference_tokens = run_config(args, engines, profile)
        output = args.output or cli.default_output(args.dataset, args.n, kind="throughput")
        output.mkdir(parents=True, exist_ok=True)
    except (DatasetError, OSError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    try:
        modes = measure(problems, engines, config, reference_tokens, output)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted:[/] engines stopped; no figures were written")
        return 130
    except (EngineError, RuntimeError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    raw = modes["raw"]["tokens_per_s"]
    result = {
        **{f"{mode}_tokens_per_s": modes[mode]["tokens_per_s"] for mode in MODES},
        # Over both pipeline modes: the explorer program's prompts, shared by fork.
        "explorer_cache_hit_ratio": sum(modes[m]["explorer_cached_tokens"] for m in ("sc", "a2r"))
        / sum(modes[m]["explorer_prompt_tokens"] for m in ("sc", "a2r")),
        "a2r_over_raw": modes["a2r"]["tokens_per_s"] / raw,
        "sc_over_raw": modes["sc"]["tokens_per_s"] / raw,
        "modes": modes,
        "config": {
            "run": config.to_dict(),
            "dataset": args.dataset,
            "problem_ids": [p.id for p in problems],
            "reference_tokens": reference_tokens,
            "engines": {"layout": engines.layout, **{r: asdict(getattr(engines, r)) for r in ROLES}},
            "machine": machine(device),
        },
    }
    (output / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    cli.show(table(result))
    console.print(
        f"output tokens/s relative to the raw engine: a2r/raw {result['a2r_over_raw']:.2f}, "
        f"sc/raw {result['sc_over_raw']:.2f}\nresults: {output / 'throughput.json'}"
    )
    return 0


if __name__ == "__main__":
    cli.exit_with(main())
