"""Test files mirror the source: `tests/test_<name>.py` holds the tests of the one module `<name>` names, its
engine and pure tests side by side, so a renamed module takes its tests' name along.

`<name>` is the module's dotted path with `_` for `.`, or any tail of it of whole parts: as much of the package
path as reads clearly and names one module. By convention the modules of engine/, programs/, programs/core/
and benchmarks/ go bare (`test_grading.py`, `test_probes.py`), those of programs/offline/ and rl/ keep their
package (`test_offline_model.py`, `test_rl_reward.py`: `model` or `train` alone would read as the project's
own), and a name two packages share takes its package (`test_engine_gateway.py`, `test_benchmarks_gateway.py`).
A package is a module too (`test_doctor.py` for a `doctor/` package).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

# The files that test no one module, with the reason.
CROSS_CUTTING = {
    "test_docs.py": "every command the README and docs/ show, run as typed: the pages, not a module",
    "test_layers.py": "imports flow one way across the layers: every module at once",
    "test_names.py": "this rule, over every test file",
}


def modules() -> list[tuple[str, ...]]:
    """The dotted path of every module of the project's top-level packages, and of every package or folder of
    Python under them (`engine/cpu_kernel`, the CPU kernel stand-in loaded by path, counts too)."""
    found: set[tuple[str, ...]] = set()
    for top in (init.parent for init in REPO.glob("*/__init__.py")):
        for source in top.rglob("*.py"):
            parts = source.relative_to(REPO).with_suffix("").parts
            found.update(parts[:i] for i in range(1, len(parts)))  # its packages and folders
            if not source.name.startswith("__"):
                found.add(parts)
    return sorted(found)


def named(name: str, everything: list[tuple[str, ...]]) -> list[str]:
    """The modules `name` names: those whose dotted path ends in the parts `name` joins with `_`."""
    return [
        ".".join(path) for path in everything if any("_".join(path[i:]) == name for i in range(len(path)))
    ]


def test_every_test_file_names_one_module_and_each_module_has_one_file():
    everything = modules()
    files = sorted(p.name for p in TESTS.glob("test_*.py"))
    assert set(CROSS_CUTTING) <= set(files), (
        f"gone, so no longer an exception: {set(CROSS_CUTTING) - set(files)}"
    )
    owners: dict[str, list[str]] = {}
    wrong = []
    for file in files:
        if file in CROSS_CUTTING:
            continue
        found = named(file.removeprefix("test_").removesuffix(".py"), everything)
        if len(found) == 1:
            owners.setdefault(found[0], []).append(file)
        else:
            wrong.append(f"{file} names {' and '.join(found) if found else 'no module'}")
    assert not wrong, "; ".join(wrong) + " (tests/test_names.py says how a test file is named)"
    shared = {module: files for module, files in owners.items() if len(files) > 1}
    assert not shared, f"one file per module: {shared}"


def test_the_rule_takes_a_tail_of_the_path_and_refuses_a_name_two_modules_share():
    everything = [
        ("engine", "gateway"),
        ("benchmarks", "gateway"),
        ("programs", "offline", "model"),
        ("doctor",),
    ]
    assert named("offline_model", everything) == named("model", everything) == ["programs.offline.model"]
    assert named("gateway", everything) == ["engine.gateway", "benchmarks.gateway"]
    assert named("engine_gateway", everything) == ["engine.gateway"]
    assert named("doctor", everything) == ["doctor"] and named("offline", everything) == []
