"""Cost by the paper's formula: Table 4 reproduced from its own token counts, prices, records and the CLI."""

from __future__ import annotations

import json

import pytest

from benchmarks.cost import (
    DEFAULT_PRICES,
    TABLE4_4B_TO_8B,
    Price,
    Tokens,
    estimate_cost,
    load_prices,
    main,
    mean_cost,
    model_key,
    price_of,
    record_cost,
    record_tokens,
)
from programs.core.records import PathRecord, ProblemRecord

# Paper appendix A.1, Table 4 (all 20 rows): explorer model, tokens in/out per path, synthesizer model (8B(Opt) is an 8B,
# priced as one), tokens in/out, and the "Cost/1K" column. A2R rows use N=4; baseline rows are one sample.
TABLE_4 = [
    ("aime24 4B->4B", "qwen3-4b", (105, 15768), "qwen3-4b", (4577, 4796), 0.201),
    ("aime24 4B->8B", "qwen3-4b", (105, 15768), "qwen3-8b", (4577, 4879), 0.212),
    ("aime24 4B->8B(Opt)", "qwen3-4b", (105, 15768), "qwen3-8b", (4577, 4428), 0.211),
    ("aime24 8B", "qwen3-8b", (105, 15895), None, None, 0.078),
    ("aime24 32B", "qwen3-32b", (105, 13783), None, None, 0.271),
    ("aime25 4B->4B", "qwen3-4b", (159, 19205), "qwen3-4b", (4610, 5808), 0.245),
    ("aime25 4B->8B", "qwen3-4b", (159, 19205), "qwen3-8b", (4610, 5807), 0.257),
    ("aime25 4B->8B(Opt)", "qwen3-4b", (159, 19205), "qwen3-8b", (4610, 4574), 0.251),
    ("aime25 8B", "qwen3-8b", (159, 19744), None, None, 0.097),
    ("aime25 32B", "qwen3-32b", (159, 17286), None, None, 0.341),
    ("beyond_aime 4B->4B", "qwen3-4b", (129, 19263), "qwen3-4b", (4293, 4622), 0.242),
    ("beyond_aime 4B->8B", "qwen3-4b", (129, 19263), "qwen3-8b", (4293, 4766), 0.253),
    ("beyond_aime 4B->8B(Opt)", "qwen3-4b", (129, 19263), "qwen3-8b", (4293, 5032), 0.254),
    ("beyond_aime 8B", "qwen3-8b", (129, 20553), None, None, 0.101),
    ("beyond_aime 32B", "qwen3-32b", (129, 18554), None, None, 0.365),
    ("average 4B->4B", "qwen3-4b", (130, 18597), "qwen3-4b", (4406, 4884), 0.235),
    ("average 4B->8B", "qwen3-4b", (130, 18597), "qwen3-8b", (4406, 4982), 0.246),
    ("average 4B->8B(Opt)", "qwen3-4b", (130, 18597), "qwen3-8b", (4406, 4832), 0.245),
    ("average 8B", "qwen3-8b", (130, 18731), None, None, 0.092),
    ("average 32B", "qwen3-32b", (130, 17422), None, None, 0.343),
]


@pytest.mark.parametrize("row", TABLE_4, ids=[row[0] for row in TABLE_4])
def test_reproduces_table_4_cost_column_within_3_percent(row):
    _, explorer, explorer_tokens, synthesizer, synthesizer_tokens, paper = row
    cost = estimate_cost(
        DEFAULT_PRICES,
        explorer,
        4 if synthesizer else 1,
        Tokens(*explorer_tokens),
        synthesizer,
        Tokens(*synthesizer_tokens) if synthesizer_tokens else None,
    )
    assert cost.total == pytest.approx(paper, rel=0.03)


def test_table4_constant_is_the_4b_to_8b_average_row():
    (row,) = [row for row in TABLE_4 if row[0] == "average 4B->8B"]
    _, _, (explorer_in, explorer_out), _, (synthesizer_in, synthesizer_out), _ = row
    assert TABLE4_4B_TO_8B == {
        "explorer_in": explorer_in,
        "explorer_out": explorer_out,
        "synthesizer_in": synthesizer_in,
        "synthesizer_out": synthesizer_out,
    }


def test_formula_stages():
    t = TABLE4_4B_TO_8B
    explorer_tokens = Tokens(t["explorer_in"], t["explorer_out"])
    synthesizer_tokens = Tokens(t["synthesizer_in"], t["synthesizer_out"])
    cost = estimate_cost(DEFAULT_PRICES, "qwen3-4b", 4, explorer_tokens, "qwen3-8b", synthesizer_tokens)
    # By hand: 4 x (130 x 0.0003 + 18597 x 0.003) / 1000 = 4 x 55.83 / 1000 = 0.22332;
    # (4406 x 0.0005 + 4982 x 0.005) / 1000 = (2.203 + 24.91) / 1000 = 0.027113.
    assert cost.as_dict() == pytest.approx(
        {"explorer": 0.22332, "synthesizer": 0.027113, "total": 0.250433}, rel=1e-12
    )
    plain = estimate_cost(DEFAULT_PRICES, "qwen3-4b", 4, explorer_tokens)
    assert plain.as_dict() == pytest.approx({"explorer": 0.22332, "synthesizer": 0.0, "total": 0.22332})


def test_hub_ids_and_paths_alias_price_keys():
    assert model_key("Qwen/Qwen3-4B") == "qwen3-4b"
    assert model_key("/models/QWEN3-32B/") == "qwen3-32b"
    assert price_of("Qwen/Qwen3-8B", DEFAULT_PRICES) == Price(0.0005, 0.005)
    by_hub = estimate_cost(DEFAULT_PRICES, "Qwen/Qwen3-4B", 4, Tokens(1, 2), "Qwen/Qwen3-8B", Tokens(3, 4))
    assert by_hub == estimate_cost(DEFAULT_PRICES, "qwen3-4b", 4, Tokens(1, 2), "qwen3-8b", Tokens(3, 4))


def test_unknown_model_lists_known_keys():
    with pytest.raises(
        ValueError, match="no price for model 'meta/Llama-3-8B'.*qwen3-32b, qwen3-4b, qwen3-8b"
    ):
        price_of("meta/Llama-3-8B", DEFAULT_PRICES)


def test_price_overrides_from_file_then_command_line(tmp_path):
    file = tmp_path / "prices.json"
    file.write_text(
        json.dumps({"Qwen/Qwen3-4B": {"input": 1, "output": 2}, "tiny": {"input": 0, "output": 0}})
    )
    prices = load_prices(file, ["qwen3-8b=0.1,0.2", "TINY=3,4"])
    assert prices["qwen3-4b"] == Price(1, 2)
    assert prices["qwen3-8b"] == Price(0.1, 0.2)
    assert prices["tiny"] == Price(3, 4)
    assert prices["qwen3-32b"] == DEFAULT_PRICES["qwen3-32b"]
    assert DEFAULT_PRICES["qwen3-4b"] == Price(0.0003, 0.003)  # the defaults are not mutated


@pytest.mark.parametrize(
    "overrides,message",
    [(["qwen3-4b"], "MODEL=IN,OUT"), (["qwen3-4b=1"], "two numbers"), (["x=-1,2"], "non-negative")],
)
def test_bad_price_override(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_prices(overrides=overrides)


def test_bad_price_file(tmp_path):
    file = tmp_path / "prices.json"
    file.write_text(json.dumps({"qwen3-4b": [1, 2]}))
    with pytest.raises(ValueError, match="price of 'qwen3-4b' must be"):
        load_prices(file)


def test_bad_estimate_arguments():
    with pytest.raises(ValueError, match="n must be at least 1"):
        estimate_cost(DEFAULT_PRICES, "qwen3-4b", 0, Tokens(1, 1))
    with pytest.raises(ValueError, match="both its model and its token counts"):
        estimate_cost(DEFAULT_PRICES, "qwen3-4b", 4, Tokens(1, 1), "qwen3-8b")


def path(prompt: int, completion: int) -> dict:
    return {"text": "...", "prompt_tokens": prompt, "completion_tokens": completion, "cached_tokens": 0}


RECORDS = [
    {
        "id": "a",
        "config": {"explorer_model": "Qwen/Qwen3-4B", "synthesizer_model": "Qwen/Qwen3-8B"},
        "paths": [path(100, 1000), path(100, 2000)],
        "synthesizer": {"prompt_tokens": 500, "completion_tokens": 400},
    },
    {
        "id": "b",
        "config": {"explorer_model": "Qwen/Qwen3-4B", "synthesizer_model": "Qwen/Qwen3-8B"},
        "paths": [path(100, 0), path(100, 0)],
        "synthesizer": {"prompt_tokens": 1000, "completion_tokens": 0},
    },
]


def test_record_cost_sums_paths_and_adds_the_synthesizer():
    first = record_cost(RECORDS[0], DEFAULT_PRICES)
    assert first.explorer == pytest.approx((100 * 0.0003 + 1000 * 0.003 + 100 * 0.0003 + 2000 * 0.003) / 1000)
    assert first.synthesizer == pytest.approx((500 * 0.0005 + 400 * 0.005) / 1000)
    run = mean_cost([record_cost(r, DEFAULT_PRICES) for r in RECORDS])
    assert run.explorer == pytest.approx((0.00906 + 0.00006) / 2)
    assert run.synthesizer == pytest.approx((0.00225 + 0.0005) / 2)


def test_record_cost_models_from_arguments_or_symmetric_config():
    at_32b = record_cost(
        RECORDS[1], DEFAULT_PRICES, explorer_model="qwen3-32b", synthesizer_model="qwen3-32b"
    )
    assert (at_32b.explorer, at_32b.synthesizer) == pytest.approx(
        (2 * 100 * 0.002 / 1000, 1000 * 0.002 / 1000)
    )
    symmetric = dict(RECORDS[1], config={"explorer_model": "Qwen/Qwen3-4B"})
    assert record_cost(symmetric, DEFAULT_PRICES).synthesizer == pytest.approx(1000 * 0.0003 / 1000)


def test_record_missing_token_counts_is_named():
    broken = dict(RECORDS[0], paths=[{"text": "...", "prompt_tokens": 3}])
    with pytest.raises(ValueError, match="record 'a' path 0: missing completion_tokens"):
        record_cost(broken, DEFAULT_PRICES)
    no_key = {k: v for k, v in RECORDS[0].items() if k != "synthesizer"}
    with pytest.raises(ValueError, match="record 'a': no 'synthesizer' entry"):
        record_cost(no_key, DEFAULT_PRICES)
    with pytest.raises(ValueError, match="record 'a': 'synthesizer' must be an object or null, got 'x'"):
        record_cost(dict(RECORDS[0], synthesizer="x"), DEFAULT_PRICES)


def unsynthesized_records() -> list[dict]:
    """Records as `python -m programs.a2r --no-synthesis` writes them: the paths, and a null synthesizer."""
    config = {"explorer_model": "Qwen/Qwen3-4B", "synthesizer_model": "Qwen/Qwen3-8B", "synthesize": False}
    return [
        ProblemRecord(
            id=record["id"],
            problem="p",
            gold="1",
            config=config,
            paths=[PathRecord.from_json(path) for path in record["paths"]],
            self_consistency={"answer": None, "correct": False},
            synthesizer=None,
            timings={},
        ).to_json()
        for record in RECORDS
    ]


def test_record_without_synthesis_costs_its_paths_only():
    record = unsynthesized_records()[0]
    assert record["synthesizer"] is None
    cost = record_cost(record, DEFAULT_PRICES)
    assert cost.explorer == pytest.approx(record_cost(RECORDS[0], DEFAULT_PRICES).explorer)
    assert cost.synthesizer == 0.0


def test_cli_tokens_json(capsys):
    argv = ["--explorer-model", "Qwen/Qwen3-32B", "--n", "1", "--explorer-tokens", "130,17422", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    # By hand: (130 x 0.002 + 17422 x 0.02) / 1000 = (0.26 + 348.44) / 1000 = 0.3487 (the paper: 0.343).
    assert out == {
        "explorer": pytest.approx(0.3487, rel=1e-12),
        "synthesizer": 0.0,
        "total": pytest.approx(0.3487, rel=1e-12),
        "n": 1,
        "currency": "CNY",
    }


def table_rows(out: str) -> list[list[str]]:
    """The stripped cells of each header and body line of a rich table."""
    return [
        [cell.strip() for cell in line.split(line[0])[1:-1]]
        for line in out.splitlines()
        if line.startswith(("┃", "│"))
    ]


def test_cli_table_and_price_flag(capsys):
    argv = ["--explorer-model", "tiny", "--explorer-tokens", "1000,1000", "--n", "2", "--price", "tiny=1,2"]
    assert main(argv) == 0
    # By hand: each path (1000 x 1 + 1000 x 2) / 1000 = 3 CNY, so 2 paths cost 6; no synthesizer.
    assert table_rows(capsys.readouterr().out) == [
        ["stage", "detail", "cost (CNY/problem)"],
        ["explorer", "2 x tiny 1000,1000", "6"],
        ["synthesizer", "-", "0"],
        ["total", "", "6"],
    ]


def test_cli_records(tmp_path, capsys):
    file = tmp_path / "records.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    assert main(["--records", str(file), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # By hand, per problem: explorer (0.00906 + 0.00006) / 2 = 0.00456, synthesizer (0.00225 + 0.0005) / 2.
    assert out == {
        "problems": 2,
        "cons": pytest.approx({"explorer": 0.00456, "synthesizer": 0.0, "total": 0.00456}),
        "a2r": pytest.approx({"explorer": 0.00456, "synthesizer": 0.001375, "total": 0.005935}),
        "currency": "CNY",
    }


def test_cli_records_without_synthesis_price_cons_only(tmp_path, capsys):
    file = tmp_path / "records.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in unsynthesized_records()))
    assert main(["--records", str(file), "--json"]) == 0
    # The explorer side as in test_cli_records; there is no A2R@N to price.
    assert json.loads(capsys.readouterr().out) == {
        "problems": 2,
        "cons": pytest.approx({"explorer": 0.00456, "synthesizer": 0.0, "total": 0.00456}),
        "a2r": None,
        "currency": "CNY",
    }
    assert main(["--records", str(file)]) == 0
    assert table_rows(capsys.readouterr().out) == [
        ["stage", "detail", "cost (CNY/problem)"],
        ["Cons@N", "explorer paths", "0.00456"],
        ["A2R@N", "no synthesizer (a --no-synthesis run)", "-"],
    ]


def test_cli_records_mixing_runs_with_and_without_synthesis_are_refused(tmp_path, capsys):
    file = tmp_path / "records.jsonl"
    file.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps(unsynthesized_records()[1]) + "\n")
    assert main(["--records", str(file)]) == 2
    assert f"{file}: 1 of 2 records have no synthesizer (e.g. 'b')" in capsys.readouterr().err


def test_cli_empty_records_file_is_named(tmp_path, capsys):
    file = tmp_path / "records.jsonl"
    file.write_text("")
    assert main(["--records", str(file)]) == 2
    assert capsys.readouterr().err == f"error: {file}: no records to price\n"


def test_cli_errors(capsys):
    assert main(["--explorer-model", "llama", "--explorer-tokens", "1,1"]) == 2
    assert "no price for model 'llama'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--explorer-model", "qwen3-4b", "--synthesizer-model", "qwen3-8b", "--explorer-tokens", "1,1"])
    assert exit_.value.code == 2 and "go together" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--records", "r.jsonl", "--n", "4"])
    assert exit_.value.code == 2 and "--records takes its token counts" in capsys.readouterr().err


def test_a_record_of_several_synthesizer_calls_costs_every_one():
    # M syntheses voted, or RSA's rounds: `synthesizer` is the call the vote chose, `syntheses` all of them.
    calls = [
        {"prompt_tokens": 500, "completion_tokens": 400},
        {"prompt_tokens": 300, "completion_tokens": 200},
    ]
    record = dict(RECORDS[0], synthesizer=calls[0], syntheses=calls)
    cost = record_cost(record, DEFAULT_PRICES)
    assert cost.explorer == pytest.approx(record_cost(RECORDS[0], DEFAULT_PRICES).explorer)
    assert cost.synthesizer == pytest.approx((800 * 0.0005 + 600 * 0.005) / 1000)
    assert record_tokens(record) == record_tokens(RECORDS[0]) + 300 + 200
