"""``rar-agent --help`` texts wrap to the terminal: a docstring's line breaks are not kept
(they made ragged paragraphs at 80 columns), command examples keep their lines."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import click
import pytest

from rar_agent.cli import main, reflow_help


def test_paragraphs_are_joined_and_examples_kept() -> None:
    group = click.Group(
        "top",
        help="First line.\n\nA paragraph written\nover two lines.\n\nExamples:\n  run a\n  run b",
    )
    group.add_command(click.Command("sub", help="Sub\ncommand.\n\nMore\ntext."))
    reflow_help(group)
    assert (
        group.help
        == "First line.\n\nA paragraph written over two lines.\n\nExamples:\n  run a\n  run b"
    )
    assert group.commands["sub"].help == "Sub command.\n\nMore text."


def test_the_command_line_help_wraps_at_80_columns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(sys, "argv", ["rar-agent", "memory", "build", "--help"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("Storage options"))
    paragraph = lines[start : lines.index("", start)]
    # filled to the width: every line but the last nearly full, none cut after a few words
    assert all(len(line) > 60 for line in paragraph[:-1]), paragraph


def test_eval_help_states_the_fashion_mnist_defaults() -> None:
    """`eval --dataset fashion-mnist` stores 10 shots and asks 300 queries unless told; the
    help said `--shots [default: (all)]` (60,000 train images) and named no query count."""
    import re

    from typer.testing import CliRunner

    from rar_agent.cli import app
    from rar_agent.evaluation.data import FASHION_MNIST_QUERIES, FASHION_MNIST_SHOTS

    done = CliRunner().invoke(app, ["eval", "--help"], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    lines = {m.group(1): m.group(2) for m in re.finditer(r"│ (--\S+)\s+<\w+>\s+(.*)", done.output)}
    assert f"{FASHION_MNIST_SHOTS} with --dataset fashion-mnist" in lines["--shots"]
    assert f"{FASHION_MNIST_QUERIES} with --dataset fashion-mnist" in lines["--limit"]


def test_root_help_leads_with_what_runs_offline() -> None:
    """The first example runs on any machine (the built-in memory); zero-shot `--labels`,
    which an offline machine refuses (its encoder has no text tower), says it needs CLIP."""
    from typer.testing import CliRunner

    from rar_agent.cli import app

    done = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    lines = [line.strip(" │") for line in done.output.splitlines()]
    examples = [i for i, line in enumerate(lines) if line.startswith("rar-agent ")]
    assert lines[examples[0]] == "rar-agent recognize photo.jpg"
    zero_shot = next(i for i in examples if "--labels" in lines[i])
    assert "CLIP" in lines[zero_shot - 1], lines[zero_shot - 1]


def test_no_command_help_shows_rst_quotes() -> None:
    """The help quotes commands with single backticks; a docstring's RST ``double`` ones
    were shown as typed (``Authorization: Bearer TOKEN``)."""
    import typer.main

    from rar_agent.cli import app

    def walk(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, f"{path} {name}")

    texts = [(path, command.help or "") for path, command in walk(typer.main.get_command(app), "")]
    assert len(texts) > 20
    assert [path for path, text in texts if "``" in text] == []


def test_reject_help_says_the_promise_holds_for_photos_like_the_memorys() -> None:
    """`--reject auto:ALPHA` keeps "at most ALPHA of known images rejected" only for queries
    like the memory's examples (another artist's drawings: 10.3% at auto:0.05; new
    backgrounds: about half, docs/eval/open-set); where a user chooses it, nothing said so."""
    from typer.testing import CliRunner

    from rar_agent.cli import app
    from rar_agent.config import Settings

    done = CliRunner().invoke(app, ["recognize", "--help"], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    words = " ".join(line.strip(" │╭╮╰╯─") for line in done.output.splitlines()).split()
    said = "photos unlike the memory's examples, another background or artist, are rejected more"
    assert said in " ".join(words)
    assert "like the memory's examples" in (Settings.model_fields["reject"].description or "")


def _help_words(*command: str) -> str:
    """A command's --help as one line of words (the box drawing and wrapping left out)."""
    from typer.testing import CliRunner

    from rar_agent.cli import app

    done = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    return " ".join(" ".join(line.strip(" │╭╮╰╯─") for line in done.output.splitlines()).split())


@pytest.mark.parametrize("command", ["recognize", "chat", "mcp"])
def test_the_serving_commands_say_which_memory_answers_when_none_is_named(command: str) -> None:
    """Their help named no memory choice: a person who had taught the default memory one
    category could not tell from it why the built-in 1000 classes were gone."""
    words = _help_words(command)
    assert "the default memory" in words and "if it holds entries" in words
    assert "else the built-in one" in words


def test_memory_list_and_remove_say_they_act_on_the_memory_used_last() -> None:
    assert "the memory the last command used" in _help_words("memory", "list")
    assert "the memory the last command used" in _help_words("memory", "remove")
    # memory add builds, as memory build does: it says so, beside teach's choice
    assert "It writes the memory named, else the default one" in _help_words("memory", "add")


def test_the_admin_scope_help_names_what_it_may_do() -> None:
    """`auth add --help` said admin is 'also snapshots through a server', leaving out
    taking back one person's teaching (undo_teaching_of, memory undo --by NAME --server)."""
    words = _help_words("auth", "add")
    assert "admin (the read tools, snapshots through a server and taking back one" in words
    assert "memory undo --by NAME --server; not teaching itself)" in words


@pytest.mark.parametrize("command", ["chat", "mcp"])
def test_allow_learning_help_names_all_it_allows(command: str) -> None:
    """It said 'Let the tools add examples to the memory.': it also lets them (and the chat
    page) correct, move, list and undo the teaching, and opens the memory for writing."""
    words = _help_words(command)
    assert "--allow-learning <bool> Let the memory be taught (it opens for writing)" in words
    assert "moved to another label, the teaching listed and undone" in words


def test_eval_k_help_states_its_range() -> None:
    """eval refuses --k 0 with 'from 1 to 100'; its help named no range."""
    words = _help_words("eval")
    assert "Candidates handed to the ranker (1-100)" in words
    assert "Largest k of recall@k (1-100)" in words
