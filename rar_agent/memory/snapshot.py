"""Snapshots of a memory: one file that restores it, record and all (``memory snapshot``).

An embedded memory's snapshot is a tar file written through the memory's public page-wise
reads (:meth:`CategoryMemory.scroll`, :attr:`CategoryMemory.metadata`), so it does not depend
on qdrant-edge's file layout and restores into either backend::

    rar-snapshot.json        {"format", "version", "created_at", "collection", "entries",
                              "kinds", "labels", "record": the memory's whole record
                              (encoder, storage settings, extensions such as the
                              open-set calibration; ``MemoryRecord.to_stored()``)}
    points/000000.json       ids, kinds and payloads of one page
    points/000000.npy        that page's vectors (float32 rows)

A server memory's snapshot is Qdrant's own collection snapshot (its snapshot API), wrapped in
the same tar with the record beside it (``qdrant.snapshot``).

Consistency: the snapshot reads a memory nobody writes meanwhile: an embedded memory is held
by one process (the command that opened it, or the server that serves it: its snapshot tool
holds the teacher's lock, so no teaching is written meanwhile), and a Qdrant snapshot is the
server's own consistent copy. Crash safety: the file is written under a temporary name in
the same folder, flushed to disk, then renamed over ``OUT`` in one step, so a killed process
leaves the memory and any previous ``OUT`` as they were (at most a stray ``.OUT.partial-*`` file).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from rar_agent.errors import (
    ConfigError,
    MemoryStoreError,
    unreadable_reason,
    unwritable_reason,
)

if TYPE_CHECKING:
    from rar_agent.memory.core import CategoryMemory

__all__ = [
    "SNAPSHOT_FORMAT",
    "SnapshotReport",
    "read_snapshot_header",
    "restore_qdrant_snapshot",
    "restore_snapshot",
    "write_qdrant_snapshot",
    "write_snapshot",
]

SNAPSHOT_FORMAT = "rar-agent-snapshot"
_VERSION = 1
_HEADER = "rar-snapshot.json"
_QDRANT_FILE = "qdrant.snapshot"
PAGE = 1024

Progress = Callable[[int, int], None]


@dataclass
class SnapshotReport:
    """What a snapshot or a restore did.

    Attributes:
        path: The snapshot file.
        entries: Entries in it (and, after a restore, verified in the memory).
        labels: Distinct labels.
        bytes: The file's size.
        seconds: Wall time.
    """

    path: Path
    entries: int
    labels: int
    bytes: int
    seconds: float


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def _atomic_file(out: Path) -> Iterator[IO[bytes]]:
    """A temporary file beside ``out``, renamed over it once complete and on disk.

    Raises:
        MemoryStoreError: ``out`` cannot be written (a folder, under a file, no room or no
            permission); nothing is left behind.
    """
    if out.is_dir():
        raise MemoryStoreError(
            f"cannot write the snapshot {out}: it is a folder; name a file, such as "
            f"{out / 'memory.tar'}"
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.partial-", dir=out.parent)
    except OSError as e:
        raise _cannot_write(out, e) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, out)
        with contextlib.suppress(OSError):  # make the rename itself durable
            dir_fd = os.open(out.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _cannot_write(out, e) from None
        raise


def _cannot_write(out: Path, error: OSError) -> MemoryStoreError:
    """What went wrong writing the snapshot ``out``, in words (no temporary file names)."""
    return MemoryStoreError(
        f"cannot write the snapshot {out}: {unwritable_reason(error, out)}: pick a file in a "
        "folder you can write, with room for the memory"
    )


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _header(memory: CategoryMemory, kind: str) -> dict[str, Any]:
    record = memory.record
    if record is None:
        raise ConfigError(f"{memory.described} records no encoder: there is nothing to snapshot")
    return {
        "format": SNAPSHOT_FORMAT,
        "version": _VERSION,
        "kind": kind,
        "created_at": _now(),
        "collection": memory.collection,
        "entries": memory.count(),
        "kinds": {k: memory.count(k) for k in ("image", "text")},
        "labels": memory.labels(),
        "record": record.to_stored(),
    }


def write_snapshot(
    memory: CategoryMemory, out: str | os.PathLike[str], *, progress: Progress | None = None
) -> SnapshotReport:
    """Write a snapshot of ``memory`` to ``out`` (replaced atomically when complete).

    The caller makes sure nothing writes to the memory meanwhile (see the module notes).

    Args:
        memory: The memory (embedded or server; the points are read page by page).
        out: The snapshot file.
        progress: Optional ``progress(done, total)`` callback.

    Returns:
        The :class:`SnapshotReport`.

    Raises:
        ConfigError: The memory holds no encoder (nothing was built).
        MemoryStoreError: The memory changed while it was read.
    """
    start = time.perf_counter()
    path = Path(out).expanduser()
    header = _header(memory, "points")
    total = int(header["entries"])
    done = 0
    with _atomic_file(path) as handle, tarfile.open(fileobj=handle, mode="w") as tar:
        _add(tar, _HEADER, json.dumps(header).encode())
        offset: str | None = None
        page_no = 0
        while True:
            page, offset = memory.scroll(offset, PAGE)
            if page:
                rows = np.asarray([p[2] for p in page], dtype=np.float32)
                buffer = io.BytesIO()
                np.save(buffer, rows, allow_pickle=False)
                points = {
                    "ids": [p[0] for p in page],
                    "kinds": [p[1] for p in page],
                    "payloads": [p[3] for p in page],
                }
                _add(tar, f"points/{page_no:06d}.json", json.dumps(points).encode())
                _add(tar, f"points/{page_no:06d}.npy", buffer.getvalue())
                page_no += 1
                done += len(page)
                if progress:
                    progress(done, total)
            if offset is None:
                break
        if done != total:
            raise MemoryStoreError(
                f"memory {memory.collection!r} changed while it was read ({total} entries, "
                f"{done} read): stop what writes to it, or snapshot through its server"
            )
    return SnapshotReport(path, done, len(header["labels"]), path.stat().st_size, _since(start))


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 3)


def read_snapshot_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The header of a snapshot file: format, counts, labels, the memory's record.

    Raises:
        ConfigError: Not a readable rar-agent snapshot.
    """
    with _open_snapshot(Path(path)) as tar:
        return _read_header(tar, Path(path))


@contextlib.contextmanager
def _open_snapshot(path: Path) -> Iterator[tarfile.TarFile]:
    try:
        with tarfile.open(path, mode="r") as tar:
            yield tar
    except OSError as e:
        raise ConfigError(
            f"cannot read the snapshot {path}: {unreadable_reason(e, path)}: check the path"
        ) from None
    except tarfile.TarError:
        raise ConfigError(
            f"cannot read the snapshot {path}: it is not a tar file; give a file written by "
            "rar-agent memory snapshot"
        ) from None


def _member(tar: tarfile.TarFile, name: str, path: Path) -> bytes:
    try:
        handle = tar.extractfile(name)
    except KeyError:
        handle = None
    if handle is None:
        raise ConfigError(f"the snapshot {path} lacks {name}: it is damaged or incomplete")
    return handle.read()


def _read_header(tar: tarfile.TarFile, path: Path) -> dict[str, Any]:
    try:
        header = json.loads(_member(tar, _HEADER, path))
    except json.JSONDecodeError as e:
        raise ConfigError(f"the snapshot {path} has a damaged header ({e})") from None
    if header.get("format") != SNAPSHOT_FORMAT or header.get("version") != _VERSION:
        raise ConfigError(
            f"{path} is not a rar-agent snapshot of version {_VERSION} "
            f"(format {header.get('format')!r}, version {header.get('version')!r})"
        )
    return dict(header)


def restore_snapshot(
    path: str | os.PathLike[str],
    target: CategoryMemory,
    *,
    progress: Progress | None = None,
) -> SnapshotReport:
    """Restore a snapshot into an empty memory; every point and the whole record, verified.

    Args:
        path: A file from :func:`write_snapshot`.
        target: The memory to fill (empty, or new).
        progress: Optional ``progress(done, total)`` callback.

    Returns:
        The :class:`SnapshotReport`.

    Raises:
        ConfigError: Not a snapshot, a Qdrant snapshot (see :func:`restore_qdrant_snapshot`),
            or the target holds entries.
        MemoryStoreError: The restored counts differ from the snapshot's.
    """
    from rar_agent.memory.core import OPTIMIZE_MIN_UNINDEXED
    from rar_agent.memory.record import MemoryRecord

    start = time.perf_counter()
    source = Path(path).expanduser()
    with _open_snapshot(source) as tar:
        header = _read_header(tar, source)
        _check_restorable(header, target, source)
        total = int(header["entries"])
        record = MemoryRecord.from_stored(
            header["record"], collection=target.collection, where=str(source)
        )
        target.bind_record(record)
        with target.bulk_load(total):
            done = _write_pages(tar, source, target, total, progress)
        target.optimize(min_unindexed=OPTIMIZE_MIN_UNINDEXED)
    _verify(header, target, source)
    return SnapshotReport(source, done, len(header["labels"]), source.stat().st_size, _since(start))


def _check_restorable(header: dict[str, Any], target: CategoryMemory, source: Path) -> None:
    """Refuse a snapshot of points that ``target`` cannot take: a Qdrant server snapshot, or
    a target that holds entries.

    Raises:
        ConfigError: Which of the two, and what to do.
    """
    if header.get("kind") != "points":
        raise ConfigError(
            f"{source} is a Qdrant server snapshot: restore it to a server memory (--qdrant-url)"
        )
    if target.count() > 0:
        raise ConfigError(
            f"{target.described} holds "
            f"{target.count()} entries: restore into a new --memory or --collection"
        )


def _write_pages(
    tar: tarfile.TarFile,
    source: Path,
    target: CategoryMemory,
    total: int,
    progress: Progress | None,
) -> int:
    """Write the snapshot's pages of points (``points/*.json`` with their ``.npy`` vectors)
    into ``target``, in name order; how many points were written."""
    done = 0
    for name in sorted(m.name for m in tar.getmembers() if m.name.endswith(".json")):
        if not name.startswith("points/"):
            continue
        points = json.loads(_member(tar, name, source))
        rows = np.load(io.BytesIO(_member(tar, name[:-5] + ".npy", source)))
        page = [
            (pid, kind, row.tolist(), payload)
            for pid, kind, row, payload in zip(
                points["ids"], points["kinds"], rows, points["payloads"], strict=True
            )
        ]
        target.write_points(page)
        done += len(page)
        if progress:
            progress(done, total)
    return done


def _verify(header: dict[str, Any], target: CategoryMemory, source: Path) -> None:
    got = {"entries": target.count(), **{k: target.count(k) for k in header["kinds"]}}
    want = {"entries": header["entries"], **header["kinds"]}
    if got != want or target.labels() != header["labels"]:
        raise MemoryStoreError(
            f"restore check failed: the snapshot {source} holds {want}, the memory "
            f"{target.info.location} {got}: restore again into an empty memory"
        )


# ---------------------------------------------------------------------------- Qdrant server


def _qdrant_headers(api_key: str | None) -> dict[str, str]:
    return {"api-key": api_key} if api_key else {}


def write_qdrant_snapshot(
    memory: CategoryMemory,
    url: str,
    out: str | os.PathLike[str],
    *,
    api_key: str | None = None,
    timeout_s: float = 600.0,
) -> SnapshotReport:
    """Snapshot a server memory with Qdrant's snapshot API; download it into ``out``.

    The server makes a consistent copy of the collection (``POST
    /collections/NAME/snapshots``); it is downloaded into the tar beside the memory's record,
    then deleted from the server.

    Args:
        memory: The server memory (its collection and record).
        url: The server URL (``https://`` with TLS).
        out: The snapshot file.
        api_key: The server's API key, if it has one.
        timeout_s: How long the server may take.

    Raises:
        MemoryStoreError: The server refused or failed.
    """
    import httpx

    start = time.perf_counter()
    path = Path(out).expanduser()
    header = _header(memory, "qdrant")
    base = f"{url.rstrip('/')}/collections/{memory.collection}/snapshots"
    headers = _qdrant_headers(api_key)
    try:
        with httpx.Client(timeout=timeout_s, headers=headers) as client:
            made = client.post(base, params={"wait": "true"})
            made.raise_for_status()
            name = made.json()["result"]["name"]
            try:
                with (
                    _atomic_file(path) as handle,
                    tarfile.open(fileobj=handle, mode="w") as tar,
                    tempfile.TemporaryFile() as data,
                ):
                    with client.stream("GET", f"{base}/{name}") as response:
                        response.raise_for_status()
                        for chunk in response.iter_bytes(1 << 20):
                            data.write(chunk)
                    _add(tar, _HEADER, json.dumps(header).encode())
                    info = tarfile.TarInfo(_QDRANT_FILE)
                    info.size = data.tell()
                    info.mtime = int(time.time())
                    data.seek(0)
                    tar.addfile(info, data)
            finally:
                with contextlib.suppress(httpx.HTTPError):
                    client.delete(f"{base}/{name}")
    except (httpx.HTTPError, KeyError, ValueError) as e:
        raise MemoryStoreError(
            f"Qdrant snapshot of {memory.collection!r} at {url} failed: {e}"
        ) from None
    return SnapshotReport(
        path, int(header["entries"]), len(header["labels"]), path.stat().st_size, _since(start)
    )


def restore_qdrant_snapshot(
    path: str | os.PathLike[str],
    url: str,
    collection: str,
    *,
    api_key: str | None = None,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Upload a Qdrant snapshot from :func:`write_qdrant_snapshot` into ``collection``.

    Qdrant recovers the collection from it (``POST /collections/NAME/snapshots/upload``,
    the snapshot's data winning over what the collection held).

    Returns:
        The snapshot's header.

    Raises:
        ConfigError: Not a Qdrant snapshot from rar-agent.
        MemoryStoreError: The server refused or failed.
    """
    import httpx

    source = Path(path).expanduser()
    with _open_snapshot(source) as tar:
        header = _read_header(tar, source)
        if header.get("kind") != "qdrant":
            raise ConfigError(
                f"{source} is an embedded memory's snapshot: restore it without --qdrant-url, "
                "or restore it and copy it with rar-agent memory push"
            )
        handle = tar.extractfile(_QDRANT_FILE)
        if handle is None:
            raise ConfigError(f"the snapshot {source} lacks {_QDRANT_FILE}: it is damaged")
        target = f"{url.rstrip('/')}/collections/{collection}/snapshots/upload"
        try:
            with httpx.Client(timeout=timeout_s, headers=_qdrant_headers(api_key)) as client:
                response = client.post(
                    target,
                    params={"priority": "snapshot", "wait": "true"},
                    files={"snapshot": (f"{collection}.snapshot", handle)},
                )
                response.raise_for_status()
        except httpx.HTTPError as e:
            raise MemoryStoreError(
                f"Qdrant restore of {collection!r} at {url} failed: {e}"
            ) from None
    return header
