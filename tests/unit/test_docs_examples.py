"""Docs are tests: every example in README.md and docs/**/*.md runs as written.

Sybil (a documentation-testing library) finds the fenced blocks; this module says what each
kind of block means:

- a ```python block runs, offline, in a scratch copy of the repository root (every top-level
  entry linked, so ``examples/images/cat.jpg`` resolves and what a block writes lands in the
  scratch folder) with a fresh ``RAR_HOME``; the blocks of one file run in order in one
  namespace, so a later block may use an earlier one's names;
- a ```bash block (README.md and docs/ alike) runs the same way with ``bash -e``, with
  ``.venv/bin`` first on ``PATH``, after closing what earlier Python blocks opened (an embedded
  memory admits one process); where :data:`SHELL_OUTPUT` names a check for it, its output is
  compared with what the document says it prints;
- a block whose first line is ``# requires: <what>`` (an API key, network, CLIP weights, a
  GPU...) is only compiled (Python) or syntax-checked (``bash -n``), and every import in a
  Python one must resolve;
- pseudo-code goes in ```text blocks, which nothing runs.

So every python or bash block either runs or says what it requires: there is no third kind.

The rule is written for people in docs/ARCHITECTURE.md ("Writing docs").
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sybil import Example, Sybil
from sybil.parsers.markdown import CodeBlockParser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
REQUIRES = re.compile(r"#\s*requires:\s*(?P<what>\S.*)")
FENCE = re.compile(r"^ {0,3}(```+|~~~+)[ \t]*([^\s`]*)", re.M)
KNOWN_LANGUAGES = {"python", "bash", "text", "json", "yaml", "toml", "dockerfile", "ini", "diff"}


def requirement(source: str) -> str | None:
    """What a block needs that this machine may not have (its ``# requires:`` line), if any."""
    lines = [line.strip() for line in source.strip().splitlines()]
    match = REQUIRES.fullmatch(lines[0]) if lines else None
    return match["what"] if match else None


def _padded(example: Example) -> str:
    """The block's code, shifted so that tracebacks give the line numbers of the document."""
    return "\n" * (example.line + example.parsed.line_offset) + str(example.parsed)


def check_imports(tree: ast.AST, where: str) -> None:
    """Every ``import x`` / ``from x import y`` in ``tree`` resolves in this environment."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            module = importlib.import_module(node.module)
            for alias in node.names:
                if alias.name != "*" and not hasattr(module, alias.name):
                    importlib.import_module(f"{node.module}.{alias.name}")  # a submodule


def evaluate_python(example: Example) -> None:
    """Run the block in the document's namespace, or only compile it and check its imports."""
    where = f"{example.path}:{example.line}"
    code = _padded(example)
    tree = ast.parse(code, filename=str(example.path))
    if requirement(example.parsed) is not None:
        compile(tree, str(example.path), "exec")
        check_imports(tree, where)
        return
    exec(compile(tree, str(example.path), "exec"), example.namespace)  # noqa: S102


def evaluate_bash(example: Example) -> str | None:
    """Run the block with bash (``-e``: the first failing command fails it), or ``bash -n``."""
    source = str(example.parsed)
    checked_only = requirement(source) is not None
    if not checked_only:  # a reader runs shell commands on their own, not inside the Python
        _close_opened(example.namespace)  # of earlier blocks: an embedded memory is locked
    args = ["bash", "-n"] if checked_only else ["bash", "-euo", "pipefail"]
    done = subprocess.run(
        [*args, "-c", source], capture_output=True, text=True, timeout=600,
        env=example.namespace["__env__"], cwd=example.namespace["__cwd__"],
    )  # fmt: skip
    if done.returncode != 0:
        return (
            f"{example.path}:{example.line}: the block exited {done.returncode}\n"
            f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
        )
    check = None if checked_only else SHELL_OUTPUT.get(_block_key(example))
    if check is not None:
        check(done.stdout, Path(example.namespace["__cwd__"]), Path(example.path))
    return None


def _block_key(example: Example) -> tuple[str, str]:
    """The block's document (relative to the root) and its first line."""
    path = Path(example.path)
    where = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
    return where, str(example.parsed).strip().splitlines()[0]


def _check_tokens(stdout: str, cwd: Path, doc: Path) -> None:
    """docs/deploy.md's tokens: each printed once as the last line, listed with its scopes
    but never its token, and alice's revoked."""
    tokens = re.findall(r"^rar_\S+$", stdout, re.M)
    assert len(tokens) == 3, stdout
    scopes = dict(re.findall(r"^(alice|ci-bot|ops)\t(\S+)\tmade ", stdout, re.M))
    assert scopes == {"alice": "recognize,learn", "ci-bot": "recognize", "ops": "admin"}, stdout
    listed = stdout[stdout.index("alice\t") :]
    assert not any(token in listed for token in tokens), "auth list printed a token"
    assert "revoked the token of alice" in listed


def _check_coffee_boxes(stdout: str, cwd: Path, doc: Path) -> None:
    """docs/regions.md's picture: the table under the block is what the command prints, and
    the annotated image is the photo's size."""
    from PIL import Image

    claimed = re.findall(r"^\| (\w+) \| (.+) \|$", _read(doc), re.M)
    claimed = [(box, row) for box, row in claimed if box in ("cup", "spoon", "saucer")]
    assert len(claimed) == 3, "the table of docs/regions.md moved"
    sections = re.split(r"^examples/images/coffee\.jpg box ", stdout, flags=re.M)[1:]
    printed = {s.split()[0]: re.findall(r"│ \d+ │ (.+?) +│ (\d\.\d+) │", s) for s in sections}
    for box, row in claimed:
        said = re.findall(r"\**([a-z][a-z ]*?)\** (\d\.\d+)", row)
        got = printed[box][: len(said)]
        assert [label for label, _ in got] == [label for label, _ in said], (box, got, said)
        for (_, score), (_, doc_score) in zip(got, said, strict=True):
            assert abs(float(score) - float(doc_score)) <= 0.002, (box, got, said)
    with (
        Image.open(cwd / "annotated.png") as drawn,
        Image.open(cwd / "examples/images/coffee.jpg") as photo,
    ):
        assert drawn.size == photo.size


def _check_views(stdout: str, cwd: Path, doc: Path) -> None:
    """README.md's augmented views: the line the text quotes, and three views per photo."""
    said = "wrote 6 views of 2 images in 2 classes (3 per image, seed 0) to my-photo-views"
    assert said in stdout, stdout
    assert f"It prints `{said}`" in doc.read_text(encoding="utf-8")
    views = sorted(p.relative_to(cwd / "my-photo-views").as_posix()
                   for p in (cwd / "my-photo-views").rglob("*.png"))  # fmt: skip
    want = [f"{label}/{label}.jpg-aug{i}.png" for label in ("cat", "coffee") for i in range(3)]
    assert views == want


SHELL_OUTPUT: dict[tuple[str, str], Callable[[str, Path, Path], None]] = {
    (
        "docs/deploy.md",
        "rar-agent auth add alice --scope recognize --scope learn   # prints the "
        "token once, last line",
    ): _check_tokens,
    ("docs/regions.md", "cat examples/coffee-boxes.json"): _check_coffee_boxes,
    ("README.md", "# a labelled folder (here the two shipped photos) and three views of each"): (
        _check_views
    ),
}
"""What a running shell block must print, beyond exiting 0, by (document, first line)."""


SYBIL = Sybil(
    parsers=[
        CodeBlockParser(language="python", evaluator=evaluate_python),
        CodeBlockParser(language="bash", evaluator=evaluate_bash),
    ]
)


def _runnable(doc: Path) -> bool:
    return any(lang in ("python", "bash") for _, lang in FENCE.findall(_read(doc)))


def _read(doc: Path) -> str:
    return doc.read_text(encoding="utf-8")


@pytest.fixture
def scratch_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A scratch copy of the repository root (links), a fresh RAR_HOME, no model hub."""
    root = tmp_path / "repo"
    root.mkdir()
    for entry in ROOT.iterdir():
        if entry.name != ".git":
            (root / entry.name).symlink_to(entry)
    home = tmp_path / "rar-home"
    for name in [n for n in os.environ if n.startswith("RAR_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RAR_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(root)
    yield root


def _close_opened(namespace: dict[str, object]) -> None:
    """Close what the blocks opened (recognizers, memories): embedded memories are locked."""
    for value in list(namespace.values()):
        close = getattr(value, "close", None)
        if callable(close) and type(value).__module__.startswith("rar_agent"):
            close()


@pytest.mark.slow
@pytest.mark.parametrize(
    "doc", [d for d in DOCS if _runnable(d)], ids=lambda p: str(p.relative_to(ROOT))
)
def test_examples_run_as_written(doc: Path, scratch_root: Path) -> None:
    document = SYBIL.parse(doc)
    venv_bin = ROOT / ".venv" / "bin"
    path = f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"
    document.namespace.update(__env__={**os.environ, "PATH": path}, __cwd__=scratch_root)
    ran = 0
    try:
        for example in document:
            example.evaluate()
            ran += 1
    finally:
        _close_opened(document.namespace)
    assert ran > 0, f"{doc.name}: no python or bash block found, though the fences say so"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_fence_names_a_known_language(doc: Path) -> None:
    """No Python hides from the runner as ```py or an unlabelled block; pseudo-code is text."""
    opened = False
    for _, language in FENCE.findall(_read(doc)):
        if opened:  # a closing fence
            opened = False
            continue
        opened = True
        assert language in KNOWN_LANGUAGES, (
            f"{doc.relative_to(ROOT)}: a ```{language or '(no language)'} block: use ```python "
            "(it runs), ```bash, ```text for pseudo-code, or another of "
            f"{sorted(KNOWN_LANGUAGES)}"
        )


def test_requires_marks_only_check_syntax_and_imports(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "```python\n# requires: an API key\nfrom rar_agent import Recognizer\nraise SystemExit\n"
        "```\n\n```python\n# requires: network\nfrom rar_agent import NoSuchName\n```\n",
        encoding="utf-8",
    )
    first, second = SYBIL.parse(doc)
    first.evaluate()  # compiled and imports checked, not run (it would raise SystemExit)
    with pytest.raises(ModuleNotFoundError, match="NoSuchName"):
        second.evaluate()


def test_a_failing_block_names_its_line_in_the_document(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("# title\n\n```python\nx = 1\n\ny = x / 0\n```\n", encoding="utf-8")
    [example] = SYBIL.parse(doc)
    with pytest.raises(ZeroDivisionError) as caught:
        example.evaluate()
    assert caught.traceback[-1].lineno + 1 == 6  # the document's line of ``y = x / 0``


def test_an_unmarked_shell_block_runs_in_any_document(tmp_path: Path) -> None:
    """docs/ too: a shell block either runs or says what it requires."""
    doc = tmp_path / "doc.md"
    doc.write_text(
        "```bash\n# requires: Docker\nexit 3\n```\n\n```bash\necho ran; exit 3\n```\n",
        encoding="utf-8",
    )
    marked, unmarked = SYBIL.parse(doc)
    for example in (marked, unmarked):
        example.namespace.update(__env__=dict(os.environ), __cwd__=tmp_path)
    marked.evaluate()  # syntax-checked only
    with pytest.raises(Exception, match="the block exited 3"):
        unmarked.evaluate()
