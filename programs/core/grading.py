"""Answer extraction (`\\boxed{...}`) and math-verify equivalence, shared by the programs, metrics and reward.

math-verify enforces its own time limits with `signal.alarm`, which only works on the main thread, while the
streaming pipeline and OpenRLHF's reward (`asyncio.to_thread`) call us from worker threads. So math-verify
runs with its timeouts off, inside one long-lived worker process started with `spawn` (no inherited engine
threads or CUDA state); a call that exceeds `VERIFY_TIMEOUT_S` kills that process, is logged and counts as
not equivalent, and the next call starts a fresh worker. Results are cached per (gold, answer), and plain
integers (AIME answers) are compared in-process, exactly and at any length, so the common case never leaves
this process. Grading never raises on a pair of strings: a pair math-verify cannot compare (it raises, times
out or crashes its worker) is logged and counts as not equivalent.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import re
import threading
import unicodedata
from multiprocessing.connection import Connection

from programs.core.prompts import answer_part

logger = logging.getLogger(__name__)

VERIFY_TIMEOUT_S = 5.0  # per (gold, answer) comparison, parsing included; math-verify's own default is 5 s
_STARTUP_TIMEOUT_S = 120.0  # importing sympy and math-verify in a fresh interpreter on a loaded machine

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_INTEGER = re.compile(r"\s*([+-]?)(\d+)\s*")


def extract_boxed(text: str) -> str | None:
    """The stripped content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, or None.

    The last box opened is the model's final answer: if it never closes (a generation cut off mid-answer)
    the result is None, not an earlier box the model may have been revising. Braces nest; escaped braces
    (`\\{`, `\\}`) do not count. An empty box is None too. The brace-less form `\\boxed 5` is not read.

    >>> extract_boxed(r"so \\boxed{\\frac{1}{2}} or rather \\boxed{3}")
    '3'
    >>> extract_boxed(r"\\boxed{12") is None
    True
    """
    opens = list(_BOX_OPEN.finditer(text))
    if not opens:
        return None
    start = opens[-1].end()
    depth = 1
    i = start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # skip the escaped character, e.g. the brace in `\{`
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:i].strip() or None
        i += 1
    return None


def extract_answer(response: str) -> str | None:
    """The boxed answer of a raw model response, read only from its answer part (after the last `</think>`).

    The thinking trace may try several boxed answers before settling; only the answer part counts. A
    response with no `</think>` is read whole (see `programs.core.prompts.answer_part`).
    """
    return extract_boxed(answer_part(response).text)


def is_equivalent(
    gold: str, answer: str | None, *, timeout_s: float = VERIFY_TIMEOUT_S, label: str = ""
) -> bool:
    """Whether `answer` is mathematically equivalent to `gold` by math-verify, gold first.

    Both are bare answers (e.g. the content of a box, or a dataset's answer field); each is parsed as if it
    were boxed, with math-verify's LaTeX and plain-expression extraction. A missing or blank answer is never
    equivalent; identical strings always are. Safe from any thread. A comparison that math-verify cannot make
    (it raises, takes longer than `timeout_s`, or crashes the worker) is logged, with `label` (e.g. the
    problem's id) when given, and counts as not equivalent. Only an empty gold answer or a non-positive
    `timeout_s` raises: those are the caller's mistakes, not the data's.

    >>> is_equivalent("25", "025"), is_equivalent("336", "336^\\\\circ"), is_equivalent("1", None)
    (True, True, False)
    """
    if not isinstance(gold, str) or not gold.strip():
        raise ValueError(f"gold answer must be a non-empty string, got {gold!r}")
    if answer is None or not answer.strip():
        return False
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    if gold.strip() == answer.strip():
        return True  # even when math-verify cannot parse it, e.g. two identical free-text answers
    gold_integer, answer_integer = integer_key(gold), integer_key(answer)
    if gold_integer is not None and answer_integer is not None:
        return gold_integer == answer_integer  # exact, where math-verify would compare floats to 15 digits
    verdict = _verify_cached(gold, answer, timeout_s)
    if isinstance(verdict, str):
        logger.warning(
            "%sComparing gold %.200r with answer %.200r %s; counted as not equivalent",
            f"{label}: " if label else "",
            gold,
            answer,
            verdict,
        )
        return False
    return verdict


def integer_key(text: str) -> tuple[bool, str] | None:
    """A plain integer as (negative, its decimal digits without leading zeros), else None.

    Exact at any length, where `int()` refuses strings of more than 4300 digits.

    >>> integer_key(" -007 "), integer_key("-0") == integer_key("0"), integer_key("1.5")
    ((True, '7'), True, None)
    """
    match = _INTEGER.fullmatch(text)
    if match is None:
        return None
    sign, digits = match.groups()
    if not digits.isascii():  # any Unicode decimal digit, as int() reads them
        digits = "".join(str(unicodedata.decimal(digit)) for digit in digits)
    digits = digits.lstrip("0")
    return sign == "-" and digits != "", digits


def start_verifier() -> None:
    """Start the math-verify worker now instead of at the first comparison that needs one, which would
    otherwise pay for its start (seconds on a busy machine): for timings that should not include it."""
    _VERIFIER.ensure_started()


@functools.lru_cache(maxsize=1 << 16)
def _verify_cached(gold: str, answer: str, timeout_s: float) -> bool | str:
    """math-verify's verdict, or why there is none (e.g. "took longer than 5 s").

    Cached so that majority votes, which compare the same answers again and again, stay cheap. A pair that
    could not be compared is cached too: it would only fail again.
    """
    return _VERIFIER.verify(gold, answer, timeout_s)


def _serve(conn: Connection) -> None:
    """Worker loop: answer (gold, answer) pairs with math-verify's verdict until the pipe closes; a pair that
    makes math-verify raise is answered with a description of the error instead."""
    # We enforce the time limit from outside, so math-verify's "timeout is disabled" warning is noise here.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    configs = [LatexExtractionConfig(), ExprExtractionConfig()]

    @functools.lru_cache(maxsize=1 << 14)
    def parsed(bare: str) -> list:
        # math-verify looks for an answer inside text; boxing the bare answer makes all of it the answer.
        # Unboxed, LaTeX such as `\frac12` or `\pi` is not found at all and `2\sqrt{3}` is read as 2.
        return parse(f"\\boxed{{{bare}}}", configs, parsing_timeout=None)

    # The first comparison is ~30x slower than later ones (lazy set-up inside math-verify and sympy); paying
    # for it here puts it under the startup limit instead of the first real comparison's `timeout_s`.
    verify(parsed("\\frac{1}{2}"), parsed("0.5"), timeout_seconds=None)
    conn.send("ready")
    while True:
        try:
            gold, answer = conn.recv()
        except EOFError:
            return
        try:
            gold_parsed, answer_parsed = parsed(gold), parsed(answer)
            ok = gold_parsed and answer_parsed and verify(gold_parsed, answer_parsed, timeout_seconds=None)
            conn.send(bool(ok))
        except Exception as e:  # one bad pair; the worker stays up and the caller logs it
            conn.send(f"made math-verify raise {type(e).__name__}: {str(e):.200}")


class _VerifierProcess:
    """One math-verify worker process, started on first use and replaced after a timeout or crash."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: mp.process.BaseProcess | None = None
        self._conn: Connection | None = None

    def ensure_started(self) -> None:
        with self._lock:
            self._ensure_started()

    def verify(self, gold: str, answer: str, timeout_s: float) -> bool | str:
        """The worker's verdict on one pair, or why there is none (a timeout, a crash, an error)."""
        with self._lock:
            self._ensure_started()
            assert self._conn is not None and self._proc is not None
            try:
                self._conn.send((gold, answer))
                if self._conn.poll(timeout_s):
                    return self._conn.recv()
                problem = f"took longer than {timeout_s:g} s"
            except (EOFError, OSError):  # the worker died: a closed pipe, on sending or on reading
                self._proc.join(1.0)
                problem = f"crashed the math-verify worker (exit code {self._proc.exitcode})"
            self._stop()
        return problem

    def _ensure_started(self) -> None:
        if self._proc is None or not self._proc.is_alive():
            self._start()

    def _start(self) -> None:
        self._stop()
        ctx = mp.get_context("spawn")
        conn, child_conn = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(child_conn,), name="math-verify", daemon=True)
        proc.start()
        child_conn.close()
        try:
            if not conn.poll(_STARTUP_TIMEOUT_S):
                raise RuntimeError(f"math-verify worker did not start within {_STARTUP_TIMEOUT_S:g} s")
            conn.recv()
        except (EOFError, RuntimeError) as e:
            proc.kill()
            proc.join()
            raise RuntimeError(f"math-verify worker failed to start (exit code {proc.exitcode}): {e}") from e
        self._proc, self._conn = proc, conn

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join()
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn = None, None


_VERIFIER = _VerifierProcess()
