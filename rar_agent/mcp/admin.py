"""The admin tools: what an operator asks of the server that holds the memory.

An embedded memory is held by one process; while a server serves it, ``rar-agent memory
snapshot`` and ``memory undo`` cannot open it, so a token with the ``admin`` scope asks the
server instead (``--server URL --token TOKEN``). ``snapshot_memory`` writes a snapshot into
the server's snapshot folder (``mcp --snapshot-dir``, default ``RAR_HOME/snapshots``)
while teaching waits (:func:`~rar_agent.pipeline.teacher.no_teaching`);
``undo_teaching_of`` takes back one person's (one token's, one login's) last teaching events,
as ``memory undo --by NAME`` does on a stopped server, through the same
:class:`~rar_agent.pipeline.teacher.Teacher`: another person's newer change of one of those
examples refuses it, and the reply lists what was undone with who taught it; it checks and
writes under the teacher's lock, as every teaching call does. Recognition goes on meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.tools import ToolException
from pydantic import BaseModel, ConfigDict, Field

from rar_agent.errors import ConfigError, RarError, file_in_the_way
from rar_agent.memory import CategoryMemory
from rar_agent.results import TeachingUndone, counted
from rar_agent.tools.base import ErrorAnsweringTool
from rar_agent.tools.learn import TeachingTool, describe_undone
from rar_agent.tools.provenance import serving_teacher

__all__ = [
    "UNDO_OF_MOST",
    "SnapshotInput",
    "SnapshotTool",
    "SnapshotWritten",
    "UndoTeachingOfInput",
    "UndoTeachingOfTool",
    "check_snapshot_folder",
]

logger = logging.getLogger(__name__)

_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,120}$")


def check_snapshot_folder(folder: Path) -> Path:
    """Refuse, when the server starts, a snapshot folder that no snapshot could be written
    into: a file, or a path under one (a missing folder is made by the first snapshot).

    Raises:
        ConfigError: A file stands where the folder or one above it should be.
    """
    blocker = file_in_the_way(folder)
    if blocker is not None:
        why = "is a file" if blocker == folder else f"cannot be made: {blocker} is a file"
        raise ConfigError(
            f"the snapshot folder {folder} {why}, not a folder: name a folder with "
            "--snapshot-dir (snapshot_memory writes into it; a missing one is made)"
        )
    return folder


class SnapshotInput(BaseModel):
    """Arguments of :class:`SnapshotTool`."""

    name: str = Field(
        min_length=1,
        max_length=121,
        description="File name of the snapshot inside the server's snapshot folder, e.g. "
        "'nightly.tar' (letters, digits, _ . -; an existing file of that name is replaced).",
    )


class SnapshotWritten(BaseModel):
    """The artifact of ``snapshot_memory``."""

    file: str = Field(description="The snapshot's file name in the server's snapshot folder.")
    entries: int
    labels: int
    bytes: int
    seconds: float


class SnapshotTool(ErrorAnsweringTool):
    """Write a consistent snapshot of the served memory into the server's snapshot folder."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str = "snapshot_memory"
    description: str = (
        "Write a consistent snapshot of the memory (every example and its record) into the "
        "server's snapshot folder; restore it with rar-agent memory restore. Admin only."
    )
    args_schema: type[BaseModel] = SnapshotInput
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    artifact_type: ClassVar[object] = SnapshotWritten
    writes_memory: ClassVar[bool] = False
    admin_only: ClassVar[bool] = True

    memory: CategoryMemory = Field(exclude=True)
    folder: Path

    def _run(
        self, name: str, run_manager: CallbackManagerForToolRun | None = None
    ) -> tuple[str, dict[str, Any]]:
        from rar_agent.memory.snapshot import write_snapshot
        from rar_agent.pipeline.teacher import no_teaching

        if not _FILE_NAME.match(name):
            raise ToolException(
                f"snapshot name {name!r}: use a file name of letters, digits and _ . - "
                "(no folders), e.g. nightly.tar"
            )
        try:
            with no_teaching():  # teaching waits: no half-written example in the copy
                report = write_snapshot(self.memory, self.folder / name)
        except RarError as e:  # in the client's words: no path of the server's
            where = {str(self.folder / name): name, str(self.folder): "the snapshot folder",
                     self.memory.info.location: "the served memory"}  # fmt: skip
            message = str(e)
            for path in sorted(where, key=len, reverse=True):
                message = message.replace(path, where[path])
            raise ToolException(message) from e
        done = SnapshotWritten(
            file=name,
            entries=report.entries,
            labels=report.labels,
            bytes=report.bytes,
            seconds=report.seconds,
        )
        text = (
            f"Wrote the snapshot {name} ({done.entries} entries, {done.labels} labels, "
            f"{done.bytes:,} bytes) into the server's snapshot folder."
        )
        return text, done.model_dump(mode="json")

    async def _arun(
        self, name: str, run_manager: AsyncCallbackManagerForToolRun | None = None
    ) -> tuple[str, dict[str, Any]]:
        return await asyncio.to_thread(self._run, name)


UNDO_OF_MOST = 1000
"""Most of one person's events one ``undo_teaching_of`` call takes back."""


class UndoTeachingOfInput(BaseModel):
    """Arguments of :class:`UndoTeachingOfTool`."""

    by: str = Field(
        min_length=1,
        max_length=200,
        description="Whose teaching to take back: a token's name or a chat login, as the "
        "teaching history shows it.",
    )
    n: int = Field(default=1, ge=1, le=UNDO_OF_MOST, description="How many of their last events.")


class UndoTeachingOfTool(TeachingTool):
    """Take back one person's last teaching events on the running server (admin only)."""

    name: str = "undo_teaching_of"
    description: str = (
        "Undo the last n teaching events of one person (a token's name or a chat login, as "
        "teaching_history shows it): their taught examples are removed, their relabels moved "
        "back; refused where someone else changed one of those examples since. Admin only."
    )
    args_schema: type[BaseModel] = UndoTeachingOfInput
    artifact_type: ClassVar[object] = TeachingUndone
    admin_only: ClassVar[bool] = True

    def _run(
        self, by: str, n: int = 1, run_manager: CallbackManagerForToolRun | None = None
    ) -> tuple[str, dict[str, Any]]:
        def undo(teacher: Any) -> TeachingUndone:
            undone = teacher.undo(n, of=by)  # the caller undoes (recorded), NAME's events only
            caller = serving_teacher()
            logger.warning(  # an operator's act on other people's teaching: kept in the log
                "%s undid %s of %r: %s",
                caller.by if caller is not None and caller.by else "an unnamed caller",
                counted(len(undone.undone), "teaching event"),
                by,
                ", ".join(f"{e.event} {e.label!r} [{e.id}]" for e in undone.undone) or "none",
            )
            return undone.model_copy(update={"undone": [self.public(e) for e in undone.undone]})

        return self.answer(undo, describe_undone)
