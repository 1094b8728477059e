"""Files of an embedded memory: the process lock, the metadata JSON, the shard's bytes on disk."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rar_agent.errors import MemoryBusyError, MemoryStoreError, unwritable_reason

__all__ = [
    "LOCK_FILE",
    "StagedJson",
    "acquire_lock",
    "disk_usage",
    "read_json",
    "release_lock",
    "remove_memory_files",
    "shard_file_part",
    "staged_json",
    "write_json_atomic",
]

LOCK_FILE = ".rar.lock"


def acquire_lock(path: Path) -> int | None:
    """Lock memory directory ``path`` for this process; return the descriptor to release.

    The lock file holds the owner's process id, for the message another process gets.

    Raises:
        MemoryBusyError: Another process holds the lock.
        MemoryStoreError: The lock file cannot be created.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: Qdrant's own WAL lock still refuses
        return None
    lock_path = path / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a read-only folder (a mount, another user's): no reading either
        raise MemoryStoreError(
            f"cannot open the memory at {path}: its lock file {lock_path} cannot be written "
            f"({unwritable_reason(e, lock_path)}), and the embedded engine writes in the "
            "memory's folder even to answer from it: copy the folder to a place you can write "
            f"(cp -r {shlex.quote(str(path))} DIR) and name the copy with --memory DIR"
        ) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        command = _command_of(holder)
        running = f" (`{command}`)" if command else ""
        raise MemoryBusyError(
            f"memory at {path} is in use by process {holder}{running}; close it, or use a "
            "Qdrant server (--qdrant-url) for many processes"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _command_of(pid: str) -> str | None:
    """The command line of process ``pid`` as Linux shows it, shortened (a server a desktop
    client started unseen is then recognised); ``None`` where the system does not show it."""
    try:
        raw = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (ValueError, OSError):
        return None
    args = [a for a in raw.decode(errors="replace").split("\0") if a]
    if len(args) > 1 and Path(args[0]).name.startswith("python") and args[1].startswith("/"):
        args = args[1:]  # a console script (rar-agent ...) runs as: python /path/to/rar-agent
    if not args:
        return None
    text = " ".join(" ".join([Path(args[0]).name, *_secrets_hidden(args[1:])]).split())
    return text if len(text) <= 120 else f"{text[:50]} ... {text[-65:]}"  # its options last


_SECRET_OPTION = re.compile(r"key|token|secret|passw", re.IGNORECASE)
"""An option whose value is a secret (``--api-key``, ``--token``): never shown."""


def _secrets_hidden(args: list[str]) -> list[str]:
    """``args`` with the value of each secret option (``--api-key KEY``, ``--token=T``) shown
    as ``***``: a command line is shown to whoever met the lock, and may land in a log."""
    shown: list[str] = []
    hide_next = False
    for arg in args:
        name, equals, _ = arg.partition("=")
        secret = name.startswith("-") and _SECRET_OPTION.search(name) is not None
        if hide_next:
            shown.append("***")
        elif secret and equals:
            shown.append(f"{name}=***")
        else:
            shown.append(arg)
        hide_next = secret and not equals and not hide_next
    return shown


def release_lock(fd: int | None) -> None:
    """Release a lock taken by :func:`acquire_lock` (None: nothing to release)."""
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)  # closing the descriptor releases the flock


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` (a memory's metadata file).

    Raises:
        MemoryStoreError: It cannot be read or is not a JSON object.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MemoryStoreError(
            f"cannot read memory metadata {path}: {e}; restore it or rebuild the memory"
        ) from e
    if not isinstance(data, dict):
        raise MemoryStoreError(f"memory metadata {path} is not a JSON object: rebuild the memory")
    return data


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` through a synced temporary file, so no reader sees half.

    Raises:
        MemoryStoreError: It cannot be written.
    """
    with staged_json(path, data) as staged:
        staged.install()


class StagedJson:
    """A JSON file written and synced beside its destination, not yet in place
    (:func:`staged_json`)."""

    def __init__(self, tmp: Path, path: Path) -> None:
        self.tmp = tmp
        self.path = path
        self.installed = False

    def install(self) -> None:
        """Put it in place: one atomic rename (a reader sees the old file or the new one).

        Raises:
            MemoryStoreError: It cannot be renamed.
        """
        try:
            os.replace(self.tmp, self.path)
        except OSError as e:
            raise MemoryStoreError(f"cannot write memory metadata {self.path}: {e}") from e
        self.installed = True


@contextlib.contextmanager
def staged_json(path: Path, data: dict[str, Any]) -> Iterator[StagedJson]:
    """``data`` written and synced to a temporary file beside ``path``; :meth:`StagedJson.install`
    puts it in place, and a file left uninstalled is removed on leaving.

    Serialising and syncing a record (hundreds of KB with a calibration) takes milliseconds
    to tens of them on a busy disk: done here, before the caller takes its lock, only the
    rename happens under it. The temporary name is this thread's own.

    Raises:
        MemoryStoreError: It cannot be written.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    staged = StagedJson(tmp, path)
    try:
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                # dumps without indent runs the C encoder (json.dump never does): the record,
                # with a calibration of 1000 stand-ins, is written on every taught example.
                text = json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise MemoryStoreError(f"cannot write memory metadata {path}: {e}") from e
        yield staged
    finally:
        if not staged.installed:
            with contextlib.suppress(OSError):
                tmp.unlink()


def remove_memory_files(path: Path, files: tuple[str, ...]) -> None:
    """Delete a memory's ``files`` in directory ``path`` (a directory among them with all
    it holds), then ``path`` itself if nothing else is left in it: a folder the user made
    and filled keeps its other files.

    Raises:
        MemoryStoreError: One of them cannot be deleted.
    """
    import shutil

    try:
        for name in (*files, LOCK_FILE):
            target = path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        for stray in path.glob(".*.tmp"):  # a metadata file a killed writer left staged
            stray.unlink(missing_ok=True)
    except OSError as e:
        raise MemoryStoreError(f"cannot delete the memory at {path}: {e}") from e
    with contextlib.suppress(OSError):
        path.rmdir()  # only when empty


def disk_usage(shard: Path) -> dict[str, int]:
    """Bytes on disk per part of a qdrant-edge shard (allocated blocks, not apparent sizes)."""
    totals: dict[str, int] = {}
    for dirpath, _dirs, files in os.walk(shard):
        rel = Path(dirpath).relative_to(shard).parts
        for name in files:
            try:
                size = (Path(dirpath) / name).stat().st_blocks * 512
            except OSError:
                continue  # a segment file replaced while we walk
            part = shard_file_part(rel, name)
            totals[part] = totals.get(part, 0) + size
    return totals


def shard_file_part(rel: tuple[str, ...], name: str) -> str:
    """Which part of a memory a shard file holds (see ``storage.Footprint``).

    Args:
        rel: The file's folder, relative to the shard (``("segments", id, folder)``).
        name: The file name.
    """
    if rel[:1] == ("wal",):
        return "wal"
    inner = rel[2:3] if rel[:1] in (("segments",), ("temp_segments",)) else ()
    folder = inner[0] if inner else ""
    if folder.startswith("vector_storage"):
        return "quantized" if name.startswith("quantized") else "vectors"
    if folder.startswith("vector_index"):
        return "hnsw"
    if folder == "payload_storage":
        return "payload"
    if folder == "payload_index" or name.startswith("id_tracker"):
        return "ids_and_indexes"
    return "other"
