"""The ``rar-agent`` command line.

One module per subcommand (``recognize``, ``memory``, ``chat``, ``evaluate``, ``finetune``), the
options and helpers they share in ``options``. Only typer and the standard library are imported
at module level, so ``rar-agent --help`` answers fast; a command imports the library when it runs.
"""

from __future__ import annotations

import typer

from rar_agent.cli import chat, evaluate, finetune, memory, recognize

__all__ = ["app", "main"]

_TUTORIAL = """\
Retrieve-and-rank visual recognition: an image encoder's category memory in Qdrant, then a \
multimodal chat model ranks the top k candidates.

Recognize among your own labels (zero-shot, no memory to build):
  rar-agent recognize photo.jpg --labels "cat,dog,fox"

Build a memory from example images (DIR/<label>/*.jpg), then recognize against it:
  rar-agent memory build --from-folder photos/
  rar-agent recognize photo.jpg --k 5 --ranker openai:gpt-4o-mini

Measure retrieval (kNN) against retrieve-and-rank on a labelled set:
  rar-agent eval --dataset photos/ --shots 4 --ranker local

Chat with the agent in the browser:
  rar-agent chat --ranker ollama:qwen2.5vl

Every option also reads its RAR_* environment variable (RAR_MEMORY_PATH, RAR_RANKER, ...); \
see rar-agent COMMAND --help."""

app = typer.Typer(
    name="rar-agent",
    help=_TUTORIAL,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("recognize")(recognize.recognize)
app.add_typer(memory.app, name="memory")
app.command("eval")(evaluate.evaluate)
app.command("finetune-data")(finetune.finetune_data)
app.command("chat")(chat.chat)


def main() -> None:
    """Console-script entry point (``rar-agent``)."""
    app()
