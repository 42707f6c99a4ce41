"""The problem loader: shipped sets, local files, field mapping and the errors bad input must give."""

from __future__ import annotations

import json
import re

import datasets
import pytest

from programs.core.records import Problem
from programs.datasets import DatasetError, load_problems, question_problem, shipped_names

SHIPPED_ROWS = {
    "aime24": 30,
    "aime25": 30,
    "beyond_aime": 100,
    "math500": 500,
    "gsm8k": 1319,
    "chain": 100,
    "synthetic": 100,
}


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def test_shipped_names_are_the_documented_sets():
    assert sorted(SHIPPED_ROWS) == shipped_names()


@pytest.mark.parametrize("name,rows", sorted(SHIPPED_ROWS.items()))
def test_shipped_set_loads_with_documented_row_count(name, rows):
    problems = load_problems(name)
    assert len(problems) == rows
    assert all(p.id and p.problem.strip() and p.answer.strip() for p in problems)
    assert len({p.id for p in problems}) == rows


def test_shipped_ids_and_answers_map_from_each_source():
    assert load_problems("aime25", limit=1)[0] == Problem(
        "I-1", "Find the sum of all integer bases $b > 9$ for which $17_b$ is a divisor of $97_b$.", "70"
    )
    assert load_problems("aime24", limit=1)[0].id == "60"  # integer ids become strings
    assert load_problems("math500", limit=1)[0].id == "test/precalculus/807.json"  # unique_id
    beyond = load_problems("beyond_aime", limit=1)[0]  # question/answer, id from the row index
    assert (beyond.id, beyond.answer) == ("0", "3")
    assert beyond.problem.startswith("An explorer is challenging to pass through a maze")


def test_gsm8k_answer_is_the_number_after_the_mark_without_commas(tmp_path):
    gold = load_problems("gsm8k", limit=3)
    assert [p.answer for p in gold] == ["18", "3", "70000"]  # the third is written "#### 70,000" upstream
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "work\n#### 1,234,567"}])
    assert load_problems(path)[0].answer == "1234567"


def test_limit_keeps_the_first_problems_in_order():
    full = load_problems("aime25")
    assert load_problems("aime25", limit=5) == full[:5]
    assert load_problems("aime25", limit=1000) == full
    with pytest.raises(DatasetError, match="limit must be at least 1"):
        load_problems("aime25", limit=0)


def test_local_jsonl_maps_alternative_field_names(tmp_path):
    rows = [{"Question": "1+1?", "Answer": 2}, {"problem": "2+2?", "answer": "4", "unique_id": "u1"}]
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n", encoding="utf-8")
    assert load_problems(str(path)) == [Problem("0", "1+1?", "2"), Problem("u1", "2+2?", "4")]


def test_local_json_list(tmp_path):
    path = tmp_path / "set.json"
    path.write_text(json.dumps([{"id": 7, "question": "q7", "answer": "a"}]), encoding="utf-8")
    assert load_problems(str(path)) == [Problem("7", "q7", "a")]


def test_local_parquet(tmp_path):
    path = tmp_path / "set.parquet"
    datasets.Dataset.from_list([{"question": f"q{i}", "answer": str(i)} for i in range(3)]).to_parquet(
        str(path)
    )
    assert load_problems(str(path), limit=2) == [Problem("0", "q0", "0"), Problem("1", "q1", "1")]


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"problem": "p", "answer": "1"}\n{"problem": "p2", "answer": \n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"broken\.jsonl:2: malformed JSON"):
        load_problems(str(path))


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = write_jsonl(tmp_path / "list.jsonl", [{"problem": "p", "answer": "1"}, ["p", "1"]])
    with pytest.raises(DatasetError, match=r"list\.jsonl:2: expected a JSON object, got list"):
        load_problems(path)


@pytest.mark.parametrize("missing,row", [("answer", {"problem": "p"}), ("problem", {"answer": "1", "x": 2})])
def test_row_without_problem_or_answer_names_file_row_and_field(tmp_path, missing, row):
    path = write_jsonl(tmp_path / "gaps.jsonl", [{"problem": "ok", "answer": "1"}, row])
    with pytest.raises(DatasetError, match=rf"gaps\.jsonl:2: missing field '{missing}'"):
        load_problems(path)


def test_blank_answer_counts_as_missing(tmp_path):
    path = write_jsonl(tmp_path / "blank.jsonl", [{"problem": "p", "answer": "  "}])
    with pytest.raises(DatasetError, match="missing field 'answer'"):
        load_problems(path)


def test_duplicate_ids_are_an_error(tmp_path):
    rows = [{"id": 1, "problem": "a", "answer": "1"}, {"id": "1", "problem": "b", "answer": "2"}]
    path = write_jsonl(tmp_path / "dup.jsonl", rows)
    with pytest.raises(DatasetError, match=r"dup\.jsonl:2: duplicate id '1' \(first at .*dup\.jsonl:1\)"):
        load_problems(path)


def test_unknown_name_lists_the_known_names():
    with pytest.raises(DatasetError, match="unknown dataset 'aime2024'") as err:
        load_problems("aime2024")
    assert all(name in str(err.value) for name in SHIPPED_ROWS)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DatasetError, match="nowhere.jsonl: no such file"):
        load_problems(str(tmp_path / "nowhere.jsonl"))


def test_hub_dataset_offline_fails_naming_the_repo(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # fail fast instead of retrying the network
    with pytest.raises(DatasetError, match="hub dataset 'HuggingFaceH4/MATH-500' \\(split 'test'\\)"):
        load_problems("hf:HuggingFaceH4/MATH-500")


def test_bad_hub_spec():
    with pytest.raises(DatasetError, match="bad hub dataset"):
        load_problems("hf:")


def test_question_problem():
    assert question_problem("  What is 2+2? ") == Problem("q0", "What is 2+2?", "")
    with pytest.raises(DatasetError, match="empty"):
        question_problem("   ")


@pytest.mark.parametrize(
    ("row", "field", "got"),
    [
        ({"problem": "p", "answer": [1, 2]}, "answer", "list [1, 2]"),
        ({"problem": "p", "answer": {"value": 1}}, "answer", "dict {'value': 1}"),
        ({"problem": "p", "answer": True}, "answer", "bool True"),
        ({"problem": "p", "answer": float("nan")}, "answer", "float nan"),
        ({"problem": ["p"], "answer": "1"}, "problem", "list ['p']"),
        ({"question": {"text": "p"}, "answer": "1"}, "question", "dict {'text': 'p'}"),
        ({"problem": False, "answer": "1"}, "problem", "bool False"),
        ({"problem": 12, "answer": "1"}, "problem", "int 12"),  # a number is an answer, not a problem
    ],
)
def test_values_that_are_not_text_are_refused_naming_line_and_field(tmp_path, row, field, got):
    path = write_jsonl(tmp_path / "typed.jsonl", [{"problem": "ok", "answer": "1"}, row])
    with pytest.raises(
        DatasetError, match=rf"typed\.jsonl:2: field '{field}' \(\w+\) must be .*, got {re.escape(got)}$"
    ):
        load_problems(path)


def test_numbers_are_answers(tmp_path):
    rows = [{"problem": "a", "answer": 70}, {"problem": "b", "answer": 2.5}, {"problem": "c", "answer": 0}]
    assert [p.answer for p in load_problems(write_jsonl(tmp_path / "n.jsonl", rows))] == ["70", "2.5", "0"]


def test_json_list_row_that_is_not_text_names_the_row(tmp_path):
    path = tmp_path / "set.json"
    path.write_text(json.dumps([{"problem": "p", "answer": "1"}, {"problem": "q", "Answer": [3]}]))
    with pytest.raises(DatasetError, match=r"set\.json row 1: field 'Answer' \(answer\) must be text"):
        load_problems(str(path))


def test_json_number_python_will_not_read_names_the_file(tmp_path):
    path = tmp_path / "huge.json"
    path.write_text('[{"problem": "p", "answer": ' + "9" * 5000 + "}]")
    with pytest.raises(DatasetError, match=r"huge\.json: cannot be read as JSON \(Exceeds the limit"):
        load_problems(str(path))


@pytest.mark.parametrize(
    ("name", "text"), [("empty.jsonl", ""), ("blank.jsonl", "\n\n"), ("empty.json", "[]")]
)
def test_a_set_with_no_problems_is_an_error(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DatasetError, match=rf"^dataset '.*{name}' has no problems$"):
        load_problems(str(path), limit=3)


@pytest.mark.parametrize(
    "entry_point",
    [
        ["programs.a2r", "--dataset", "{data}"],
        ["rl.curate", "--dataset", "{data}", "--output", "{out}"],
    ],
)
def test_entry_points_refuse_an_empty_set_in_one_line(tmp_path, capsys, monkeypatch, entry_point):
    import importlib

    monkeypatch.chdir(tmp_path)  # a default output folder, if one were made, lands here
    data, out = tmp_path / "empty.jsonl", tmp_path / "out"
    data.write_text("")
    module, *argv = [arg.format(data=data, out=out) for arg in entry_point]
    # A port nothing listens on: nothing may start or call an engine before the dataset is read.
    main = importlib.import_module(module).main
    assert main([*argv, "--explorer-url", "http://127.0.0.1:9"]) == 2
    assert capsys.readouterr().out == f"error: dataset '{data}' has no problems\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl"]
