"""Conversations that persist and stay apart: messages and images under a conversation id.

One SQLite file (by default ``<RAR_HOME>/conversations.sqlite``) holds

- LangGraph's own checkpoints (package ``langgraph-checkpoint-sqlite``): each conversation's
  messages and agent state, by ``thread_id`` = the conversation id. The saver here is
  LangGraph's ``SqliteSaver`` with its async methods run in a worker thread, so one
  checkpointer serves ``invoke`` and ``ainvoke`` (the chat page and MCP tools are async);
- each conversation's images (table ``rar_images``, keyed by conversation id *and* image id),
  so an image id resolves only inside the conversation that sent it, and a restarted agent
  still has the photos its history talks about.

- whose each conversation is (table ``rar_owners``): on a page where people sign in, a
  conversation belongs to the person who started it, and :meth:`ConversationStore.opens_for`
  is the one rule of who may see and continue it (its owner; anyone who holds the id of a
  conversation nobody signed in to).

The agent's image middleware writes and reads the images. An id is 128 random bits from
:func:`new_conversation_id`: on a page without sign-in it is the key to its conversation.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)
from langgraph.checkpoint.sqlite import SqliteSaver

from rar_agent.errors import ConfigError, unwritable_reason
from rar_agent.registry import RegisteredImage

__all__ = [
    "CONVERSATION_ID_PATTERN",
    "ConversationInfo",
    "ConversationStore",
    "ThreadedSqliteSaver",
    "conversation_config",
    "new_conversation_id",
]

#: What a conversation id looks like (``new_conversation_id`` makes 32 hex digits).
CONVERSATION_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
DEFAULT_FILE = "conversations.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rar_images (
    conversation TEXT NOT NULL,
    id TEXT NOT NULL,
    data BLOB NOT NULL,
    mime_type TEXT,
    name TEXT,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    added REAL NOT NULL,
    PRIMARY KEY (conversation, id)
);
CREATE TABLE IF NOT EXISTS rar_owners (
    conversation TEXT PRIMARY KEY,
    owner TEXT NOT NULL
);
"""


def new_conversation_id() -> str:
    """A fresh, unguessable conversation id (32 hex digits)."""
    return uuid.uuid4().hex


def conversation_config(conversation: str) -> RunnableConfig:
    """The run config that selects ``conversation`` (LangGraph's ``thread_id``)."""
    return {"configurable": {"thread_id": _checked(conversation)}}


def _checked(conversation: str) -> str:
    if not isinstance(conversation, str) or not CONVERSATION_ID_PATTERN.match(conversation):
        raise ConfigError(
            f"bad conversation id {str(conversation)[:40]!r}: use letters, digits and "
            "'_.:-' (at most 128), e.g. from new_conversation_id()"
        )
    return conversation


class ThreadedSqliteSaver(SqliteSaver):
    """LangGraph's ``SqliteSaver`` whose async methods run the sync ones in a worker thread.

    ``SqliteSaver`` serialises access with its own lock and opens its connection with
    ``check_same_thread=False``, so one saver serves sync and async runs alike.
    """

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """Async :meth:`get_tuple`."""
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Async :meth:`list`."""
        items = await asyncio.to_thread(
            lambda: list(self.list(config, filter=filter, before=before, limit=limit))
        )
        for item in items:
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Async :meth:`put`."""
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Async :meth:`put_writes`."""
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        """Async :meth:`delete_thread`."""
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, Any]:
        """Async :meth:`get_delta_channel_history`."""
        return await asyncio.to_thread(
            lambda: self.get_delta_channel_history(config=config, channels=channels)
        )


@dataclass(frozen=True)
class ConversationInfo:
    """One stored conversation.

    Attributes:
        id: The conversation id (``thread_id``).
        images: How many images it holds.
        updated: When it last changed (Unix seconds), when known.
    """

    id: str
    images: int
    updated: float | None


class ConversationStore:
    """Conversations (LangGraph checkpoints) and their images in one SQLite file.

    Args:
        path: The SQLite file (created with its folder), or ``":memory:"`` for a store that
            lives as long as this object.

    Use :meth:`under` for the default file under ``RAR_HOME``; close it when done (or use it
    as a context manager).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        text = os.fspath(path)
        self.path = text
        try:
            if text != ":memory:":
                Path(text).expanduser().parent.mkdir(parents=True, exist_ok=True)
                text = str(Path(text).expanduser())
            self._conn = sqlite3.connect(text, check_same_thread=False, timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)
            self._conn.commit()
            saver_conn = sqlite3.connect(text, check_same_thread=False, timeout=30)
        except (OSError, sqlite3.Error) as e:
            reason = (
                unwritable_reason(e, Path(text).expanduser()) if isinstance(e, OSError) else str(e)
            )
            raise ConfigError(
                f"cannot open the conversation store {self.path} ({reason}): keep it in a "
                "folder you can write (rar-agent chat keeps it in RAR_HOME: set RAR_HOME to "
                "such a folder; in Python, pass ConversationStore a path there)"
            ) from e
        self._lock = threading.Lock()
        self.checkpointer = ThreadedSqliteSaver(saver_conn)
        """LangGraph's checkpointer over the same file (pass it to ``create_agent``)."""
        self.checkpointer.setup()

    @classmethod
    def under(cls, home: str | os.PathLike[str]) -> ConversationStore:
        """The store at ``<home>/conversations.sqlite`` (``home`` is ``Settings().home``)."""
        return cls(Path(home).expanduser() / DEFAULT_FILE)

    # -- images

    def put_image(self, conversation: str, image: RegisteredImage) -> None:
        """Keep ``image`` as part of ``conversation`` (again: it becomes its latest)."""
        row = (
            _checked(conversation),
            image.id,
            image.data,
            image.mime_type,
            image.name,
            image.size[0],
            image.size[1],
            time.time(),
        )
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT INTO rar_images VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT "
                "(conversation, id) DO UPDATE SET added = excluded.added",
                row,
            )

    def get_image(self, conversation: str, image_id: str) -> RegisteredImage | None:
        """``conversation``'s image ``image_id``, or ``None`` (never another's)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT id, data, mime_type, name, width, height FROM rar_images "
                "WHERE conversation = ? AND id = ?",
                (_checked(conversation), image_id),
            ).fetchone()
        if row is None:
            return None
        return RegisteredImage(row[0], bytes(row[1]), row[2], row[3], (row[4], row[5]))

    def image_ids(self, conversation: str) -> list[str]:
        """``conversation``'s image ids, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id FROM rar_images WHERE conversation = ? ORDER BY added, rowid",
                (_checked(conversation),),
            ).fetchall()
        return [row[0] for row in rows]

    # -- owners

    def owner(self, conversation: str) -> str | None:
        """Who ``conversation`` belongs to (the name they signed in with), or ``None``."""
        with self._lock:
            row = self._conn.execute(
                "SELECT owner FROM rar_owners WHERE conversation = ?", (_checked(conversation),)
            ).fetchone()
        return None if row is None else str(row[0])

    def opens_for(self, conversation: str, user: str | None) -> bool:
        """Whether ``user`` (a signed-in name; ``None``: nobody signed in) may see and continue
        ``conversation``: its owner may, and anyone may one that nobody owns."""
        owner = self.owner(conversation)
        return owner is None or owner == user

    def claim(self, conversation: str, user: str) -> bool:
        """Make ``conversation`` ``user``'s unless someone else's already; whether it is
        ``user``'s now (``False``: another person's, which ``user`` must not continue)."""
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT OR IGNORE INTO rar_owners VALUES (?, ?)", (_checked(conversation), user)
            )
        return self.owner(conversation) == user

    # -- conversations

    def exists(self, conversation: str) -> bool:
        """Whether ``conversation`` has any stored message or image."""
        if self.checkpointer.get_tuple(conversation_config(conversation)) is not None:
            return True
        return bool(self.image_ids(conversation))

    def conversations(self) -> list[ConversationInfo]:
        """Every stored conversation, most recently changed first (for the operator's eyes)."""
        ids: dict[str, ConversationInfo] = {}
        seen = {t.config["configurable"]["thread_id"]: t for t in self._latest_checkpoints()}
        with self._lock:
            rows = self._conn.execute(
                "SELECT conversation, COUNT(*), MAX(added) FROM rar_images GROUP BY conversation"
            ).fetchall()
        counts = {row[0]: (row[1], row[2]) for row in rows}
        for conversation in set(seen) | set(counts):
            n, added = counts.get(conversation, (0, None))
            stamp = seen[conversation].checkpoint.get("ts") if conversation in seen else None
            updated = _timestamp(stamp) if stamp else added
            ids[conversation] = ConversationInfo(conversation, n, updated)
        return sorted(ids.values(), key=lambda c: c.updated or 0.0, reverse=True)

    def _latest_checkpoints(self) -> Iterator[CheckpointTuple]:
        latest: dict[str, CheckpointTuple] = {}
        for item in self.checkpointer.list(None):
            thread = item.config["configurable"]["thread_id"]
            latest.setdefault(thread, item)  # listed newest first
        yield from latest.values()

    def delete(self, conversation: str) -> None:
        """Forget ``conversation``: its checkpoints, its images and whose it was."""
        self.checkpointer.delete_thread(_checked(conversation))
        with self._lock, self._conn:
            self._conn.execute("DELETE FROM rar_images WHERE conversation = ?", (conversation,))
            self._conn.execute("DELETE FROM rar_owners WHERE conversation = ?", (conversation,))

    def close(self) -> None:
        """Close both connections."""
        with self._lock:
            self._conn.close()
        self.checkpointer.conn.close()

    def __enter__(self) -> ConversationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ConversationStore({self.path!r})"


def _timestamp(iso: str) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None
