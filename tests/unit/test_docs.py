"""The user docs stand on their own: every link stays inside the repository and resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve_inside_the_repository(doc: Path) -> None:
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        assert ROOT in path.parents, f"{doc.name} links outside the repository: {target}"
        assert path.exists(), f"{doc.name} links to a missing file: {target}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_pointers_outside_the_repository_or_to_the_build_machines(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    for phrase in ("../shared", "/work/", "shared/DESIGN", "this project is built on"):
        assert phrase not in text, f"{doc.name} mentions {phrase!r}"


SHELL_BLOCK = re.compile(r"```(?:bash|sh)\n(.*?)```", re.S)
BARE_PYTHON = re.compile(r"(?:^|[\s;&|(])python3?\s+(?!-m venv)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_blocks_run_python_from_the_venv(doc: Path) -> None:
    """A shell block that runs Python runs the venv's (`.venv/bin/python`): the system one
    lacks the packages (`python tools/eval_open_set.py` stopped at `No module named
    'langchain_core'`). Only `python3 -m venv` itself is the system's."""
    for block in SHELL_BLOCK.findall(doc.read_text(encoding="utf-8")):
        for line in block.splitlines():
            assert not BARE_PYTHON.search(line), f"{doc.name}: use .venv/bin/python in {line!r}"


FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _cells(row: str) -> int:
    """The number of cells in a Markdown table row (a `|` inside backticks or escaped is text)."""
    text = re.sub(r"`[^`]*`", "code", row.strip().replace(r"\|", ""))
    return len(text.strip("|").split("|"))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_table_row_has_its_header_s_cells(doc: Path) -> None:
    """A table row with more or fewer cells than its header renders as a torn row (the README's
    benchmark table once fused two rows into one: `| full cali| full calibration ...`)."""
    lines = FENCE.sub("", doc.read_text(encoding="utf-8")).splitlines()
    header = None
    for line in lines:
        if not line.lstrip().startswith("|"):
            header = None
            continue
        if header is None:
            header = _cells(line)
        cells = _cells(line)
        assert cells == header, (
            f"{doc.name}: row {line[:60]!r} has {cells} cells, its header {header}"
        )


def test_architecture_names_every_module_of_the_package() -> None:
    """docs/ARCHITECTURE.md gives one line per module (issue 11); modules added later were
    left out of it (23 of them, the MCP server's whole package among them)."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    modules = text.split("\n## Modules\n", 1)[1].split("\n## ", 1)[0]
    package = ROOT / "rar_agent"
    unnamed = [
        str(path.relative_to(package))
        for path in sorted(package.rglob("*.py"))
        if path.name != "__init__.py" and f"{path.name}`" not in modules
    ]
    folders = {p.parent.relative_to(package).as_posix() for p in package.rglob("*/__init__.py")}
    unnamed += [f"{folder}/" for folder in sorted(folders) if f"`{folder}/`" not in modules]
    assert not unnamed, f"docs/ARCHITECTURE.md, Modules, names none of {unnamed}"
