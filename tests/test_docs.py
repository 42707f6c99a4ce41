"""The README and docs/ stay true to the repository: every relative link (and anchor) points at something
that exists, and every flag their commands show is one the command takes. No engine: the commands' own
`--help` is the reference."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
SHELL_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.DOTALL | re.MULTILINE)
SUBSHELL = re.compile(r"\$\(([^)]*)\)")


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text()), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def links(page: Path) -> list[str]:
    """The relative links of `page`, outside its code blocks."""
    found = LINK.findall(FENCE.sub("", page.read_text()))
    return [target for target in found if not re.match(r"[a-z]+:", target)]


def commands(page: Path) -> list[list[str]]:
    """Each shell command of the page's bash blocks as words: continuations joined, comments dropped, and a
    command substituted into another (`$(...)`) taken as a command of its own."""
    found, pending = [], ""
    for block in SHELL_BLOCK.findall(page.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            pending += line + "\n"
            try:
                words = shlex.split(SUBSHELL.sub("", pending), comments=True)
            except ValueError:  # a quoted argument goes on to the next line
                continue
            found += [shlex.split(inner) for inner in SUBSHELL.findall(pending)]
            found.append(words)
            pending = ""
    return [words for words in found if words]


def project_module(words: list[str]) -> str | None:
    """The project's module a command runs (`python -m rl.curate`, `python rl/train.py`; a package's
    `__main__` for `python -m doctor`), else None."""
    if not words[0].endswith(("python", "python3")) or len(words) < 2:
        return None
    target = words[2] if words[1] == "-m" else words[1].removesuffix(".py").replace("/", ".")
    if target.split(".")[0] not in {"programs", "benchmarks", "rl", "engine", "doctor"}:
        return None
    return f"{target}.__main__" if (REPO / target.replace(".", "/") / "__main__.py").exists() else target


def test_there_are_pages_with_links_and_commands():
    assert len(PAGES) > 5
    assert sum(len(links(page)) for page in PAGES) > 10
    assert sum(project_module(words) is not None for page in PAGES for words in commands(page)) > 20


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_resolves(page):
    for target in links(page):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target} points at a file that does not exist"
        if anchor:
            assert anchor in anchors(linked), f"{page.name}: {target} names no heading of {linked.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_flag_a_command_shows_exists(page, capsys):
    for words in commands(page):
        module = project_module(words)
        if module is None:
            continue
        with pytest.raises(SystemExit):
            importlib.import_module(module).main(["--help"])
        usage = capsys.readouterr().out
        for flag in (word.split("=")[0] for word in words if word.startswith("--")):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", usage), (
                f"{page.name}: `{shlex.join(words)}` shows {flag}, which `{module} --help` does not list"
            )
