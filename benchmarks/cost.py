"""What a run costs at API list prices, by the paper's formula (appendix A.1).

    python -m benchmarks.cost --explorer-model Qwen/Qwen3-4B --synthesizer-model Qwen/Qwen3-8B --n 4 \\
        --explorer-tokens 130,18597 --synthesizer-tokens 4406,4982
    python -m benchmarks.cost --explorer-model qwen3-32b --n 1 --explorer-tokens 130,17422 --json
    python -m benchmarks.cost --records runs/demo/records.jsonl --explorer-model qwen3-4b --synthesizer-model qwen3-8b

The first line prices Table 4's Qwen3-4B -> Qwen3-8B row at N=4 (its token counts are `TABLE4_4B_TO_8B`).

    explorer    = N x (T_in,E x P_in + T_out,E x P_out)      (token counts per explorer path)
    synthesizer =      T_in,S x P_in + T_out,S x P_out
    total       = explorer + synthesizer                      (no synthesizer: a plain N-sample run)

Prices are CNY per 1K tokens (Qwen Model Studio list prices, thinking mode), so every cost here is CNY per
problem: the quantity of the paper's Table 4 "Cost/1K" column, which these prices reproduce within about 2%.
Prompt tokens are charged in full on every path, as in the paper; prefix-cache hits are not discounted.
A model is named by its price key (`qwen3-4b`) or by any hub id or path ending in it (`Qwen/Qwen3-4B`).
The cost-versus-accuracy plot is not here yet: it needs a finished run of `benchmarks.accuracy`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from programs.core.jsonl import read_jsonl

CURRENCY = "CNY"


@dataclass(frozen=True)
class Price:
    """A model's list price in CNY per 1K tokens; input and output are priced separately."""

    input: float
    output: float

    def __post_init__(self) -> None:
        if not all(math.isfinite(p) and p >= 0 for p in (self.input, self.output)):
            raise ValueError(f"prices must be finite and non-negative, got {self.input}, {self.output}")


@dataclass(frozen=True)
class Tokens:
    """Token counts of one model call (means over calls are fine: the formula is linear)."""

    input: float
    output: float

    def __post_init__(self) -> None:
        if not all(math.isfinite(t) and t >= 0 for t in (self.input, self.output)):
            raise ValueError(f"token counts must be finite and non-negative, got {self.input}, {self.output}")


@dataclass(frozen=True)
class Cost:
    """Cost of one problem in CNY, split by stage. Cons@N pays `explorer` only; A2R@N pays `total`."""

    explorer: float
    synthesizer: float

    @property
    def total(self) -> float:
        return self.explorer + self.synthesizer

    def as_dict(self) -> dict[str, float]:
        return {"explorer": self.explorer, "synthesizer": self.synthesizer, "total": self.total}


# The one price table (Qwen Model Studio list prices, thinking mode, as used by the paper).
DEFAULT_PRICES: dict[str, Price] = {
    "qwen3-4b": Price(input=0.0003, output=0.003),
    "qwen3-8b": Price(input=0.0005, output=0.005),
    "qwen3-32b": Price(input=0.002, output=0.02),
}


# The paper's Table 4 token counts for Qwen3-4B explorers -> a Qwen3-8B synthesizer at N=4 (the "average"
# row over AIME24, AIME25 and BeyondAIME): per explorer path, and for the synthesizer.
TABLE4_4B_TO_8B: dict[str, int] = {
    "explorer_in": 130,
    "explorer_out": 18597,
    "synthesizer_in": 4406,
    "synthesizer_out": 4982,
}


def model_key(model: str) -> str:
    """The price key of a model name: the last path component, lower-cased (`Qwen/Qwen3-4B` -> `qwen3-4b`)."""
    key = model.strip().rstrip("/").rsplit("/", 1)[-1].lower()
    if not key:
        raise ValueError(f"empty model name {model!r}")
    return key


def parse_pair(text: str, what: str) -> tuple[float, float]:
    """`IN,OUT` as two numbers; `what` names the flag in the error."""
    parts = text.split(",")
    try:
        first, second = (float(part) for part in parts)
    except ValueError as err:
        raise ValueError(f"{what} must be IN,OUT (two numbers), got {text!r}") from err
    return first, second


def load_prices(file: str | Path | None = None, overrides: Iterable[str] = ()) -> dict[str, Price]:
    """The default table, updated from a JSON file `{"MODEL": {"input": P, "output": P}}`, then `MODEL=IN,OUT`."""
    prices = dict(DEFAULT_PRICES)
    if file is not None:
        try:
            data = json.loads(Path(file).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read price file {file}: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"{file}: expected an object mapping model to {{'input': P, 'output': P}}")
        for model, entry in data.items():
            numbers = isinstance(entry, dict) and all(isinstance(v, (int, float)) for v in entry.values())
            if not numbers or set(entry) != {"input", "output"}:
                raise ValueError(
                    f"{file}: price of {model!r} must be {{'input': P, 'output': P}}, got {entry!r}"
                )
            prices[model_key(model)] = Price(float(entry["input"]), float(entry["output"]))
    for override in overrides:
        model, sep, pair = override.partition("=")
        if not sep or not model.strip():
            raise ValueError(f"--price must be MODEL=IN,OUT, got {override!r}")
        prices[model_key(model)] = Price(*parse_pair(pair, f"--price {model}"))
    return prices


def price_of(model: str, prices: dict[str, Price]) -> Price:
    key = model_key(model)
    if key not in prices:
        raise ValueError(
            f"no price for model {model!r} (key {key!r}); known: {', '.join(sorted(prices))}. "
            f"Add one with --price {key}=IN,OUT or --prices FILE."
        )
    return prices[key]


def call_cost(price: Price, tokens: Tokens) -> float:
    """One model call: tokens times the price per 1K tokens."""
    return (tokens.input * price.input + tokens.output * price.output) / 1000


def estimate_cost(
    prices: dict[str, Price],
    explorer_model: str,
    n: int,
    explorer_tokens: Tokens,
    synthesizer_model: str | None = None,
    synthesizer_tokens: Tokens | None = None,
) -> Cost:
    """The paper's formula from per-path explorer tokens; without a synthesizer, a plain N-sample run."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if (synthesizer_model is None) != (synthesizer_tokens is None):
        raise ValueError("a synthesizer needs both its model and its token counts")
    explorer = n * call_cost(price_of(explorer_model, prices), explorer_tokens)
    if synthesizer_model is None or synthesizer_tokens is None:
        return Cost(explorer=explorer, synthesizer=0.0)
    return Cost(
        explorer=explorer, synthesizer=call_cost(price_of(synthesizer_model, prices), synthesizer_tokens)
    )


def record_cost(
    record: dict[str, Any],
    prices: dict[str, Price],
    explorer_model: str | None = None,
    synthesizer_model: str | None = None,
) -> Cost:
    """Cost of one problem of a run from its own token counts (`paths`, and `synthesizer` or, for a method
    that makes several synthesizer calls, every one of its `syntheses`).

    Models come from the record's `config` unless given (to price a run at another model's prices); a config
    without a synthesizer model means the symmetric case, where the explorer model also synthesizes. A record
    of a run without synthesis (`--no-synthesis`: its `synthesizer` is null) costs its explorer paths only.
    """
    where = f"record {record.get('id')!r}"
    config = record.get("config") or {}
    explorer_model = explorer_model or config.get("explorer_model")
    if not explorer_model:
        raise ValueError(f"{where}: no config.explorer_model; name one with --explorer-model")
    synthesizer_model = synthesizer_model or config.get("synthesizer_model") or explorer_model
    paths = record.get("paths")
    if not paths:
        raise ValueError(f"{where}: no explorer 'paths'")
    explorer_price = price_of(explorer_model, prices)
    explorer = sum(
        call_cost(explorer_price, _tokens(path, f"{where} path {i}")) for i, path in enumerate(paths)
    )
    if "synthesizer" not in record:
        raise ValueError(f"{where}: no 'synthesizer' entry (null for a run without synthesis)")
    synthesizer = record["synthesizer"]
    if synthesizer is None:
        return Cost(explorer=explorer, synthesizer=0.0)
    if not isinstance(synthesizer, dict):
        raise ValueError(f"{where}: 'synthesizer' must be an object or null, got {synthesizer!r:.80}")
    price = price_of(synthesizer_model, prices)
    synth_cost = sum(
        call_cost(price, _tokens(call, f"{where} synthesizer")) for call in synthesizer_calls(record)
    )
    return Cost(explorer=explorer, synthesizer=synth_cost)


def synthesizer_calls(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Every synthesizer call a record made: each of its `syntheses` when the method made several (M
    syntheses voted, RSA's rounds), else its one `synthesizer` (none when it is null)."""
    return record.get("syntheses") or ([record["synthesizer"]] if record.get("synthesizer") else [])


def record_tokens(record: dict[str, Any]) -> int:
    """Prompt and output tokens of every call a record made (its `paths` and synthesizer calls): what
    `record_cost` charges, unpriced."""
    calls = [*record["paths"], *synthesizer_calls(record)]
    where = f"record {record.get('id')!r}"
    return int(sum(t.input + t.output for t in (_tokens(call, where) for call in calls)))


def mean_cost(costs: Sequence[Cost]) -> Cost:
    """Mean cost per problem over a run."""
    if not costs:
        raise ValueError("no records to price")
    return Cost(
        explorer=sum(c.explorer for c in costs) / len(costs),
        synthesizer=sum(c.synthesizer for c in costs) / len(costs),
    )


def _tokens(entry: dict[str, Any], where: str) -> Tokens:
    missing = [key for key in ("prompt_tokens", "completion_tokens") if entry.get(key) is None]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    return Tokens(float(entry["prompt_tokens"]), float(entry["completion_tokens"]))


def add_price_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Declare `--prices FILE` and `--price MODEL=IN,OUT` (repeatable) on a parser or argument group.

    They land in `args.prices` (a path or None) and `args.price` (a list); pass both to `load_prices`.
    """
    parser.add_argument("--prices", metavar="FILE", help='JSON {"MODEL": {"input": P, "output": P}}, CNY/1K')
    parser.add_argument("--price", action="append", default=[], metavar="MODEL=IN,OUT", help="set one price")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cost", description=__doc__.split("\n")[0])
    models = parser.add_argument_group("models and prices")
    models.add_argument("--explorer-model", help="explorer price key or hub id (overrides records' config)")
    models.add_argument("--synthesizer-model", help="synthesizer price key or hub id; omit for a plain run")
    add_price_args(models)
    tokens = parser.add_argument_group("from token counts (the paper's Table 4)")
    tokens.add_argument("--n", type=int, default=1, help="explorer paths per problem (1 = single sample)")
    tokens.add_argument("--explorer-tokens", metavar="IN,OUT", help="input,output tokens per explorer path")
    tokens.add_argument(
        "--synthesizer-tokens", metavar="IN,OUT", help="input,output tokens of the synthesizer"
    )
    parser.add_argument("--records", metavar="FILE", help="a run's records.jsonl: mean cost per problem")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.records:
        if args.explorer_tokens or args.synthesizer_tokens or args.n != 1:
            parser.error("--records takes its token counts and N from the records; drop --n / --*-tokens")
        return
    if not args.explorer_model or not args.explorer_tokens:
        parser.error("give --explorer-model and --explorer-tokens IN,OUT (or --records FILE)")
    if bool(args.synthesizer_model) != bool(args.synthesizer_tokens):
        parser.error("--synthesizer-model and --synthesizer-tokens go together")


# JSON result, table title, table rows (stage, detail, cost; None: not applicable, shown as "-")
Report = tuple[dict[str, Any], str, list[tuple[str, str, float | None]]]


def _records_report(args: argparse.Namespace, prices: dict[str, Price]) -> Report:
    """Cons@N and A2R@N costs of a run's records; a run without synthesis has no A2R@N ("a2r": null)."""
    records = [row for _, row in read_jsonl(args.records)]
    if not records:
        raise ValueError(f"{args.records}: no records to price")
    run = mean_cost([record_cost(r, prices, args.explorer_model, args.synthesizer_model) for r in records])
    unsynthesized = [r.get("id") for r in records if r.get("synthesizer") is None]
    if 0 < len(unsynthesized) < len(records):
        raise ValueError(
            f"{args.records}: {len(unsynthesized)} of {len(records)} records have no synthesizer "
            f"(e.g. {unsynthesized[0]!r}); a mean over both kinds prices neither Cons@N nor A2R@N"
        )
    synthesized = not unsynthesized
    cons = Cost(run.explorer, 0.0)
    result = {"problems": len(records), "cons": cons.as_dict(), "a2r": run.as_dict() if synthesized else None}
    rows: list[tuple[str, str, float | None]] = [("Cons@N", "explorer paths", run.explorer)]
    if synthesized:
        rows += [
            ("A2R@N", "explorer paths", run.explorer),
            ("", "+ synthesizer", run.synthesizer),
            ("", "= total", run.total),
        ]
    else:
        rows += [("A2R@N", "no synthesizer (a --no-synthesis run)", None)]
    return result, f"Mean cost per problem over {len(records)} records of {args.records}", rows


def _tokens_report(args: argparse.Namespace, prices: dict[str, Price]) -> Report:
    synthesizer_tokens = None
    if args.synthesizer_tokens:
        synthesizer_tokens = Tokens(*parse_pair(args.synthesizer_tokens, "--synthesizer-tokens"))
    explorer_tokens = Tokens(*parse_pair(args.explorer_tokens, "--explorer-tokens"))
    cost = estimate_cost(
        prices, args.explorer_model, args.n, explorer_tokens, args.synthesizer_model, synthesizer_tokens
    )
    synthesizer = (
        f"{model_key(args.synthesizer_model)} {args.synthesizer_tokens}" if args.synthesizer_model else "-"
    )
    rows = [
        ("explorer", f"{args.n} x {model_key(args.explorer_model)} {args.explorer_tokens}", cost.explorer),
        ("synthesizer", synthesizer, cost.synthesizer),
        ("total", "", cost.total),
    ]
    return cost.as_dict() | {"n": args.n}, "Cost per problem (paper appendix A.1)", rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    try:
        prices = load_prices(args.prices, args.price)
        result, title, rows = (_records_report if args.records else _tokens_report)(args, prices)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result | {"currency": CURRENCY}))
        return 0
    table = Table(title=title)
    table.add_column("stage")
    table.add_column("detail")
    table.add_column(f"cost ({CURRENCY}/problem)", justify="right")
    for stage, detail, cost in rows:
        table.add_row(stage, detail, "-" if cost is None else f"{cost:.4g}")
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
