"""`python -m benchmarks.references`: the conditions built from answer parts, the rewriting of a wrong part, the
verdict and the records it reads, on literal fixtures; bad input refused in one line; and the probe end to
end on the offline pair, as a user types it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.conditions import (
    CONDITIONS,
    ProblemParts,
    Reference,
    ReferencesError,
    build_conditions,
    read_parts,
    rewrite,
)
from benchmarks.references import main, summarize
from benchmarks.verdict import VERDICTS, Measures, Outcome, verdict
from engine.ports import free_port
from programs.core.grading import extract_boxed
from programs.core.records import Problem

REPO = Path(__file__).resolve().parent.parent


def part(value: int, right: bool, source: str) -> Reference:
    return Reference(
        f"The result is {value}, so the answer is \\boxed{{{value}}}.", str(value), right, source
    )


# Gold 5: two right parts; wrong ones give 6 twice, 4 once, 7 once.
PARTS = ProblemParts(
    Problem("p", "What is 2 + 3?", "5"),
    [
        part(5, True, "r#0"),
        part(6, False, "r#1"),
        part(4, False, "r#2"),
        part(5, True, "r#3"),
        part(6, False, "r#4"),
        part(7, False, "r#5"),
    ],
)


def test_each_condition_holds_the_parts_it_names():
    built = {c.name: c for c in build_conditions(PARTS, 4, seed=0)}
    assert list(built) == list(CONDITIONS)
    answers = {name: sorted(r.answer for r in c.references) for name, c in built.items()}
    assert answers == {
        "all_right": ["5"] * 4,
        "agreeing_wrong": ["6"] * 4,  # the most common wrong answer, on every reference
        "wrong_majority": ["5", "6", "6", "6"],
        "right_majority": answers["right_majority"],
        "solo": [],
    }
    minority = [a for a in answers["right_majority"] if a != "5"]
    assert len(answers["right_majority"]) == 4 and len(minority) == 1 and minority[0] in {"4", "6", "7"}
    assert {name: c.majority for name, c in built.items()} == {
        "all_right": "5",
        "agreeing_wrong": "6",
        "wrong_majority": "6",
        "right_majority": "5",
        "solo": None,
    }
    for condition in built.values():  # a reference's text, box and grade agree with its answer
        assert all(
            extract_boxed(r.text) == r.answer and r.right == (r.answer == "5") for r in condition.references
        )
    # Two right parts fill four slots: two are reused, and marked so. No real part fills two slots unmarked.
    assert built["all_right"].reused == 2 and built["right_majority"].reused == 1
    for condition in built.values():
        fresh = [r.source for r in condition.references if not r.reused]
        assert len(fresh) == len(set(fresh))


def test_too_few_agreeing_wrong_parts_are_made_up_by_rewriting_others():
    agreeing_wrong = build_conditions(PARTS, 4, seed=0)[1]
    rewritten = [r for r in agreeing_wrong.references if r.rewritten_from is not None]
    # The two 6s are real; the 4 and the 7 were rewritten to give 6, in the text and in the box.
    assert agreeing_wrong.rewritten == 2 and sorted(r.rewritten_from for r in rewritten) == ["4", "7"]
    assert all(r.text == "The result is 6, so the answer is \\boxed{6}." for r in rewritten)
    assert {r.source for r in rewritten} == {"r#2", "r#5"} and agreeing_wrong.reused == 0
    # With three references the two real 6s and one rewritten part suffice; wrong_majority needs only the two.
    three = {c.name: c for c in build_conditions(PARTS, 3, seed=0)}
    assert three["agreeing_wrong"].rewritten == 1 and three["wrong_majority"].rewritten == 0
    # One wrong part alone cannot be rewritten into another: it is reused.
    lone = ProblemParts(PARTS.problem, [part(5, True, "a"), part(9, False, "b")])
    agreeing = build_conditions(lone, 4, seed=0)[1]
    assert [r.answer for r in agreeing.references] == ["9"] * 4
    assert (agreeing.rewritten, agreeing.reused) == (0, 3)


def test_rewriting_changes_the_answer_wherever_it_stands_alone():
    text = "From 118 - 100 = 18 and 18.5 rounded: \\boxed{18}"
    assert rewrite(text, "18", "17") == "From 118 - 100 = 17 and 18.5 rounded: \\boxed{17}"
    assert rewrite("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}", "\\frac{1}{3}") == "so \\boxed{\\frac{1}{3}}."
    assert rewrite("the box says \\boxed{x18}", "18", "17") is None  # not standing alone: left, refused


def test_conditions_are_seeded_per_problem():
    many = ProblemParts(PARTS.problem, [part(5, True, f"r#{i}") for i in range(8)] + [part(6, False, "w")])

    def sources(seed: int) -> list[str]:
        return [r.source for r in build_conditions(many, 4, seed)[0].references]

    assert sources(0) == sources(0)
    assert len({tuple(sources(seed)) for seed in range(6)}) > 1
    with pytest.raises(ValueError, match="no right or no wrong"):
        build_conditions(ProblemParts(PARTS.problem, PARTS.right), 4, 0)


def profile(right: int, copied: int, total: int = 40, majority: bool = True) -> Measures:
    """`right` right answers, `copied` answers that gave a wrong majority's answer, the rest other."""
    if not majority:
        return Measures.of([Outcome(True, None)] * right + [Outcome(False, None)] * (total - right))
    outcomes = [Outcome(True, False)] * right + [Outcome(False, True)] * copied
    return Measures.of(outcomes + [Outcome(False, False)] * (total - right - copied))


def profiles(all_right: int, agreeing_wrong: int, solo: int, wrong_majority: tuple[int, int]) -> dict:
    return {
        "all_right": profile(all_right, 0),
        "agreeing_wrong": profile(agreeing_wrong, 40 - agreeing_wrong),
        "wrong_majority": profile(*wrong_majority),
        "right_majority": profile(30, 0),
        "solo": profile(solo, 0, majority=False),
    }


@pytest.mark.parametrize(
    ("figures", "label"),
    [
        ((38, 12, 15, (28, 8)), "reads its references"),
        ((38, 2, 15, (9, 30)), "copies the majority"),
        ((9, 10, 9, (24, 2)), "ignores its references"),  # the offline pair as the xfail test measured it
        ((30, 25, 5, (20, 10)), "mixed"),
    ],
)
def test_verdict_by_its_stated_thresholds(figures, label):
    found = verdict(profiles(*figures))
    assert found.label == label
    if label == "mixed":
        assert "all_right above solo" in found.because and "agreeing_wrong above solo" in found.because
        assert "all_right above agreeing_wrong" not in found.because


def test_verdict_thresholds_sit_where_they_say():
    # Copying a wrong majority on exactly half is not resisting it "more often than not".
    assert verdict(profiles(38, 2, 15, (20, 20))).label == "copies the majority"
    assert verdict(profiles(38, 2, 15, (21, 19))).label == "reads its references"
    # 30 of 40 against 20 of 40: the intervals overlap, so that is noise, not following the evidence.
    assert verdict(profiles(30, 20, 25, (30, 5))).label == "ignores its references"


def test_summary_has_the_shape_json_promises():
    lines = [
        {
            "condition": name,
            "right": i % 2 == 0,
            "copied": None if name == "solo" else i % 3 == 0,
            "references": [{"rewritten_from": "4" if name == "agreeing_wrong" else None, "reused": False}],
        }
        for name in CONDITIONS
        for i in range(6)
    ]
    summary = summarize(lines, {"synthesizer_model": "s"})
    assert list(summary["conditions"]) == list(CONDITIONS)
    for name, row in summary["conditions"].items():
        assert {"right", "copied", "other", "ci", "problems", "rewritten"} <= set(row)
        assert row["problems"] == 6 and row["right"] == 50.0
        assert row["rewritten"] == (6 if name == "agreeing_wrong" else 0)
        low, high = row["ci"]["right"]
        assert low < 50.0 < high
    assert summary["conditions"]["solo"]["copied"] is None and summary["conditions"]["solo"]["other"] == 50.0
    assert summary["verdict"] in VERDICTS
    assert "Wilson" in summary["thresholds"]


def record(rid: str, answers: list[str | None], gold: str = "5", **labels) -> dict:
    """A problem record as A2R runs and the accuracy protocol write them (the keys `from_json` reads)."""
    paths = [
        {
            "text": f"x</think>{a}",
            "answer_part": f"\\boxed{{{a}}}" if a else "no box",
            "answer_part_fallback": False,
            "prompt_tokens": 1,
            "completion_tokens": 1,
            "cached_tokens": 0,
            "finish_reason": "stop",
            "seed": 0,
            "answer": a,
            "correct": a == gold if a else False,
        }
        for a in answers
    ]
    return {
        "id": rid,
        "problem": f"problem {labels.get('problem_id', rid)}",
        "gold": gold,
        "config": {},
        "paths": paths,
        "self_consistency": {},
        "synthesizer": None,
        "timings": {},
        **labels,
    }


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_records_of_a_run_and_of_the_accuracy_protocol_are_read(tmp_path):
    run = read_parts(
        write(tmp_path / "records.jsonl", [record("a", ["5", "6", None]), record("b", ["5", "5"])])
    )
    assert [(p.problem.id, [r.answer for r in p.parts]) for p in run] == [
        ("a", ["5", "6"]),
        ("b", ["5", "5"]),
    ]
    assert [p.usable for p in run] == [True, False] and run[0].parts[1].source == "a#1"
    # The accuracy protocol writes one record per run: a problem's runs pool their paths.
    rows = [
        record(f"chain/7/run{r}", answers, dataset="chain", problem_id="7", run=r)
        for r, answers in enumerate([["5", "5"], ["6", "7"]])
    ]
    (pooled,) = read_parts(
        write(tmp_path / "explorations.jsonl", [*rows, {**rows[0], "id": "x", "error": "e"}])
    )
    assert pooled.problem == Problem("chain/7", "problem 7", "5")
    assert [r.source for r in pooled.parts] == [
        "chain/7/run0#0",
        "chain/7/run0#1",
        "chain/7/run1#0",
        "chain/7/run1#1",
    ]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"id": "a/n4", "n": 4, "synthesizer": {}}, ":1: no answer parts"),  # a line of syntheses.jsonl
        (
            {**record("a", ["5"]), "paths": [{"completion_tokens": 9}]},
            ":1: no answer parts",
        ),  # raw throughput
        (
            {k: v for k, v in record("a", ["5"]).items() if k != "gold"},
            ":1: not a problem record \\(no key 'gold'\\)",
        ),
    ],
)
def test_records_without_answer_parts_are_refused_by_line(tmp_path, row, message):
    with pytest.raises(ReferencesError, match=message):
        read_parts(write(tmp_path / "r.jsonl", [row]))


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.mark.parametrize(
    ("rows", "extra", "message"),
    [
        ([{"id": "a/n4", "n": 4, "synthesizer": {}}], [], "no answer parts"),
        (
            [record("a", ["5", "6"]), record("b", ["5"])],
            ["--limit", "2"],
            "1 of 2 problems have both a right",
        ),
        ([record("a", ["5", "6"])], [], "no SGLang server answers at"),
    ],
)
def test_bad_input_is_one_line_and_no_table(tmp_path, capsys, rows, extra, message):
    out = tmp_path / "probe"
    argv = ["--explorations", str(write(tmp_path / "in.jsonl", rows)), "--synthesizer-url", dead_url()]
    assert main([*argv, "--output", str(out), *extra]) == 2
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("error:") and message in printed and "\n" not in printed
    assert not (out / "references.jsonl").exists() and not (out / "summary.json").exists()


def test_bad_flags_are_refused(capsys):
    for argv, message in (
        (["--n", "2"], "--n must be at least 3"),
        (["--paths", "4"], "--paths must be more than --n 4"),
        (["--explorations", "f", "--explorer-url", "http://x"], "drop --explorer-model"),
    ):
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err


# --- the probe on the offline pair's two CPU engines (the session's `cpu_pair`) ---


def probe(*argv: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "benchmarks.references", *argv]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)


def test_the_probe_end_to_end_on_the_offline_pair(cpu_pair, tmp_path):
    """The CPU command of docs/benchmarks.md (its own engines, the pair), then the same explorations given
    to the pair's synthesizer served at a URL, as a GPU user probes a checkpoint served elsewhere."""
    out = tmp_path / "probe"
    quick = ("--n", "3", "--paths", "8", "--limit", "3", "--json")
    done = probe(*quick, "--output", str(out))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # stdout is the one object; progress went to stderr
    assert summary == json.loads((out / "summary.json").read_text())
    assert list(summary["conditions"]) == list(CONDITIONS)
    for row in summary["conditions"].values():
        assert row["problems"] == 3 and {"right", "copied", "other", "ci", "rewritten"} <= set(row)
    assert summary["verdict"] in VERDICTS

    # Explored with 8 paths per problem; each synthesis was shown exactly its condition's references.
    explored = [json.loads(line) for line in (out / "explorations.jsonl").read_text().splitlines()]
    assert all(len(r["paths"]) == 8 for r in explored)
    lines = [json.loads(line) for line in (out / "references.jsonl").read_text().splitlines()]
    assert len(lines) == 3 * len(CONDITIONS)
    for line in lines:
        refs, synthesis = line["references"], line["synthesizer"]
        assert (
            synthesis["prompt"].count("</reference") == len(refs) == (0 if line["condition"] == "solo" else 3)
        )
        for position, index in enumerate(synthesis["reference_order"], start=1):
            assert f"<reference{position}>{refs[index]['text']}</reference{position}>" in synthesis["prompt"]
        rights = sorted(r["right"] for r in refs)
        assert (
            rights
            == {
                "all_right": [True] * 3,
                "agreeing_wrong": [False] * 3,
                "wrong_majority": [False, False, True],
                "right_majority": [False, True, True],
                "solo": [],
            }[line["condition"]]
        )
        assert line["right"] == (synthesis["answer"] == line["gold"])

    # The same explorations, read back by a second probe of the synthesizer alone; then a resume after losing
    # two syntheses redoes just those.
    again, synthesizer = tmp_path / "again", cpu_pair.synthesizer.base_url
    args = ("--explorations", str(out / "explorations.jsonl"), "--synthesizer-url", synthesizer,
            "--profile", "offline", "--n", "3", "--limit", "3", "--json", "--output", str(again))  # fmt: skip
    assert probe(*args).returncode == 0
    first = (again / "references.jsonl").read_text().splitlines(keepends=True)
    assert [json.loads(x)["references"] for x in first] == [
        next(line["references"] for line in lines if line["id"] == json.loads(x)["id"]) for x in first
    ]  # the same seed draws the same references from the same parts
    (again / "references.jsonl").write_text("".join(first[:-2]))
    resumed = probe(*args)
    assert resumed.returncode == 0, resumed.stderr
    after = (again / "references.jsonl").read_text().splitlines(keepends=True)
    assert after[:-2] == first[:-2] and sorted(json.loads(x)["id"] for x in after[-2:]) == sorted(
        json.loads(x)["id"] for x in first[-2:]
    )
