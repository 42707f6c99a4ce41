"""Answer extraction and math-verify equivalence on literal inputs, from any thread and under a time limit."""

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import threading
import uuid
from collections.abc import Iterator

import pytest

from programs.core.grading import extract_answer, extract_boxed, is_equivalent, start_verifier


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"The answer is \boxed{25}.", "25"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # nested braces
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces do not close the box
        (r"first \boxed{3}, then \boxed{ 7 }", "7"),  # the last box wins, stripped
        (r"\boxed {42}", "42"),
        (r"\fbox{9}", "9"),
        (r"so the answer is \boxed{12", None),  # truncated generation
        (r"\boxed{5} ... on second thought \boxed{1\frac{2}", None),  # the final box was cut off
        (r"\boxed{}", None),
        ("The answer is 25.", None),  # no answer at all
        ("", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_answer_reads_only_after_the_thinking():
    assert extract_answer(r"<think>maybe \boxed{3}</think>So \boxed{4}.") == "4"
    assert extract_answer(r"<think>maybe \boxed{3}</think>I am not sure.") is None
    assert extract_answer(r"no thinking here, \boxed{8}") == "8"


@pytest.mark.parametrize(
    ("gold", "answer"),
    [
        ("25", "25"),
        ("25", "025"),
        ("336", r"336^\circ"),
        ("33124147", "33,124,147"),
        (r"\frac{1}{2}", "0.5"),
        ("0.5", r"\frac{1}{2}"),
        (r"\frac{1}{2}", r"\dfrac12"),
        ("5", "x=5"),
        (r"2\sqrt{3}", r"\sqrt{12}"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3, \pi/2)"),
        (r"\text{Evelyn}", "Evelyn"),
        ("}{", "}{"),  # identical strings, even ones math-verify cannot parse
    ],
)
def test_equivalent(gold, answer):
    assert is_equivalent(gold, answer)


@pytest.mark.parametrize(
    ("gold", "answer"),
    [
        ("25", "26"),
        ("25", "250"),
        ("100000000000000000001", "100000000000000000000"),  # exact for integers, no float rounding
        (r"\frac{1}{2}", "0.6"),
        (r"\frac{14}{3}", "4.67"),
        ("2", r"2\sqrt{3}"),  # the whole answer counts, not its first number
        (r"\text{Evelyn}", "Bob"),
        ("25", None),
        ("25", ""),
        ("25", "   "),
    ],
)
def test_not_equivalent(gold, answer):
    assert not is_equivalent(gold, answer)


def test_empty_gold_is_an_error():
    with pytest.raises(ValueError, match="gold answer"):
        is_equivalent(" ", "1")


def test_works_off_the_main_thread():
    # math-verify's own timeouts use signal.alarm, which raises outside the main thread.
    results = {}

    def grade():
        results["half"] = is_equivalent(r"\frac{1}{2}", "0.5")
        results["wrong"] = is_equivalent(r"\frac{1}{2}", r"\frac{1}{3}")

    thread = threading.Thread(target=grade)
    thread.start()
    thread.join(60)
    assert results == {"half": True, "wrong": False}


def verifier_workers() -> list[mp.process.BaseProcess]:
    return [p for p in mp.active_children() if p.name == "math-verify"]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def grading_warnings() -> Iterator[list[logging.LogRecord]]:
    """The warnings the grading module logs meanwhile, from a handler on its own logger.

    Not caplog, which listens at the root: it hears nothing once an earlier test or library has turned off
    the logger's propagation, raised its level, or disabled it or all logging (`logging.config.dictConfig`
    disables the loggers that exist by default). Each of those is undone here, then restored.
    """
    logger = logging.getLogger(is_equivalent.__module__)
    level, disabled, filters = logger.level, logger.disabled, logger.filters[:]
    disabled_up_to = logging.root.manager.disable
    handler = _Collect()
    logger.setLevel(logging.WARNING)
    logger.disabled = False
    logger.filters.clear()
    logging.disable(logging.NOTSET)
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.disabled = disabled
        logger.filters[:] = filters
        logging.disable(disabled_up_to)


def test_timeout_counts_as_not_equivalent_and_the_worker_recovers():
    # A pair no earlier call sent, so that no verdict cached in this process answers it.
    k = 1000 + uuid.uuid4().int % 10**6
    gold, answer = rf"\frac{{3}}{{{k}}}", rf"\frac{{6}}{{{2 * k}}}"
    start_verifier()
    (worker,) = verifier_workers()
    # A stopped worker cannot answer, however loaded the machine: the comparison must time out. SIGSTOP is
    # pending before the request is sent, and the worker stops before it runs any code after reading it.
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        with grading_warnings() as warnings:
            assert not is_equivalent(gold, answer, timeout_s=0.2)
        assert worker.exitcode == -signal.SIGKILL  # killed by the verifier, not left to answer late
    finally:
        if worker.is_alive():  # the verifier did not kill it: do not leave a stopped worker to later tests
            worker.kill()
            worker.join()
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert f"{gold!r} with answer {answer!r} took longer than 0.2 s" in warnings[0].getMessage()
    # A fresh worker replaces it (start_verifier waits out its start, which can take many seconds on a loaded
    # machine) and the same pair gets its real verdict, under a limit no load makes it exceed.
    start_verifier()
    (fresh,) = verifier_workers()
    assert fresh is not worker
    assert is_equivalent(gold, answer, timeout_s=60)
    assert verifier_workers() == [fresh]


def test_start_verifier_starts_one_worker_ahead_of_the_first_comparison():
    for worker in verifier_workers():  # whatever an earlier test left running
        worker.kill()
        worker.join()
    start_verifier()
    started = verifier_workers()
    assert len(started) == 1 and started[0].is_alive()
    start_verifier()
    assert is_equivalent("\\frac{1}{2}", "0.5") and verifier_workers() == started  # the same worker serves


HUGE = "1" + "0" * 5000  # past int()'s 4300-digit limit for strings


@pytest.mark.parametrize(
    ("gold", "answer", "expected"),
    [
        (HUGE, HUGE + "0", False),
        (HUGE, f" +000{HUGE} ", True),  # sign, leading zeros and spaces do not matter
        (HUGE, f"-{HUGE}", False),
        ("-0", "0", True),
        ("25", HUGE, False),
        (HUGE, "25", False),
        ("٣", "3", True),  # Unicode decimal digits read as int() reads them
    ],
)
def test_integers_of_any_length_are_compared_exactly(gold, answer, expected):
    assert is_equivalent(gold, answer) is expected


@pytest.mark.parametrize(
    ("gold", "answer"),
    [
        (HUGE, rf"\frac{{{HUGE}}}{{3}}"),
        (f"{HUGE}.5", "1"),
        ("nan", "NaN"),
        ("NaN", "5"),
        ("inf", r"\infty"),
        ("1e999999", "1"),
        ("\x00", "1"),
        ("\ud800", "1"),  # a lone surrogate
        ("𝟙𝟚", "12"),
        (r"\frac{1}{0}", "1"),
    ],
)
def test_any_pair_of_strings_gets_a_verdict(gold, answer):
    assert is_equivalent(gold, answer, timeout_s=60) in (True, False)


class _FakeConnection:
    """The worker's end of the pipe: hands out `requests`, then reports the parent gone."""

    def __init__(self, requests: list[tuple[str, str]]) -> None:
        self.requests, self.sent = requests, []

    def recv(self) -> tuple[str, str]:
        if not self.requests:
            raise EOFError
        return self.requests.pop(0)

    def send(self, message: object) -> None:
        self.sent.append(message)


def test_a_pair_that_makes_math_verify_raise_is_answered_and_the_worker_goes_on(monkeypatch):
    import math_verify

    from programs.core import grading

    real_parse = math_verify.parse

    def parse(text, *args, **kwargs):
        if "boom" in text:
            raise RecursionError("maximum recursion depth exceeded")
        return real_parse(text, *args, **kwargs)

    monkeypatch.setattr(math_verify, "parse", parse)
    math_verify_logger = logging.getLogger("math_verify")
    monkeypatch.setattr(math_verify_logger, "level", math_verify_logger.level)  # the worker loop sets it
    conn = _FakeConnection([("boom", "1"), ("2", "2.0")])
    grading._serve(conn)
    assert conn.sent == [
        "ready",
        "made math-verify raise RecursionError: maximum recursion depth exceeded",
        True,
    ]


def test_an_error_from_the_worker_is_logged_with_the_label(monkeypatch):
    from programs.core import grading

    gold = f"\\frac{{1}}{{{uuid.uuid4().int}}}"  # a pair no earlier call cached
    monkeypatch.setattr(grading._VERIFIER, "verify", lambda *_: "made math-verify raise ValueError: x")
    with grading_warnings() as warnings:
        assert is_equivalent(gold, "0", label="aime25/I-1") is False
    assert [w.getMessage() for w in warnings] == [
        f"aime25/I-1: Comparing gold {gold!r} with answer '0' made math-verify raise ValueError: x; "
        "counted as not equivalent"
    ]


def test_a_worker_that_died_unnoticed_counts_as_a_crash(monkeypatch):
    from programs.core import grading

    start_verifier()
    (worker,) = verifier_workers()
    worker.kill()
    worker.join()
    # As if it died between the liveness check and the request: sending then fails on a closed pipe.
    monkeypatch.setattr(grading._VERIFIER, "_ensure_started", lambda: None)
    with grading_warnings() as warnings:
        assert is_equivalent(f"\\frac{{1}}{{{uuid.uuid4().int}}}", "0", label="p7") is False
    assert len(warnings) == 1 and "p7: " in warnings[0].getMessage()
    assert "crashed the math-verify worker" in warnings[0].getMessage()
    monkeypatch.undo()
    assert is_equivalent(r"\frac{1}{2}", "0.5")  # the next call starts a fresh worker
