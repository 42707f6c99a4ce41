"""Two ways to run A2R, chosen once per command: the paper's models on a GPU, or the offline tiny model on a CPU.

A profile carries every default that differs between them (models, problem sets, token budgets and the
throughput benchmark's scale), so no other module asks which device it is on to pick a default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from programs.core.config import BOXED_PROBE, ProbeForm
from programs.offline import chain


@dataclass(frozen=True)
class Profile:
    name: str
    explorer_model: str | None  # None: the offline kit builds the model (`programs.offline`)
    synthesizer_model: str | None
    datasets: tuple[str, ...]  # the problem sets a run uses when none is named; the first for one set
    explorer_max_tokens: int  # token budget per explorer path
    synthesizer_max_tokens: int
    throughput_scale: float  # share of the paper's Table 4 lengths in fixed-length throughput runs
    throughput_dataset: str  # the problems the throughput benchmark serves
    throughput_in_flight: int | None  # its cap on problems explored at once (None: what the KV pool holds)
    throughput_seconds: float  # its least decoding time per mode, for steady state
    probe: ProbeForm  # how a probe asks a running path for its answer, in the form its model writes it


# A2R-Efficient (Qwen3-4B -> Qwen3-8B) on the paper's benchmarks. Its paths run 15.7k-20.5k tokens and its
# syntheses 4.4k-5.8k (Table 4), within these budgets.
PAPER = Profile(
    name="paper",
    explorer_model="Qwen/Qwen3-4B",
    synthesizer_model="Qwen/Qwen3-8B",
    datasets=("aime24", "aime25", "beyond_aime"),
    explorer_max_tokens=32768,
    synthesizer_max_tokens=16384,
    throughput_scale=1.0,
    throughput_dataset="aime24",
    throughput_in_flight=None,
    throughput_seconds=60.0,
    probe=BOXED_PROBE,
)

# The offline explorer answers `The result is 12, so ...`. A probe opens that sentence; the model gives the
# number and its comma, sometimes after restating the opening, or, mid-thought, goes on with its arithmetic
# (` + 4 = 10`), which a first character that starts no number and no restatement shows.
ANSWER_OPENING = chain.ANSWER_PART.partition("{value}")[0]
OFFLINE_PROBE_ANSWER = (
    rf"^\s{{0,8}}(?:{re.escape(ANSWER_OPENING)})?(?:(-?\d{{1,32}}),|[^\s\d{ANSWER_OPENING[0]}-])"
)

# The project's own pair (`programs.offline`) on the arithmetic chains it was trained on. Its paths run about
# 25 to 400 tokens and its syntheses under 100. The throughput benchmark keeps 8 problems (32 paths) in flight,
# so that 20 s per mode covers several waves of a few dozen chains; its load sweep shows the engine's tokens/s
# still rising past that (the ceiling is `--sweep load`'s last row).
OFFLINE = Profile(
    name="offline",
    explorer_model=None,
    synthesizer_model=None,
    datasets=(chain.NAME,),
    explorer_max_tokens=512,
    synthesizer_max_tokens=160,
    throughput_scale=0.01,
    throughput_dataset=f"{chain.NAME}:0:2000",
    throughput_in_flight=8,
    throughput_seconds=20.0,
    probe=ProbeForm(ANSWER_OPENING, OFFLINE_PROBE_ANSWER),
)

PROFILES = {profile.name: profile for profile in (PAPER, OFFLINE)}


def choose_profile(requested: str | None, device: str, model_named: bool) -> Profile:
    """`requested` by name, else offline exactly when there is no GPU and no model or server was named."""
    if requested is not None:
        if requested not in PROFILES:
            raise ValueError(f"unknown profile {requested!r}: choose one of {', '.join(PROFILES)}")
        return PROFILES[requested]
    return OFFLINE if device == "cpu" and not model_named else PAPER


def default_models(profile: Profile, device: str, explorer: str | None) -> tuple[str | None, str | None]:
    """(explorer, synthesizer) when the user names none or only the explorer (`explorer`).

    The profile's pair by default. A named explorer keeps the profile's synthesizer on a GPU (A2R-Efficient
    with another explorer) and serves both roles on a CPU, which has no room for the paper's 8B synthesizer.
    """
    if explorer is None:
        return profile.explorer_model, profile.synthesizer_model
    return explorer, profile.synthesizer_model if device == "cuda" else explorer
