"""Trace stores and samples files read as traces: equivalent answers made one, a cut-off last line dropped with
a note. Pure: no engine."""

from __future__ import annotations

import json

from benchmarks.traces import Trace, read_samples
from programs.core.stopping import (
    PathTrace,
)


def test_equivalent_finals_are_one_answer_and_integer_probes_join_their_class():
    trace = Trace(
        "t",
        "1/2",
        [PathTrace(9, "1/2", [(5, "3")]), PathTrace(9, "0.5", [(5, "003")]), PathTrace(9, "3", [(5, "1/2")])],
        [None] * 3,
    )
    grouped = trace.grouped()
    assert grouped.answers == ["1/2", "1/2", "3"]
    assert [p.probes for p in grouped.paths] == [[(5, "3")], [(5, "3")], [(5, "1/2")]]


class WordCounter:
    """A tokenizer stand-in for samples files: one token per word."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[str]:
        return text.split()


def test_a_cut_off_last_line_of_samples_is_dropped_with_a_note_too(tmp_path):
    samples = tmp_path / "s.jsonl"
    row = {"gold": "2", "out": ["so \\boxed{2}", "well then \\boxed{3}"]}
    samples.write_text(json.dumps(row) + "\n" + '{"gold": "5", "out": ["\\\\box')
    notes: list[str] = []
    traces = read_samples(samples, "gold", "out", WordCounter(), notes.append)
    assert [t.lengths for t in traces] == [[2, 3]] and "cut-off last line" in notes[0]
