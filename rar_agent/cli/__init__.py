"""The ``rar-agent`` command line.

One module per subcommand (``recognize``, ``memory``, ``teach``, ``chat``, ``mcp``, ``evaluate``,
``finetune``, ``datasets``), the options and helpers they share in ``options``. Only typer and
the standard library are imported at module level, so ``rar-agent --help`` answers fast; a
command imports the library when it runs.
"""

from __future__ import annotations

from typing import Any

import typer

from rar_agent.cli import (
    auth,
    chat,
    datasets,
    evaluate,
    finetune,
    mcp,
    memory,
    recognize,
    teach,
)
from rar_agent.cli.usage import UsageGroup

__all__ = ["app", "main"]

_TUTORIAL = """\
Retrieve-and-rank visual recognition: an image encoder's category memory in Qdrant, then a \
multimodal chat model ranks the top k candidates.

What is in a photo (the built-in memory of ImageNet's 1000 classes, built on first use):
  rar-agent recognize photo.jpg

Recognize among your own labels (zero-shot: needs a CLIP encoder for the names):
  rar-agent recognize photo.jpg --labels "cat,dog,fox"

Build a memory from example images in DIR/<label>/*.jpg, then use it:
  rar-agent memory build --from-folder photos/
  rar-agent memory list
  rar-agent recognize photo.jpg --ranker openai:gpt-4o-mini --json

Teach it (a new category, or the right label for a wrong answer), look back, undo:
  rar-agent teach sandal new/sandal1.jpg new/sandal2.jpg
  rar-agent memory history
  rar-agent memory undo 1

Measure retrieval alone (kNN) against retrieve-and-rank on labelled images:
  rar-agent eval --dataset photos/ --shots 4 --ranker local
  rar-agent datasets export fashion-mnist garments/ --per-class 10   # offline labelled images
  rar-agent datasets augment photos/ photo-views/ --views 3   # queries unlike the memory's

Chat with the agent in the browser; write fine-tuning data for a ranker:
  rar-agent chat --ranker ollama:qwen2.5vl
  rar-agent finetune-data --from-folder photos/ --out train.json

Serve the tools to desktop and IDE agents (MCP over stdio; --http for a URL):
  rar-agent mcp --memory photos-memory/ --allow-root ~/Pictures

Share one memory with a team (tokens with scopes; see docs/deploy.md):
  rar-agent auth add alice --scope recognize --scope learn
  rar-agent mcp --http --host 0.0.0.0 --allow-learning

Options shown with an env var also read it from the environment (RAR_MEMORY_PATH, \
RAR_RANKER, ...): see rar-agent COMMAND --help."""

app = typer.Typer(
    name="rar-agent",
    cls=UsageGroup,
    help=_TUTORIAL,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("recognize")(recognize.recognize)
app.command("teach")(teach.teach)
memory.app.command("history")(teach.memory_history)
memory.app.command("undo")(teach.memory_undo)
memory.app.command("relabel")(teach.memory_relabel)
app.add_typer(memory.app, name="memory")
app.command("eval")(evaluate.evaluate)
app.command("finetune-data", help=finetune.HELP)(finetune.finetune_data)
app.command("chat")(chat.chat)
app.command("mcp")(mcp.mcp)
app.add_typer(datasets.app, name="datasets")
app.add_typer(auth.app, name="auth")


def main() -> None:
    """Console-script entry point (``rar-agent``)."""
    command = typer.main.get_command(app)
    reflow_help(command)
    command(prog_name="rar-agent")


def reflow_help(command: Any) -> None:
    """Let every help text of ``command`` (a click command, as ``typer.main.get_command``
    gives it) and its subcommands wrap to the terminal.

    Help texts come from docstrings, whose paragraphs are broken into lines of the source's
    width; typer prints those breaks as they are, so at 80 columns a paragraph came out
    ragged (a line of "Without them a", then the rest). Each paragraph's lines are joined
    into one, which the terminal wraps; a paragraph with an indented line (command
    examples) keeps its lines.
    """
    if command.help:
        command.help = "\n\n".join(_joined(p) for p in command.help.split("\n\n"))
    for sub in getattr(command, "commands", {}).values():
        reflow_help(sub)


def _joined(paragraph: str) -> str:
    lines = paragraph.strip("\n").split("\n")
    if any(line[:1].isspace() for line in lines[1:]) or paragraph.startswith("\b"):
        return paragraph
    return " ".join(line.strip() for line in lines)
