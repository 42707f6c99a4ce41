"""The `python -m benchmarks.score` CLI on small JSONL files, with figures checked by hand."""

import json

import pytest

from benchmarks.score import main


def _write(tmp_path, rows):
    path = tmp_path / "samples.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def _run_json(capsys, argv):
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_answers_key(tmp_path, capsys):
    path = _write(
        tmp_path,
        [
            # 2 of 4 correct; groups [7,8] tie -> 7 right, [8,007] tie -> 8 wrong.
            {"gold": "7", "answers": ["7", "8", "8", "007"]},
            # 0 of 4 correct; nobody answered in either group.
            {"gold": 3, "answers": [None, None, None, ""]},
        ],
    )
    out = _run_json(capsys, [str(path), "--gold-key", "gold", "--answers-key", "answers", "--n", "2"])
    assert list(out) == ["pass@1", "cons@2", "pass@2", "problems", "samples", "no_answer"]
    # pass@2 of the first problem: 1 - C(2,2)/C(4,2) = 5/6.
    assert out == pytest.approx(
        {
            "pass@1": (50 + 0) / 2,
            "cons@2": (50 + 0) / 2,
            "pass@2": (100 * 5 / 6 + 0) / 2,
            "problems": 2,
            "samples": 8,
            "no_answer": 4,
        }
    )


def test_responses_key_reads_the_answer_after_the_thinking(tmp_path, capsys):
    responses = [
        r"<think>is it \boxed{5}?</think>It is \boxed{\frac{1}{2}}.",
        r"<think>\boxed{0.5}</think>No idea.",  # the boxed answer in the thinking does not count
        r"<think>long thoughts cut off \boxed{0.",  # truncated: no answer
        r"The answer is \boxed{0.5}",  # no thinking at all: read whole
    ]
    path = _write(tmp_path, [{"answer": r"\frac{1}{2}", "responses": responses}])
    out = _run_json(capsys, [str(path), "--gold-key", "answer", "--responses-key", "responses"])
    # N defaults to k = 4: 2 of 4 correct; 1/2 and 0.5 form one group, the vote, which is right.
    assert out == {
        "pass@1": 50.0,
        "cons@4": 100.0,
        "pass@4": 100.0,
        "problems": 1,
        "samples": 4,
        "no_answer": 2,
    }


def test_table_by_default(tmp_path, capsys):
    path = _write(tmp_path, [{"gold": "1", "answers": ["1", "2"]}])
    assert main([str(path), "--gold-key", "gold", "--answers-key", "answers"]) == 0
    first, *table = capsys.readouterr().out.splitlines()
    assert first == f"{path}: 1 problems, 2 samples, 0 without an answer"
    # 1 of 2 correct; the one group [1, 2] is a tie won by 1, the first seen.
    rows = [
        [cell.strip() for cell in line.split(line[0])[1:-1]] for line in table if line.startswith(("┃", "│"))
    ]
    assert rows == [["pass@1", "cons@2", "pass@2"], ["50.00", "100.00", "100.00"]]


@pytest.mark.parametrize(
    ("rows", "extra", "message"),
    [
        (
            ['{"gold": "1", "answers": ["1"]}', '{"gold": "1", "answers": '],
            [],
            "samples.jsonl:2: malformed JSON",
        ),
        ([{"gold": "1", "answers": ["1"]}, {"answers": ["1"]}], [], "samples.jsonl:2: no key 'gold'"),
        ([{"gold": "1", "answers": "1"}], [], "samples.jsonl:1: 'answers' must be a non-empty list"),
        ([{"gold": "1", "answers": []}], [], "samples.jsonl:1: 'answers' must be a non-empty list"),
        ([{"gold": "1", "answers": ["1", 2]}], [], "samples.jsonl:1: 'answers'[1] is int"),
        ([{"gold": None, "answers": ["1"]}], [], "samples.jsonl:1: gold answer 'gold' must be a string"),
        ([{"gold": " ", "answers": ["1"]}], [], "samples.jsonl:1: gold answer 'gold' is empty"),
        (
            [{"gold": "1", "answers": ["1"]}, '{"gold": NaN, "answers": ["1"]}'],
            [],
            "samples.jsonl:2: gold answer 'gold' must be a finite number, got nan",
        ),
        (
            ['{"gold": -Infinity, "answers": ["1"]}'],
            [],
            "samples.jsonl:1: gold answer 'gold' must be a finite",
        ),
        (["[1, 2]"], [], "samples.jsonl:1: expected a JSON object"),
        ([""], [], "no problems"),
        (
            [{"gold": "1", "answers": ["1", "2"]}, {"gold": "1", "answers": ["1"]}],
            [],
            "different numbers of samples (2 on line 1, 1 on line 2); pass --n",
        ),
        (
            [{"gold": "1", "answers": ["1", "2", "3"]}],
            ["--n", "2"],
            "samples.jsonl:1: 3 samples cannot be split",
        ),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, capsys, rows, extra, message):
    path = _write(tmp_path, rows)
    assert main([str(path), "--gold-key", "gold", "--answers-key", "answers", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert str(path) in err


def test_a_response_with_a_huge_integer_is_scored(tmp_path, capsys):
    huge = "9" * 5000  # past int()'s 4300-digit limit for strings
    responses = [rf"\boxed{{{huge}}}", rf"\boxed{{{huge}0}}", r"\boxed{7}", r"\boxed{7}"]
    rows = [{"gold": huge, "responses": responses}, {"gold": 7, "responses": responses}]
    path = _write(tmp_path, rows)
    out = _run_json(capsys, [str(path), "--gold-key", "gold", "--responses-key", "responses", "--n", "2"])
    # 1 of 4 right on line 1, 2 of 4 on line 2; the votes: [huge, huge0] a tie won by huge, [7, 7] is 7, so
    # each line has one right vote of two. pass@2: 1 - C(3,2)/C(4,2) = 1/2 and 1 - C(2,2)/C(4,2) = 5/6.
    assert out == pytest.approx(
        {
            "pass@1": (25 + 50) / 2,
            "cons@2": 50.0,
            "pass@2": (50 + 100 * 5 / 6) / 2,
            "problems": 2,
            "samples": 8,
            "no_answer": 0,
        }
    )


def test_responses_must_be_strings(tmp_path, capsys):
    path = _write(tmp_path, [{"gold": "1", "responses": [r"\boxed{1}", None]}])
    assert main([str(path), "--gold-key", "gold", "--responses-key", "responses"]) == 2
    assert "'responses'[1] is NoneType; responses must be strings" in capsys.readouterr().err


def test_file_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "samples.jsonl"
    path.write_bytes(b'{"gold": "1", "answers": ["\xff"]}\n')
    assert main([str(path), "--gold-key", "gold", "--answers-key", "answers"]) == 2
    assert capsys.readouterr().err == f"error: {path}: not UTF-8 text (byte 27: invalid start byte)\n"


def test_missing_file(tmp_path, capsys):
    path = tmp_path / "nope.jsonl"
    assert main([str(path), "--gold-key", "gold", "--answers-key", "answers"]) == 2
    assert f"{path}: cannot read" in capsys.readouterr().err


def test_exactly_one_samples_key_is_required(tmp_path, capsys):
    path = _write(tmp_path, [{"gold": "1", "answers": ["1"]}])
    with pytest.raises(SystemExit) as exit_:
        main([str(path), "--gold-key", "gold"])
    assert exit_.value.code == 2
    assert "one of the arguments --responses-key --answers-key is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([str(path), "--gold-key", "gold", "--answers-key", "a", "--responses-key", "r"])
    assert exit_.value.code == 2
    assert "--responses-key: not allowed with argument --answers-key" in capsys.readouterr().err
