"""Real CPU engines: two when the models differ (each pinned to its own core), stopped on the way out."""

from __future__ import annotations

from engine.launch import model_info, serve
from engine.layout import EngineConfig, plan
from engine.ports import check_port_free
from programs.core.config import RunConfig, SamplingConfig
from programs.core.records import Problem
from programs.engine_handle import EngineHandle
from programs.offline.model import offline_models
from programs.pipeline import Pipeline


def test_different_models_get_two_engines_that_are_stopped_afterwards(tiny_model, tmp_path, port):
    other = offline_models(
        seed=1, trained=False
    ).synthesizer  # any second model will do: random ones build fast
    config = EngineConfig(explorer_model=str(tiny_model), synthesizer_model=str(other), port=port)
    engines = plan(config, device="cpu", cpu_count=2)
    assert engines.layout == "cpu" and len(engines.to_launch) == 2
    with serve(engines, tmp_path / "logs") as running:
        assert model_info(running.explorer)["model_path"] == str(tiny_model)
        assert model_info(running.synthesizer)["model_path"] == str(other)
        sampling = SamplingConfig(max_tokens=16)
        run = RunConfig(
            n=2, explorer=sampling, synthesizer=sampling, explorer_model="a", synthesizer_model="b"
        )
        records = []
        stages = EngineHandle.attach_roles(running)
        assert stages[0] is not stages[1] and stages[0].backend.base_url != stages[1].backend.base_url
        Pipeline(run, *stages).run([Problem("x", "What is 2 + 2?", "4")], records.append)
        assert len(records) == 1 and records[0].synthesizer.completion_tokens > 0
    assert {p.name for p in (tmp_path / "logs").iterdir()} == {"explorer.log", "synthesizer.log"}
    for spec in engines.to_launch:  # nothing listens any more: raises if a server survived
        check_port_free(spec.host, spec.port)


def test_same_model_serves_both_roles_from_one_engine(cpu_engine):
    assert cpu_engine.explorer is cpu_engine.synthesizer
    assert len(cpu_engine.to_launch) == 1
    explorer, synthesizer = EngineHandle.attach_roles(cpu_engine)
    assert explorer is synthesizer  # one tokenizer load, one backend
