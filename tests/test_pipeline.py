"""The pipeline on the real CPU engine: synthesis streams while later problems explore, and unanimous paths skip
synthesis only when asked."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

from programs.core.config import RunConfig, SamplingConfig
from programs.core.records import Problem
from programs.datasets import load_problems
from programs.engine_handle import EngineHandle
from programs.pipeline import Pipeline

SAMPLING = SamplingConfig(max_tokens=24)
CONFIG = RunConfig(
    n=2, explorer=SAMPLING, synthesizer=SAMPLING, explorer_model="tiny", synthesizer_model="tiny"
)


def test_pipeline_streams_synthesis_while_later_problems_explore(cpu_handle, fresh_question):
    config = CONFIG
    problems = [Problem(str(i), fresh_question(), "42") for i in range(3)]
    records = []
    # One problem explored and one synthesized at a time.
    Pipeline(config, cpu_handle, cpu_handle).run(problems, records.append, slots=(1, 1))
    assert sorted(r.id for r in records) == ["0", "1", "2"]
    by_id = {r.id: r.timings for r in records}
    # Problem 0 was synthesized before problem 2 had finished exploring: no stage waits for the dataset.
    assert by_id["0"]["synthesis_started_at"] < by_id["2"]["explored_at"]
    for began, ended in ("explore_started_at", "explored_at"), ("synthesis_started_at", "synthesized_at"):
        spans = sorted((t[began], t[ended]) for t in by_id.values())
        assert all(first[1] <= second[0] for first, second in pairwise(spans))  # the slots held: no overlap
    for record in records:
        assert len(record.paths) == 2 and record.synthesizer.text
        assert set(record.self_consistency) == {"answer", "correct"}


def test_unanimous_paths_skip_synthesis_only_when_asked(cpu_engine):
    explorer = EngineHandle.attach(cpu_engine.explorer)
    sampling = SamplingConfig(512)
    problem = load_problems("chain:1:1")[0]
    config = RunConfig(4, sampling, sampling, "tiny", "tiny", skip_synthesis_if_unanimous=True)
    paths = Pipeline(config, explorer, explorer).explore(problem)
    same = [replace(p, answer="7") for p in paths]
    skipped = Pipeline(config, explorer, explorer).synthesize(problem, same)
    assert skipped.finish_reason == "unanimous" and skipped.answer == "7" and skipped.completion_tokens == 0
    default = RunConfig(4, sampling, sampling, "tiny", "tiny")
    assert Pipeline(default, explorer, explorer).synthesize(problem, same).completion_tokens > 0
