"""Which memory the last command used, so ``memory list`` / ``stats`` / ``history`` / ``undo``
/ ``relabel`` / ``remove`` and ``teach`` with no flags act on it.

``recognize``, ``chat``, ``mcp``, ``teach``, ``memory build`` and ``memory add`` record the
memory they used in ``<RAR_HOME>/last-memory.json`` (its collection, and its folder or server
URL). A ``memory`` command of those six, or ``teach``, that names no memory (no
``--memory``, ``--collection`` or ``--qdrant-url``, nor their ``RAR_*`` variables) opens that
one and says so (``teach`` after ``recognize`` teaches the memory that answered); with no
record and no default memory, a ``memory`` command says which memories exist and how to pick
one, and ``teach`` teaches the default memory. ``recognize``, ``chat`` and ``mcp`` answer
from the built-in memory when none is named and the default one is empty, whatever was used
last; their note then names the one used last and how to answer from it.
"""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rar_agent.config import Settings
    from rar_agent.errors import MemoryNotFoundError
    from rar_agent.memory import CategoryMemory

__all__ = [
    "describe_choice",
    "embedded_memories",
    "last_used_settings",
    "names_a_memory",
    "near_named",
    "open_existing",
    "open_shown_memory",
    "remember_memory",
    "used_last_instead",
]

logger = logging.getLogger(__name__)

_RECORD = "last-memory.json"


def names_a_memory(settings: Settings) -> bool:
    """Whether the settings name a memory (an option or a ``RAR_*`` variable), or leave it to us."""
    return bool(settings.qdrant_url) or bool(
        {"memory_path", "collection"} & settings.model_fields_set
    )


def remember_memory(
    settings: Settings, memory: CategoryMemory, command: str, *, labels: bool = False
) -> None:
    """Record ``memory`` as the one ``command`` used last (best effort: a failure is logged);
    ``labels``: it is the memory of the names ``--labels`` gave."""
    info = memory.info
    record = {
        "collection": info.collection,
        "location": info.location,
        "command": command,
        "server": bool(settings.qdrant_url),
        "labels": labels,
    }
    try:
        home = Path(settings.home).expanduser()
        home.mkdir(parents=True, exist_ok=True)
        (home / _RECORD).write_text(json.dumps(record) + "\n", encoding="utf-8")
    except OSError as e:  # a read-only home must not fail the command
        logger.info("cannot record the last memory used: %s", e)


def _last_record(settings: Settings) -> dict[str, object] | None:
    path = Path(settings.home).expanduser() / _RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("collection") else None


def last_used_settings(
    settings: Settings, *, teaching: bool = False
) -> tuple[Settings, str | None]:
    """The settings of the memory to show (or, ``teaching``, to teach) when none is named,
    and a note saying which it is.

    Returns ``settings`` unchanged (and no note) when they name a memory, or when the one the
    last command used is none to act on (:func:`_recorded`).
    """
    if names_a_memory(settings):
        return settings, None
    recorded = _recorded(settings, teaching=teaching)
    if recorded is None:
        return settings, None
    collection, location, command = recorded
    update: dict[str, object] = {"collection": collection}
    if location:
        update["memory_path"] = Path(location)
    used = f"used last by `rar-agent {command}`"
    if _elsewhere(settings, recorded):  # a --memory folder: its collection is
        which = f"memory at {location}, {used}"  # 'default' whatever the folder
    else:
        which = f"memory {collection!r}, {used}" + (f" ({location})" if location else "")
    note = f"{which}: pick another with --collection NAME or --memory DIR"
    return settings.model_copy(update=update), note


def used_last_instead(settings: Settings, using: str) -> str | None:
    """How to answer from the memory the last command used, where a command that names no
    memory picked another (``using``, e.g. the built-in one) by its own rule: after `teach`,
    `recognize` answered from the built-in memory without a word of the one just taught.
    None where the settings name a memory or the last one is none to answer from."""
    if names_a_memory(settings):
        return None
    recorded = _recorded(settings, teaching=True)  # a --labels memory is named by --labels
    if recorded is None or recorded[0] == using:
        return None
    collection, location, command = recorded
    if _elsewhere(settings, recorded):
        which, flag = f"the memory at {location}", f"--memory {shlex.quote(location)}"
    else:
        which, flag = f"the memory {collection!r}", f"--collection {shlex.quote(collection)}"
    return f"`rar-agent {command}` used {which} last: {flag} answers from it"


def _recorded(settings: Settings, *, teaching: bool = False) -> tuple[str, str, str] | None:
    """The memory the last command used (its collection, folder or ``""``, and the command);
    None when no command recorded one, when it is gone, when it is the default memory anyway,
    when it is a server's (shown when --qdrant-url names the server), or, ``teaching``, when
    it is a ``--labels`` memory (it answers among exactly those names)."""
    record = _last_record(settings)
    if record is None or record.get("server") or (teaching and record.get("labels")):
        return None
    collection, location = str(record["collection"]), str(record.get("location") or "")
    from rar_agent.memory.location import default_memory_dir

    if location == str(default_memory_dir(settings.collection, settings.home)):
        return None  # the default memory: nothing to explain
    if location and not Path(location).is_dir():
        return None  # deleted since: nothing to show (nor to teach) there
    return collection, location, str(record.get("command", "?"))


def _elsewhere(settings: Settings, recorded: tuple[str, str, str]) -> bool:
    """Whether the recorded memory is a ``--memory`` folder, not one under ``RAR_HOME``."""
    from rar_agent.memory.location import default_memory_dir

    collection, location, _ = recorded
    home = default_memory_dir(collection, settings.home).parent
    return bool(location) and Path(location).parent != home


def embedded_memories(settings: Settings) -> tuple[Path, list[str]]:
    """The folder under ``RAR_HOME`` that holds the embedded memories, and their names."""
    from rar_agent.memory.location import default_memory_dir

    folder = default_memory_dir(settings.collection, settings.home).parent
    names = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return folder, names


def describe_choice(settings: Settings) -> str:
    """Which embedded memories exist under ``RAR_HOME`` and how to pick one (for an error)."""
    folder, names = embedded_memories(settings)
    if not names:
        return (
            f"no memory exists under {folder} yet: `rar-agent recognize IMAGE` builds and uses "
            "the built-in one, `rar-agent memory build --from-folder DIR` a few-shot one"
        )
    return (
        f"memories under {folder}: {', '.join(names)}; pick one with --collection NAME "
        "(or --memory DIR for one elsewhere)"
    )


def open_shown_memory(settings: Settings) -> CategoryMemory:
    """The memory a ``memory`` command that reads or takes back teaching acts on (``list``,
    ``stats``, ``history``, ``undo``, ``relabel``, ``remove``): the one named, else the one the last
    command used (a note on stderr says which), so ``memory undo`` after ``memory add
    --collection X`` takes back what was taught to X, the memory ``memory list`` shows.

    Raises:
        MemoryNotFoundError: It does not exist; unless one was named, the message lists
            the memories that do and how to pick one.
        MemoryStoreError: It cannot be opened (its own error: it exists).
        MemoryBusyError: Another process holds it.
    """
    from rar_agent.cli.options import print_note, read_measured_prior

    shown, note = last_used_settings(settings)
    memory = open_existing(shown, named=names_a_memory(settings))
    if note:
        print_note(note)
    read_measured_prior(settings, memory)  # an undo fits its calibration again
    return memory


def open_existing(
    settings: Settings, *, named: bool | None = None, read_only: bool = False
) -> CategoryMemory:
    """The memory ``settings`` name, which must exist; when the command named none
    (``named``, default: :func:`names_a_memory`), its error lists the memories that do and
    how to pick one, rather than "build one first" while others are there.

    Raises:
        MemoryNotFoundError: It does not exist.
        MemoryStoreError: It cannot be opened (its own error: it exists).
        MemoryBusyError: Another process holds it.
    """
    from rar_agent.errors import MemoryNotFoundError
    from rar_agent.memory import open_memory

    try:
        return open_memory(settings, create=False, read_only=read_only)
    except MemoryNotFoundError as e:
        if names_a_memory(settings) if named is None else named:
            raise near_named(settings, e) from None
        raise MemoryNotFoundError(
            f"no memory named {settings.collection!r}: {describe_choice(settings)}"
        ) from None


def near_named(settings: Settings, error: MemoryNotFoundError) -> MemoryNotFoundError:
    """``error`` (the memory ``--collection`` named does not exist) naming the memories under
    ``RAR_HOME`` whose names are close: ``--collection closte`` said only "build one first
    ... or check the path" beside ``closet``. Unchanged for a memory named otherwise or
    with no near miss."""
    from rar_agent.errors import MemoryNotFoundError, did_you_mean

    if settings.qdrant_url or "memory_path" in settings.model_fields_set:
        return error
    hint = did_you_mean(settings.collection, embedded_memories(settings)[1])
    if not hint:
        return error
    return MemoryNotFoundError(
        f"no memory named {settings.collection!r}{hint}: {describe_choice(settings)}"
    )
