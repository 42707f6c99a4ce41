"""The run's configuration: sampling defaults per role and the A2R knobs, declared once.

Every record and summary carries `RunConfig.to_dict()`, so a result always says what produced it.
"""

from __future__ import annotations

import argparse
import re
import zlib
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from programs.core.confidence import OnlineStop
from programs.core.flags import dataclass_from_args, flag, option
from programs.core.grading import extract_boxed
from programs.core.stopping import STOP_HELP, StopPolicy

METHODS = ("a2r", "rsa")


@dataclass(frozen=True)
class ProbeForm:
    """How a probe asks a running path for its answer, in the form its model writes answers.

    `prefix` follows the end-of-thinking tag and opens the answer. `answer` is a regex over what the probe then
    decodes, matched from its start: the engine stops the probe at its first match (SGLang's `stop_regex`), so
    a probe decodes the answer and nothing after it. Group 1 is the answer; a match without it is a model that
    does not answer in the form (it goes on thinking), which ends the probe early with no answer. A probe that
    ends without a match reads the box in prefix and text, if any.
    """

    prefix: str
    answer: str

    def read(self, text: str) -> str | None:
        """The answer a probe that decoded `text` stated."""
        match = re.match(self.answer, text)
        if match is not None and match.group(1) is not None:
            return match.group(1).strip()
        return extract_boxed(self.prefix + text)


# Qwen3 opens its box; the answer ends at the brace that closes it, past braces nested two deep
# (`\frac{1}{2}}`). Bounded repeats keep the pattern one whose length SGLang can bound.
BOXED_PROBE = ProbeForm(
    "The final answer is \\boxed{",
    r"^((?:[^{}]|\{(?:[^{}]|\{[^{}]{0,64}\}){0,64}\}){0,64})\}",
)


@dataclass(frozen=True)
class SamplingConfig:
    """How one role samples; passed whole to `sgl.gen`."""

    max_tokens: int
    # Qwen3's recommended thinking-mode sampling; both roles think.
    temperature: float = option(0.6, "sampling temperature (both roles)")
    top_p: float = option(0.95, "nucleus sampling mass (both roles)")
    top_k: int = option(20, "sample from the k likeliest tokens (both roles)")
    ignore_eos: bool = False  # decode exactly max_tokens (fixed-length throughput runs, random weights)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def gen_kwargs(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunConfig:
    """What an A2R run does, apart from where its engines are."""

    n: int  # explorer paths per problem
    explorer: SamplingConfig
    synthesizer: SamplingConfig
    explorer_model: str
    synthesizer_model: str
    seed: int = option(0, "seeds every path and the reference shuffle")
    shuffle_references: bool = option(False, "shuffle reference order (seeded)")
    thinking: bool = option(True, "render chat prompts with thinking on (--no-thinking: off)")
    synthesize: bool = option(True, "synthesize (--no-synthesis: explore and vote only)", flag="synthesis")
    # Adaptive exploration (programs.core.stopping), all off by default: the paper's A2R.
    stop: str | None = option(None, STOP_HELP, metavar="POLICY")
    keep_confident: float | None = option(
        None,
        "ask the engine for log-probabilities and give the vote and the synthesizer only this fraction of "
        "the finished paths, the most confident by DeepConf's lowest group confidence",
        metavar="FRACTION",
    )
    online_confidence: float | None = option(
        None,
        "DeepConf's online mode: stream every path, let the first to finish set a confidence threshold that "
        "keeps this share of paths like them, and stop any path whose recent tokens fall below it",
        metavar="KEEP",
    )
    # How a probe asks for the answer when the --stop policy reads probes (`,probe=T`): the profile's, set by
    # `from_args`.
    probe: ProbeForm = BOXED_PROBE
    force_answer: int | None = option(
        None,
        "give a path that reaches its token budget still thinking the end-of-thinking tag and this many more "
        "tokens to answer (its record says forced_answer). Off by default, as in the paper, where such a path "
        "has no answer",
        metavar="TOKENS",
    )
    skip_synthesis_if_unanimous: bool = option(
        False,
        "when every kept path gives the same answer, return it without synthesis. Off by default and best "
        "left off: an aggregator that reads the traces can still recover a right answer all paths missed",
    )
    # How the synthesizer answers over the paths (programs.pipeline.Pipeline.answer), all off by default: the
    # paper's one synthesis.
    method: str = option(
        "a2r",
        "a2r: synthesize over the N paths' answer parts; rsa: recursive aggregation, T rounds in which each of "
        "N members aggregates K members of the last population, answered by the last population's vote",
        choices=METHODS,
    )
    syntheses: int = option(
        1, "a2r: synthesizer samples over the same references, forked from one prompt, answered by their vote"
    )
    rounds: int | None = option(None, "rsa: aggregation rounds T", metavar="T")
    subset: int | None = option(
        None, "rsa: members of the last population each aggregation reads, K", metavar="K"
    )
    extra: dict[str, Any] = field(default_factory=dict)  # anything else that shaped the results

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        check_method(self)
        if self.stop is not None:
            self.stop_policy.check(self.n)
        if self.keep_confident is not None and not 0 < self.keep_confident <= 1:
            raise ValueError(f"--keep-confident must be a fraction in (0, 1], got {self.keep_confident}")
        if self.online_confidence is not None:  # refuses a share or an N it cannot work with
            OnlineStop.for_run(self.online_confidence, self.n, self.explorer.max_tokens)
        if self.force_answer is not None and self.force_answer < 1:
            raise ValueError(f"--force-answer must be at least 1 token, got {self.force_answer}")
        if self.probe_every is not None and (self.keep_confident or self.online_confidence) is not None:
            raise ValueError(
                f"--stop {self.stop} probes paths, which splits each into several requests; --keep-confident "
                "and --online-confidence read a path's log-probabilities as one request: choose one"
            )
        if self.skip_synthesis_if_unanimous and not self.synthesize:
            raise ValueError(
                "--skip-synthesis-if-unanimous needs synthesis; --no-synthesis never synthesizes"
            )

    @property
    def synthesis_width(self) -> int:
        """Synthesizer requests a problem has in flight at once: its syntheses, or RSA's N members a round."""
        return self.n if self.method == "rsa" else self.syntheses

    @property
    def stop_policy(self) -> StopPolicy | None:
        return StopPolicy.parse(self.stop) if self.stop is not None else None

    @property
    def probe_every(self) -> int | None:
        """Tokens between probes of a running path, as the stop policy says (None: it reads no probes)."""
        policy = self.stop_policy
        return policy.probe_every if policy is not None else None

    @property
    def online_stop(self) -> OnlineStop | None:
        if self.online_confidence is None:
            return None
        return OnlineStop.for_run(self.online_confidence, self.n, self.explorer.max_tokens)

    @classmethod
    def from_args(
        cls,
        args: argparse.Namespace,
        *,
        budgets: tuple[int, int],
        probe: ProbeForm = BOXED_PROBE,
        ignore_eos: bool = False,
        **overrides: Any,
    ) -> RunConfig:
        """The run the shared flags describe (`programs.cli`); `budgets` are the profile's (explorer,
        synthesizer) token budgets, used where `--explorer-max-tokens` / `--synthesizer-max-tokens` are not
        given, `probe` how its models are asked for their answer, and `overrides` fix what an entry point decides
        itself (the models, `synthesize=False`, ...)."""
        explorer_budget, synthesizer_budget = budgets

        def sampling(budget: int) -> SamplingConfig:
            return dataclass_from_args(SamplingConfig, args, max_tokens=budget, ignore_eos=ignore_eos)

        # An entry point without the method flags (`cli.add_run_args(methods=False)`) runs the paper's A2R, and
        # may use their names for flags of its own: the throughput benchmark's --rounds are rounds of its modes.
        paper = {} if hasattr(args, "method") else {name: FIELD_DEFAULTS[name] for name in METHOD_FIELDS}
        return dataclass_from_args(
            cls,
            args,
            explorer=sampling(getattr(args, "explorer_max_tokens", None) or explorer_budget),
            synthesizer=sampling(getattr(args, "synthesizer_max_tokens", None) or synthesizer_budget),
            probe=probe,
            **{**paper, **overrides},
        )

    def to_dict(self) -> dict[str, Any]:
        """Every field, except adaptive and method knobs left at their defaults and a probe form no policy
        uses: run folders written before those existed then still resume."""
        data = asdict(self)
        for name in (*ADAPTIVE_FIELDS, *METHOD_FIELDS):
            if data[name] == FIELD_DEFAULTS[name]:
                del data[name]
        if self.probe_every is None:
            del data["probe"]
        return data

    def path_seed(self, problem_id: str, path: int) -> int:
        """A distinct seed per path, stable across reruns and problem order.

        One seed shared by parallel samples can make them identical (sglang PR #28805).
        """
        return zlib.crc32(f"{self.seed}/{problem_id}/{path}".encode()) & 0x7FFFFFFF


ADAPTIVE_FIELDS = (
    "stop",
    "keep_confident",
    "online_confidence",
    "force_answer",
    "skip_synthesis_if_unanimous",
)
METHOD_FIELDS = ("method", "syntheses", "rounds", "subset")
FIELD_DEFAULTS = {f.name: f.default for f in fields(RunConfig)}


def method_of(config: dict[str, Any]) -> str:
    """The method a record's or summary's configuration (`RunConfig.to_dict()`) names; a2r when it names none."""
    return config.get("method", "a2r")


def adaptive_flags(values: Any) -> list[str]:
    """The flags of `ADAPTIVE_FIELDS` that `values` (a `RunConfig`, or parsed flags, which may lack some)
    sets: each stops or drops paths, or cuts them, where RSA starts from all N whole."""
    return [
        flag(name)
        for name in ADAPTIVE_FIELDS
        if getattr(values, name, FIELD_DEFAULTS[name]) != FIELD_DEFAULTS[name]
    ]


def check_method(values: Any) -> None:
    """Refuse a synthesis method's flags that cannot work together (ValueError naming them), as `values` (a
    `RunConfig`, or `programs.a2r`'s parsed flags, checked before anything is built) sets them."""
    n, synthesize, method = values.n, values.synthesize, values.method
    syntheses, rounds, subset = values.syntheses, values.rounds, values.subset
    if method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if syntheses < 1:
        raise ValueError(f"--syntheses must be at least 1, got {syntheses}")
    if syntheses > 1 and not synthesize:
        raise ValueError(f"--syntheses {syntheses} samples the synthesizer; --no-synthesis never runs it")
    if method != "rsa":
        if rounds is not None or subset is not None:
            raise ValueError("--rounds and --subset are RSA's: add --method rsa")
        return
    if not synthesize:
        raise ValueError("--method rsa aggregates with the synthesizer; --no-synthesis never runs it")
    if syntheses > 1:
        raise ValueError("--syntheses votes A2R's syntheses; RSA votes its last population: drop --syntheses")
    if rounds is None or subset is None:
        raise ValueError("--method rsa needs --rounds T and --subset K")
    if rounds < 1:
        raise ValueError(f"--rounds must be at least 1, got {rounds}")
    if subset < 1:
        raise ValueError(f"--subset must be at least 1, got {subset}")
    if subset > n:
        raise ValueError(f"--subset {subset} is larger than the population it draws from, --n {n} paths")
    if adaptive := adaptive_flags(values):
        raise ValueError(
            f"--method rsa starts from all N paths; {', '.join(adaptive)} stops or drops some: choose one"
        )
