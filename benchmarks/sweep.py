"""The throughput benchmark's sweeps: which values, and their table and plot.

A length sweep shows how the per-problem costs of fork/join and of synthesis shrink as paths get longer; a
load sweep shows where per-request overhead stops mattering as more problems run at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from benchmarks.cost import TABLE4_4B_TO_8B
from programs.profile import Profile

SWEEPS = ("length", "load")
# Path lengths: on the CPU a few tiny-model lengths, on a GPU Table 4's path length times 0.1, 0.3 and 1.
LENGTHS = {
    "offline": (64, 256, 1024),
    "paper": tuple(round(share * TABLE4_4B_TO_8B["explorer_out"]) for share in (0.1, 0.3, 1.0)),
}
LOADS = (1, 4, 16, None)  # caps on problems in flight; None: what the explorer's KV pool holds
MODE_LABELS = {"sc": "SC", "a2r": "A2R", "raw": "raw engine", "two-phase": "two-phase"}
PLOTTED_RATIOS = ("sc_over_raw", "a2r_over_sc", "a2r_answer_p50_over_two_phase")


def sweep_values(kind: str, profile: Profile, given: Sequence[int] | None) -> list[int | None]:
    if given:
        return list(given)
    return list(LENGTHS[profile.name] if kind == "length" else LOADS)


def swept(kind: str, result: dict[str, Any]) -> int:
    """The value a point was measured at: its path length, or the problems it actually kept in flight."""
    config = result["config"]
    return config["run"]["explorer"]["max_tokens"] if kind == "length" else config["slots"][0]


def sweep_table(kind: str, names: Sequence[str], results: dict[str, dict[str, Any]]) -> Table:
    label = "path tokens" if kind == "length" else "in flight"
    grid = Table(title=f"Throughput sweep over {label}: medians and [min-max] over rounds")
    for column in (
        label,
        "problems",
        *(f"{m} tok/s" for m in MODE_LABELS.values()),
        "SC/raw",
        "A2R/SC",
        "A2R/raw",
        "A2R/two-phase p50 answer",
    ):
        grid.add_column(column, justify="right")
    for name in names:
        result = results[name]
        grid.add_row(
            str(swept(kind, result)),
            str(result["modes"]["sc"]["problems"]),
            *(f"{result['modes'][mode]['tokens_per_s']:,.0f}" for mode in MODE_LABELS),
            ratio(result, "sc_over_raw"),
            ratio(result, "a2r_over_sc"),
            ratio(result, "a2r_over_raw"),
            ratio(result, "a2r_answer_p50_over_two_phase"),
        )
    return grid


def ratio(result: dict[str, Any], name: str) -> str:
    r = result["ratios"][name]
    return f"{r['median']:.3f} [{r['min']:.2f}-{r['max']:.2f}]"


def plot_sweep(kind: str, names: Sequence[str], results: dict[str, dict[str, Any]], path: Path) -> None:
    """Tokens/s of each mode, and the ratios with their ranges over rounds, against the swept value."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    ordered = [results[name] for name in names]
    xs = [swept(kind, r) for r in ordered]
    fig, (rates, ratios) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode, label in MODE_LABELS.items():
        rates.plot(xs, [r["modes"][mode]["tokens_per_s"] for r in ordered], marker="o", label=label)
    for name in PLOTTED_RATIOS:
        spread = [r["ratios"][name] for r in ordered]
        medians = [s["median"] for s in spread]
        errors = [
            [m - s["min"] for m, s in zip(medians, spread, strict=True)],
            [s["max"] - m for m, s in zip(medians, spread, strict=True)],
        ]
        ratios.errorbar(xs, medians, yerr=errors, marker="o", capsize=3, label=name.replace("_", " "))
    xlabel = "tokens per path" if kind == "length" else "problems in flight"
    for axes, ylabel in ((rates, "output tokens / s"), (ratios, "ratio (median, min-max over rounds)")):
        axes.set_xscale("log", base=2)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.legend(fontsize=8)
    ratios.axhline(1.0, color="grey", linewidth=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
