"""``rar-agent teach`` and ``rar-agent memory history | undo | relabel``: teaching from the
command line, through :class:`~rar_agent.pipeline.teacher.Teacher` (the one door).

No ``from __future__ import annotations``: :func:`settings_command` reads the option types.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rar_agent.cli.options import ENCODER, STORE, JsonOpt, load_settings_encoder, settings_command

if TYPE_CHECKING:
    from rar_agent.config import Settings
    from rar_agent.pipeline.teacher import Teacher

__all__ = ["memory_history", "memory_relabel", "memory_undo", "teach", "teach_images"]

ByOpt = Annotated[
    str | None, typer.Option("--by", help="Who teaches (recorded with each example).")
]
CorrectsOpt = Annotated[
    str | None,
    typer.Option("--corrects", help="The wrong answer these images were given (recorded)."),
]


def teach_images(
    settings: "Settings",
    label: str,
    images: list[Path],
    *,
    by: str | None = None,
    corrects: str | None = None,
    command: str = "teach",
) -> None:
    """Store images as examples of ``label`` and print what happened (one line each).

    The memory is recorded as the one ``command`` used last (``memory list`` shows it).
    """
    from rar_agent.cli.recent import remember_memory
    from rar_agent.memory import open_memory
    from rar_agent.pipeline.teacher import Teacher
    from rar_agent.results import TeachAction
    from rar_agent.tools.learn import describe_added

    with open_memory(settings) as mem:
        enc = load_settings_encoder(settings, mem)
        teacher = Teacher(mem, enc, via="cli", by=by)
        action: TeachAction = "correct" if corrects else "add"
        for result in teacher.add(label, list(images), action=action, corrected_from=corrects):
            typer.echo(describe_added(result))
        remember_memory(settings, mem, command)


@settings_command(STORE, ENCODER)
def teach(
    settings: "Settings",
    label: Annotated[str, typer.Argument(help="The category the images show.")],
    images: Annotated[list[Path], typer.Argument(help="Example images.")],
    by: ByOpt = None,
    corrects: CorrectsOpt = None,
) -> None:
    """Teach the memory: store images as examples of LABEL (a new or a known category).

    An image already stored under another label is refused with the command that moves it
    (rar-agent memory relabel); each example records when, from where (cli) and --by whom.
    """
    teach_images(settings, label, images, by=by, corrects=corrects)


def _teacher(settings: "Settings") -> "Teacher":
    """A CLI teacher that encodes nothing (history, undo, relabel); the caller closes its
    memory."""
    from rar_agent.memory import open_memory
    from rar_agent.pipeline.teacher import Teacher

    return Teacher(open_memory(settings, create=False), None, via="cli")


@settings_command(STORE)
def memory_history(
    settings: "Settings",
    limit: Annotated[int, typer.Option("--limit", "-n", help="Show the last N events.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """List what the memory was taught (examples added, corrected, relabelled), oldest first."""
    from rar_agent.tools.learn import describe_event

    teacher = _teacher(settings)
    with teacher.memory:
        history = teacher.history(limit)
    if as_json:
        typer.echo(json.dumps(history.model_dump(mode="json"), ensure_ascii=False))
        return
    if not history.events:
        typer.echo("nothing has been taught to this memory")
        return
    typer.echo(f"last {len(history.events)} of {history.total} teaching events:")
    for event in history.events:
        typer.echo(describe_event(event))


@settings_command(STORE)
def memory_undo(
    settings: "Settings",
    n: Annotated[int, typer.Argument(help="How many of the last teaching events to undo.")] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Undo the last N teaching events: taught examples removed, relabels moved back."""
    from rar_agent.tools.learn import describe_event

    teacher = _teacher(settings)
    with teacher.memory:
        undone = teacher.undo(n)
    if as_json:
        typer.echo(json.dumps(undone.model_dump(mode="json"), ensure_ascii=False))
        return
    if not undone.undone:
        typer.echo("nothing to undo: nothing has been taught to this memory")
        return
    typer.echo(f"undid {len(undone.undone)} teaching event(s), newest first:")
    for event in undone.undone:
        typer.echo("  " + describe_event(event))
    typer.echo(f"memory now holds {undone.image_entries} example images")


@settings_command(STORE)
def memory_relabel(
    settings: "Settings",
    example: Annotated[str, typer.Argument(help="The example's entry id (see memory history).")],
    label: Annotated[str, typer.Argument(help="The label to move it to.")],
) -> None:
    """Move one stored example to another label (when it was stored under the wrong one)."""
    teacher = _teacher(settings)
    with teacher.memory:
        moved = teacher.relabel(example, label)
    if moved.previous_label == moved.label:
        typer.echo(f"entry {moved.id} is already an example of {moved.label!r}")
    else:
        typer.echo(
            f"moved entry {moved.previous_id} from {moved.previous_label!r} to "
            f"{moved.label!r} (now entry {moved.id})"
        )
