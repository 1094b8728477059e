"""``rar-agent teach`` and ``rar-agent memory history | undo | relabel``: teaching from the
command line, through :class:`~rar_agent.pipeline.teacher.Teacher` (the one door).

No ``from __future__ import annotations``: :func:`settings_command` reads the option types.
"""

import json
import shlex
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import BaseModel

from rar_agent.cli.options import (
    ENCODER,
    STORE,
    JsonOpt,
    load_settings_encoder,
    memory_to_write,
    note_if_empty,
    settings_command,
    with_folders_listed,
)
from rar_agent.cli.through_server import TokenOpt, call_server_tool, text_of

if TYPE_CHECKING:
    from rar_agent.config import Settings
    from rar_agent.encoders import ImageTextEncoder
    from rar_agent.memory import CategoryMemory
    from rar_agent.pipeline.teacher import Teacher

__all__ = ["memory_history", "memory_relabel", "memory_undo", "teach", "teach_images"]

ByOpt = Annotated[
    str | None,
    typer.Option(
        "--by",
        help="Who teaches (recorded with each example). [default: the user running the command]",
    ),
]
T = TypeVar("T", bound=BaseModel)

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

    The memory is recorded as the one ``command`` used last (``memory list`` shows it). When
    it is the default memory and held nothing, the output says that ``recognize`` uses it
    from now on instead of the built-in one, and how to get the built-in answers back. The
    built-in memory named before its first use is built first, as ``recognize`` builds it.
    """
    from rar_agent.cli.recent import names_a_memory, remember_memory
    from rar_agent.errors import ImageError
    from rar_agent.images import reference_problem
    from rar_agent.pipeline.teacher import Teacher
    from rar_agent.pipeline.vocabulary import fill_builtin_memory
    from rar_agent.results import TeachAction
    from rar_agent.tools.learn import describe_added

    listed = with_folders_listed([str(i) for i in images], partial(_refuse_class_folder, label))
    images = [Path(p) for p in listed]
    for image in images:  # a mistyped path is refused before the encoder loads
        problem = reference_problem(str(image))
        if problem is not None:
            raise _nothing_taught(problem, len(images))
    with memory_to_write(settings) as mem:
        enc = load_settings_encoder(settings, mem)
        if mem.count() == 0 and mem.info.collection == _shadowed_builtin(enc):
            fill_builtin_memory(mem, enc)  # named before its first use: built as recognize does
        teacher = Teacher(mem, enc, via="cli", by=by or _user())
        action: TeachAction = "correct" if corrects else "add"
        was_empty = mem.count() == 0
        try:
            added = teacher.add(label, list(images), action=action, corrected_from=corrects)
        except ImageError as e:  # the teacher checks every image before it writes any
            raise _nothing_taught(e, len(images)) from None
        for i, result in enumerate(added):
            later = sum(r.added for r in added[i + 1 :])  # undo takes the newest first
            typer.echo(describe_added(result, undo=_undo_words(later)))
        if was_empty and not names_a_memory(settings):
            shadowed = _shadowed_builtin(enc)
            if shadowed:
                typer.echo(_shadowing(mem, label, shadowed))
        elif was_empty:
            _note_new_memory(settings, mem)
        remember_memory(settings, mem, command)


def _undo_words(later: int) -> str:
    """How ``memory undo`` takes back a photo just taught, ``later`` photos taught after it."""
    from rar_agent.results import counted

    if not later:
        return "`rar-agent memory undo` takes it back"
    return (
        f"`rar-agent memory undo {later + 1}` takes it back with the "
        f"{counted(later, 'photo')} taught after it"
    )


def _refuse_class_folder(label: str, item: str, folder: Path, files: list[Path]) -> None:
    """Refuse a folder laid out as ``memory build --from-folder`` reads one: no image of its
    own and its images (``files``) in two or more sub-folders, a category each. Taught as one
    label, it would store every category's photos under ``label`` (a folder of one category's
    photos in sub-folders is taught by naming them).

    Raises:
        ConfigError: ``item`` (``folder`` expanded) is such a folder (before anything loads).
    """
    from rar_agent.errors import ConfigError

    inside = [p.relative_to(folder).parts for p in files]
    subs = sorted({parts[0] for parts in inside if len(parts) > 1})
    if len(subs) < 2 or any(len(parts) == 1 for parts in inside):
        return
    shown = ", ".join(subs[:5]) + (f" and {len(subs) - 5} more" if len(subs) > 5 else "")
    raise ConfigError(
        f"{item} holds no image of its own, only sub-folders of them ({shown}), the layout "
        f"whose every sub-folder is a category: teach {label!r} from the folder of its own "
        f"photos (rar-agent teach {shlex.quote(label)} {shlex.quote(str(Path(item) / subs[0]))}), "
        f"name each sub-folder to teach them all as {label!r}, or store each sub-folder "
        f"under its own name (rar-agent memory build --from-folder {shlex.quote(item)})"
    )


def _note_new_memory(settings: "Settings", memory: "CategoryMemory") -> None:
    """Say on stderr that the memory named held nothing before this teaching (a new one,
    made now), and the closest other memory under ``RAR_HOME`` when its name is a near miss:
    a mistyped ``--collection garmnets`` made a memory of one category without a word."""
    from rar_agent.cli.options import print_note
    from rar_agent.cli.recent import embedded_memories
    from rar_agent.errors import near_misses

    info = memory.info
    note = (
        f"memory {info.collection!r} held nothing: it holds only what this taught ({info.location})"
    )
    others = embedded_memories(settings)[1]
    close = near_misses(info.collection, [n for n in others if n != info.collection], most=1)
    if close and not settings.qdrant_url:
        note += (
            f"; did you mean {close[0]!r}? `rar-agent memory undo --collection "
            f"{info.collection}` takes this teaching back (the memory stays, empty: "
            "delete its folder to remove it)"
        )
    print_note(note)


def _shadowed_builtin(encoder: "ImageTextEncoder") -> str | None:
    """The name of the built-in memory ``recognize`` used while the default memory was empty;
    None when the encoder has none (no built-in classes, no text tower)."""
    from rar_agent.encoders import BuiltinVocabulary, has_text_tower
    from rar_agent.pipeline.vocabulary import builtin_memory_name

    if isinstance(encoder, BuiltinVocabulary) or has_text_tower(encoder):
        return builtin_memory_name(encoder)
    return None


def _shadowing(memory: "CategoryMemory", label: str, builtin: str) -> str:
    """What teaching ``label`` to an empty default memory changed for ``recognize``, and how
    to undo it."""
    info = memory.info
    return (
        f"The memory {info.collection!r} ({info.location}) held nothing until now, so "
        f"`rar-agent recognize` (and chat, mcp) answered from the built-in memory {builtin!r} "
        f"(ImageNet's 1000 classes); from now on, with no memory named, they answer from "
        f"{info.collection!r}, which knows only {label!r}. For the built-in answers, add "
        f"--collection {builtin} (to teach that memory too); `rar-agent memory undo` takes "
        "this teaching back."
    )


def _nothing_taught(error: Exception, images: int) -> Exception:
    """``error`` (an image that cannot be used), saying that nothing was taught and what to do."""
    from rar_agent.errors import ImageError

    none = f" (none of the {images} images)" if images > 1 else ""
    return ImageError(
        f"{error}; nothing was taught{none}: leave that image out or replace it, and run the "
        "command again"
    )


@settings_command(STORE, ENCODER)
def teach(
    settings: "Settings",
    label: Annotated[str, typer.Argument(help="The category the images show.")],
    images: Annotated[
        list[Path], typer.Argument(help="Example images, or folders of them (sub-folders too).")
    ],
    by: ByOpt = None,
    corrects: CorrectsOpt = None,
) -> None:
    """Teach the memory: store images as examples of LABEL (a new or a known category).

    A folder stands for every image in it and below it, as for rar-agent recognize; one
    holding only category folders (as memory build --from-folder reads) is refused.

    With no memory named, it teaches the memory the last command used (as memory history and
    undo; a note says which), e.g. the built-in one after a recognize that answered from it;
    after recognize --labels (which answers among exactly those names), the default one.
    An image already stored under another label is refused with the command that moves it
    (rar-agent memory relabel); each example records when, from where (cli) and --by whom
    (the user running the command unless given).
    """
    from rar_agent.cli.options import print_note
    from rar_agent.cli.recent import last_used_settings

    shown, note = last_used_settings(settings, teaching=True)
    if note:
        print_note(f"teaching the {note}")
    teach_images(shown, label, images, by=by, corrects=corrects)


def _user() -> str | None:
    """Who runs the command (their login name), recorded as who taught; None if unknown."""
    import getpass

    try:
        return getpass.getuser() or None
    except (KeyError, OSError):  # no login name for this process's user id
        return None


def _teacher(settings: "Settings") -> "Teacher":
    """A CLI teacher that encodes nothing (history, undo, relabel: a relabel records who ran
    it) over the memory named, else the one the last command used (as ``memory list``); the
    caller closes its memory."""
    from rar_agent.cli.recent import open_shown_memory
    from rar_agent.errors import MemoryBusyError
    from rar_agent.pipeline.teacher import Teacher

    try:
        memory = open_shown_memory(settings)
    except MemoryBusyError as e:
        raise MemoryBusyError(
            f"{e}. If a rar-agent server (mcp, chat) holds it, stop the server first (Ctrl+C "
            "or SIGTERM closes the memory cleanly); while an mcp --http server with tokens "
            "runs, ask it with a token: rar-agent memory history --server "
            "http://HOST:PORT/mcp --token TOKEN lists what was taught, memory undo N --server "
            "... takes back the token's own teaching, and with an admin token and --by NAME "
            "one person's"
        ) from None
    return Teacher(memory, None, via="cli", by=_user())


@settings_command(STORE)
def memory_history(
    settings: "Settings",
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, help="Show the last N events.")
    ] = 20,
    by: Annotated[
        str | None,
        typer.Option("--by", help="Only what NAME taught (a token's name, a chat login)."),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            help="Ask the rar-agent MCP server at this URL (http://HOST:PORT/mcp) that holds "
            "the memory, while it runs (mcp --http with --allow-learning and tokens); needs a "
            "token with the recognize scope (--token), lists that token's own events "
            "(everyone's, and --by NAME, with the admin scope) and a bounded number of them.",
        ),
    ] = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List what the memory was taught (examples added, corrected, relabelled), oldest first.

    While a rar-agent server holds the memory, --server URL --token TOKEN asks it instead:
    e.g. --by NAME shows what memory undo N --by NAME --server would take back.
    """
    from rar_agent.tools.learn import describe_history

    if server:
        from rar_agent.tools.learn import HISTORY_MOST

        instead = (
            f"give --limit {HISTORY_MOST} or less (memory history without --server lists any "
            "number once the server is stopped)"
        )
        _within_server_bound(f"--limit {limit}", limit, HISTORY_MOST, "lists", instead)
        args: dict[str, Any] = {"limit": limit, **({"by": by} if by else {})}
        _ask_server(server, token, "teaching_history", args, as_json, scope="recognize")
        return
    _answer(settings, lambda teacher: teacher.history(limit, by=by), describe_history, as_json)


@settings_command(STORE)
def memory_undo(
    settings: "Settings",
    n: Annotated[int, typer.Argument(help="How many of the last teaching events to undo.")] = 1,
    by: Annotated[
        str | None,
        typer.Option(
            "--by",
            help="Undo NAME's last N events only (a token's name, a chat login), e.g. after "
            "revoking its token; refused where someone else changed one of them since. "
            "With --server it needs a token with the admin scope.",
        ),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            help="Ask the rar-agent MCP server at this URL (http://HOST:PORT/mcp) that holds "
            "the memory, while it runs (mcp --http with --allow-learning and tokens): a token "
            "with the learn scope (--token) undoes its own teaching, an admin token NAME's "
            "(--by NAME), a bounded number of events at a time.",
        ),
    ] = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Undo the last N teaching events: taught examples removed, relabels moved back.

    While a rar-agent server holds the memory, --server URL --token TOKEN asks it: the
    token's own teaching is taken back (as its undo_teaching tool does), or with --by NAME
    and an admin token, one person's.
    """
    from rar_agent.tools.learn import describe_undone

    if server:
        _undo_through_server(server, token, by, n, as_json)
        return

    teacher = _teacher(settings)
    with teacher.memory:
        undone = teacher.undo(n, of=by)  # the CLI user undoes (recorded), NAME's events only
        _print(undone, describe_undone, as_json)
        if undone.undone:  # emptied by this undo: it stays, and says so (once, not on a no-op)
            note_if_empty(teacher.memory)


def _undo_through_server(
    url: str, token: str | None, by: str | None, n: int, as_json: bool
) -> None:
    """``memory undo N --server URL``: the token's own last events, through the server's
    ``undo_teaching`` (the tool an MCP client calls, so one rule decides whose events go);
    with ``--by NAME``, NAME's through ``undo_teaching_of`` (admin only)."""
    from rar_agent.mcp.admin import UNDO_OF_MOST
    from rar_agent.tools.learn import UNDO_MOST

    most = UNDO_OF_MOST if by else UNDO_MOST
    _within_server_bound(
        f"memory undo {n}", n, most, "undoes", f"give N of {most} or less and run it again"
    )
    if by:
        own = "; a token with the learn scope takes back its own teaching: leave out --by"
        args: dict[str, Any] = {"by": by, "n": n}
        _ask_server(url, token, "undo_teaching_of", args, as_json, scope="admin", else_=own)
    else:
        theirs = "; an admin token takes back one person's teaching with --by NAME"
        _ask_server(url, token, "undo_teaching", {"n": n}, as_json, scope="learn", else_=theirs)


def _within_server_bound(asked: str, count: int, most: int, does: str, instead: str) -> None:
    """Refuse ``count`` events over the ``most`` a server ``does`` at a time, in the CLI's
    words (``asked``: the option or command as given; ``instead``: what to give): the
    server's own refusal is worded for an agent."""
    from rar_agent.errors import ConfigError

    if count > most:
        raise ConfigError(
            f"{asked} with --server: the server {does} at most {most} teaching events at a "
            f"time; {instead}"
        )


def _ask_server(
    url: str,
    token: str | None,
    tool: str,
    args: dict[str, Any],
    as_json: bool,
    *,
    scope: str,
    else_: str = "",
) -> None:
    """Print the answer of the server's ``tool`` as JSON or as its text.

    Args:
        scope: The token scope ``tool`` needs.
        else_: Added to a refusal for the token's lack of ``scope``: what it may do instead.

    Raises:
        ConfigError: The server refused the call or answered a tool error.
    """
    from rar_agent.errors import ConfigError

    asking = f"the {tool} call"
    result = call_server_tool(url, token, tool, args, asking=asking, scope=scope)
    if result.isError:
        said = text_of(result)
        hint = else_ if f"needs the scope {scope!r}" in said else ""
        raise ConfigError(f"the server refused {asking}: {said}{hint}")
    if as_json:
        typer.echo(json.dumps(result.structuredContent, ensure_ascii=False))
    else:
        typer.echo(text_of(result))


def _answer(
    settings: "Settings",
    do: "Callable[[Teacher], T]",
    describe: Callable[[T], str],
    as_json: bool,
) -> None:
    """Run ``do`` with a CLI teacher and print its result as JSON or as the text the tools
    also answer with."""
    teacher = _teacher(settings)
    with teacher.memory:
        result = do(teacher)
    _print(result, describe, as_json)


def _print(result: T, describe: Callable[[T], str], as_json: bool) -> None:
    """Print ``result`` as JSON or as the text the tools also answer with."""
    if as_json:
        typer.echo(json.dumps(result.model_dump(mode="json"), ensure_ascii=False))
    else:
        typer.echo(describe(result))


@settings_command(STORE)
def memory_relabel(
    settings: "Settings",
    example: Annotated[str, typer.Argument(help="The example's entry id (see memory history).")],
    label: Annotated[str, typer.Argument(help="The label to move it to.")],
) -> None:
    """Move one stored example to another label (when it was stored under the wrong one)."""
    from rar_agent.tools.learn import describe_relabeled

    teacher = _teacher(settings)
    with teacher.memory:
        moved = teacher.relabel(example, label)
    typer.echo(describe_relabeled(moved))
