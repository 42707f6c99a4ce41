"""A run planned from `python -m programs.a2r`'s flags before anything starts (`programs.planning`): the
profile and its default problem set, and token budgets fitted to each role's context."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from programs import planning
from programs.a2r import main, parse_args


@pytest.mark.parametrize(
    ("argv", "dataset"),
    [
        ([], "chain"),  # no GPU, no model: the offline pair, on the task it was trained on
        (["--explorer-model", "Qwen/Qwen3-4B"], "aime24"),
        (["--explorer-url", "http://127.0.0.1:1"], "aime24"),
        (["--device", "cuda"], "aime24"),
        (["--dataset", "aime25"], "aime25"),
        (["--question", "What is 2 + 2?"], None),
    ],
)
def test_default_dataset_follows_the_model(argv, dataset):
    args = parse_args(argv)
    default = None if args.question else planning.profile_for(args)[0].datasets[0]
    assert (args.dataset or default) == dataset


def model_folder(path: Path, context: int) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"max_position_embeddings": context}))
    return path


def test_a_named_models_default_budgets_are_capped_to_its_context(tmp_path, capsys):
    args = parse_args(["--device", "cpu", "--explorer-model", str(model_folder(tmp_path / "m", 4096))])
    _, config = planning.plan_run(args, *planning.profile_for(args))
    assert (config.explorer.max_tokens, config.synthesizer.max_tokens) == (2048, 2048)
    out = capsys.readouterr().out
    assert "explorer budget capped to 2048" in out and "--explorer-max-tokens" in out


def test_a_budget_given_over_the_context_is_refused_naming_its_flag(tmp_path, capsys):
    model = model_folder(tmp_path / "m", 4096)
    argv = ["--device", "cpu", "--explorer-model", str(model), "--synthesizer-max-tokens", "4096",
            "--output", str(tmp_path / "r")]  # fmt: skip
    code, out = main(argv), capsys.readouterr().out
    assert code == 2 and "--synthesizer-max-tokens 4096" in out and "(4096 tokens)" in out
    assert not (tmp_path / "r" / "logs").exists()  # refused before any engine started


def test_a_remote_engines_budgets_fit_the_context_it_reports(cpu_engine):
    args = parse_args(["--explorer-url", cpu_engine.explorer.base_url])
    _, config = planning.plan_run(args, *planning.profile_for(args))
    assert config.explorer.max_tokens == config.synthesizer.max_tokens == 2048  # the offline model's 4096 / 2
